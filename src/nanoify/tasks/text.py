"""Text classification: tokenised rows, dynamically padded batches (sorted by length for inference), logits.

The tokenizer is the ``tokenizers`` library alone when the model ships ``tokenizer.json`` (no transformers,
hence no torch import in an ONNX Runtime process, so its measured memory is the deployment's), else the
model's own tokenizer through transformers.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from ..config import DataConfig
from ..data.splits import pick_split
from ..data.text import (
    LabelMap,
    available_splits,
    collate,
    default_data_spec,
    encode_texts,
    inference_batches,
    load_text_data,
)
from ..errors import ConfigError, DataError, ModelError
from ..models.load import load_tokenizer, max_tokens, read_labels
from .base import EvalSet, Feed
from .classify import ClassificationTask
from .kinds import CLASSIFICATION_ROWS, ModelRef, Spec, TaskKind

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class LightTokenizer:
    """The ``tokenizers`` library alone: what an ONNX or TensorRT deployment would load."""

    tok: Any
    pad_token_id: int
    vocab_size: int

    def encode(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        self.tok.enable_truncation(max_length)
        return [e.ids for e in self.tok.encode_batch(list(texts))]


def light_tokenizer(folder: Path) -> LightTokenizer | None:
    """A LightTokenizer from ``folder/tokenizer.json``, or None when there is none."""
    f = folder / "tokenizer.json"
    if not f.is_file():
        return None

    tok = Tokenizer.from_file(str(f))
    tok.no_padding()
    pad = "[PAD]"
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        pad = json.loads(cfg.read_text()).get("pad_token") or pad
        pad = pad["content"] if isinstance(pad, dict) else pad
    pid = tok.token_to_id(str(pad))
    return LightTokenizer(tok, int(pid if pid is not None else 0), tok.get_vocab_size())


class _HFTokenizer:
    """transformers' tokenizer behind the LightTokenizer interface."""

    def __init__(self, folder: Path) -> None:
        self.tok = load_tokenizer(str(folder))
        self.pad_token_id = int(self.tok.pad_token_id if self.tok.pad_token_id is not None else 0)
        self.vocab_size = int(self.tok.vocab_size)

    def encode(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        return encode_texts(self.tok, texts, max_length)


class TextClassification(ClassificationTask):
    """Rows are token-id lists; feeds are ``input_ids``/``attention_mask``/``token_type_ids`` (those the model
    takes, ``input_names``)."""

    calib_batch = 16

    name = "text-classification"
    default_calib_samples = 256

    def __init__(self, tokenizer_dir: Path, labels: list[str], max_sequence: int = 512,
                 input_names: Sequence[str] = TEXT_INPUTS) -> None:
        self.tokenizer_dir = Path(tokenizer_dir)
        self.labels = list(labels)
        self.max_sequence = int(max_sequence)
        self.input_names = tuple(input_names)
        self._tok: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tok is None:
            self._tok = light_tokenizer(self.tokenizer_dir) or _HFTokenizer(self.tokenizer_dir)
        return self._tok

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def _cfg(self, data: Any) -> DataConfig:
        cfg = data if isinstance(data, DataConfig) else DataConfig(data=data)
        if cfg.max_length > self.max_sequence:
            raise ConfigError(f"--max-length {cfg.max_length} is longer than the model allows ({self.max_sequence} "
                              f"positions); use --max-length {self.max_sequence} or less")
        return cfg

    def eval_set(self, data: Any, split: str | None = None, limit: int | None = None) -> EvalSet:
        cfg = self._cfg(data)
        spec = cfg.data or "the default data"
        split = pick_split(available_splits(cfg.data), split, "eval", spec)
        ds = load_text_data(cfg, splits=(split,))
        sp = ds.split(split)
        texts, labels = sp.texts[:limit], sp.labels[:limit]
        if not texts:
            raise DataError(f"the {split} split of {ds.spec} is empty; evaluation needs rows")
        gold = np.array(LabelMap(self.labels).encode(labels, f"{split} split of {ds.spec}"), dtype=np.int64)
        return EvalSet(self.tokenizer.encode(texts, cfg.max_length), gold, f"{ds.spec} ({split})", split,
                       ds.provenance)

    def calib_set(self, data: Any, n: int | None = None, seed: int = 0) -> EvalSet:
        cfg = self._cfg(data)
        split = pick_split(available_splits(cfg.data), None, "calib", cfg.data or "the default data")
        ds = load_text_data(cfg, splits=(split,))
        texts = ds.split(split).texts
        if not texts:
            raise DataError(f"the {split} split of {ds.spec} is empty; calibration needs rows")
        k = min(n or self.default_calib_samples, len(texts))
        idx = sorted(random.Random(seed).sample(range(len(texts)), k))
        return EvalSet(self.tokenizer.encode([texts[i] for i in idx], cfg.max_length), None,
                       f"{ds.spec} ({split})", split, {**ds.provenance, "sample": {"n": k, "seed": seed}})

    def subset(self, es: EvalSet, idx: Sequence[int]) -> EvalSet:
        idx = list(idx)
        return EvalSet([es.rows[i] for i in idx], None if es.labels is None else es.labels[idx], es.where, es.split,
                       es.provenance)

    def _feed(self, ids: Sequence[Sequence[int]]) -> Feed:
        f = collate(ids, self.pad_id)
        return {k: v for k, v in f.items() if k in self.input_names}

    def batches(self, es: EvalSet, batch_size: int, sort: bool = False) -> Iterator[tuple[np.ndarray, Feed]]:
        rows = es.rows
        if sort:
            order = list(inference_batches([len(x) for x in rows], batch_size))
        else:
            order = [list(range(i, min(i + batch_size, len(rows)))) for i in range(0, len(rows), batch_size)]
        for b in order:
            yield np.asarray(b, dtype=np.int64), self._feed([rows[i] for i in b])

    def input_ranges(self) -> dict[str, tuple[float, float]]:
        vocab = int(self.tokenizer.vocab_size)
        return {"input_ids": (1000 if vocab > 2000 else 1, vocab), "attention_mask": (1, 2),
                "token_type_ids": (0, 1)}

    def synthetic_dims(self) -> dict[str, int]:
        return {"sequence": min(128, self.max_sequence)}


def predict_logits(model: Any, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64,
                   progress: bool = False, desc: str = "predict") -> np.ndarray:
    """Logits (N, C) of a torch text classifier on token ids, batched by length, in the original row order."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    out: np.ndarray | None = None
    batches = list(inference_batches([len(x) for x in ids], batch_size))
    for rows in tqdm(batches, desc=desc, unit="batch", disable=not progress or None, leave=False):
        feed = collate([ids[i] for i in rows], pad_id)
        with torch.inference_mode():
            logits = model(**{k: torch.from_numpy(v).to(device) for k, v in feed.items()}).logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
        out[rows] = logits
    assert out is not None
    return out


class TextKind(TaskKind):
    """Text classifiers: Hugging Face classifier folders, and ONNX graphs taking ``input_ids`` with a tokenizer
    near them (``hf/``)."""

    name = "text-classification"
    table_rows = CLASSIFICATION_ROWS
    distils = True
    reads_data_config = True
    gpu_formats = "linear"
    cuda_bench_dtype = "fp16"

    def recognise(self, inputs: Spec, outputs: Spec, tokenizer: Path | None) -> bool:
        return "input_ids" in inputs or (tokenizer is not None and not any(len(s) == 4 for _, s in inputs.values()))

    def from_folder(self, folder: Path, engine: str | None) -> ModelRef | None:
        if not (folder / "config.json").is_file():
            return None
        ref = text_ref(self, folder.name, folder, engine or "torch", folder)
        ref.preprocess["inputs"] = _hf_inputs(folder)
        return ref

    def from_onnx(self, name: str, path: Path, engine: str, inputs: Spec, outputs: Spec, tokenizer: Path | None,
                  preprocess: Any, decoder: str | None) -> ModelRef:
        if tokenizer is None:
            raise ModelError(f"no tokenizer next to {path} (looked for hf/tokenizer.json); export with `nanoify "
                             "export` or put the tokenizer files in an hf/ folder beside the model")
        if "input_ids" not in inputs:
            raise ModelError(f"{path} takes {', '.join(inputs)}, not input_ids: it is not a text classifier")
        return text_ref(self, name, path, engine, tokenizer, list(inputs))

    def make(self, ref: ModelRef) -> TextClassification:
        p = ref.preprocess
        return TextClassification(Path(p["tokenizer"]), ref.labels or [], p.get("max_sequence") or 512,
                                  p.get("inputs") or TEXT_INPUTS)

    def write_assets(self, ref: ModelRef, folder: Path) -> None:
        shutil.copytree(ref.preprocess["tokenizer"], folder / "hf")

    def default_data(self) -> Any:
        return default_data_spec()

    def profile_axes(self, ref: ModelRef, ev: EvalSet) -> dict[str, tuple[int, int, int]]:
        lengths = sorted(len(x) for x in ev.rows)
        return {"batch": (1, 32, 32), "sequence": (1, int(lengths[len(lengths) // 2]), int(ref.max_sequence or 512))}


def _max_seq(folder: Path, default: int = 512) -> int:
    cfg = folder / "config.json"
    if cfg.is_file():
        return max_tokens(json.loads(cfg.read_text()), default)
    return default


def text_ref(kind: TaskKind, name: str, p: Path, engine: str, tok: Path, inputs: list[str] | None = None) -> ModelRef:
    labels = read_labels(tok)
    if labels is None:
        raise ModelError(f"{tok} has no label_map.json or id2label in config.json; save the classifier with nanoify")
    pre = {"tokenizer": str(tok), "max_sequence": _max_seq(tok), "inputs": list(inputs or TEXT_INPUTS)}
    info = {}
    cfg = tok / "config.json"
    if cfg.is_file():
        info["layers"] = json.loads(cfg.read_text()).get("num_hidden_layers")
    assets = [tok] if tok != p else []
    return ModelRef(name, p, engine, kind, labels, pre, assets, info)


def _hf_inputs(folder: Path) -> list[str]:
    """The text inputs a Hugging Face classifier takes (MPNet and DistilBERT have no token_type_ids)."""
    cfg = folder / "config.json"
    model_type = json.loads(cfg.read_text()).get("model_type", "bert") if cfg.is_file() else "bert"
    if model_type in ("mpnet", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "deberta"):
        return [k for k in TEXT_INPUTS if k != "token_type_ids"]
    return list(TEXT_INPUTS)
