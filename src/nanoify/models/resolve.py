"""What a model argument points at: a Hugging Face classifier folder, an export or quantize output folder,
an ``.onnx`` file, or a TensorRT engine file — and the tokenizer, labels and engine that go with it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import read_manifest
from ..data.text import LabelMap
from ..errors import ModelError

ONNX_SUFFIXES = (".onnx",)
TRT_SUFFIXES = (".plan", ".engine", ".trt")


@dataclass
class ModelRef:
    """A runnable model: the file or folder an engine opens, with its tokenizer folder and labels."""

    name: str
    path: Path
    engine: str
    tokenizer_dir: Path
    label_map: LabelMap
    max_sequence: int

    def files(self) -> list[Path]:
        """The weight files (for the size column)."""
        if self.path.is_file():
            extra = [p for p in self.path.parent.glob(self.path.name + ".data") if p.is_file()]
            return [self.path, *extra]
        return sorted(p for p in self.path.glob("*.safetensors")) or sorted(self.path.glob("*.bin"))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())


def _labels(folder: Path) -> LabelMap:
    from .load import saved_label_map

    cfg = folder / "config.json"
    id2label = json.loads(cfg.read_text()).get("id2label") if cfg.is_file() else None
    lm = saved_label_map(folder, id2label)
    if lm is None:
        raise ModelError(f"{folder} has no label_map.json or id2label in config.json; save the classifier with "
                         "nanoify")
    return lm


def _max_seq(folder: Path, default: int = 512) -> int:
    cfg = folder / "config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text()).get("max_position_embeddings", default))
    return default


def _tokenizer_near(f: Path) -> Path:
    for cand in (f.parent / "hf", f.parent.parent / "hf", f.parent):
        if (cand / "tokenizer.json").is_file() or (cand / "vocab.txt").is_file():
            return cand
    raise ModelError(f"no tokenizer next to {f} (looked for hf/tokenizer.json); export with `nanoify export` "
                     "or put the tokenizer files in an hf/ folder beside the model")


def resolve(model: str | Path, engine: str | None = None) -> ModelRef:
    """Resolve a model argument (see module docstring). ``engine`` overrides the default engine."""
    p = Path(model).expanduser()
    if not p.exists():
        raise ModelError(f"model {p} does not exist; pass a classifier folder, an export/quantize output folder, "
                         "or an .onnx file")
    if p.is_dir():
        man = read_manifest(p)
        kind = man.get("kind")
        if kind in ("export", "quantize") or (p / "hf").is_dir() and not (p / "config.json").is_file():
            if kind == "quantize":
                f = p / man.get("model_file", "model.int8.onnx")
            else:
                f = p / "model.fused.onnx" if (p / "model.fused.onnx").is_file() else p / "model.onnx"
            if not f.is_file():
                raise ModelError(f"{p} has no {f.name}; re-run the command that wrote it")
            return resolve(f, engine)
        if (p / "config.json").is_file():
            return ModelRef(p.name, p, engine or "torch", p, _labels(p), _max_seq(p))
        raise ModelError(f"{p} is neither a classifier folder (config.json) nor a nanoify output folder")
    suffix = p.suffix.lower()
    if suffix in ONNX_SUFFIXES or suffix in TRT_SUFFIXES:
        tok = _tokenizer_near(p)
        default = "onnxruntime" if suffix in ONNX_SUFFIXES else "tensorrt"
        return ModelRef(f"{p.parent.name}/{p.name}", p, engine or default, tok, _labels(tok), _max_seq(tok))
    raise ModelError(f"{p}: unknown model file type {suffix or '(none)'}; expected .onnx, a TensorRT engine "
                     "(.plan/.engine) or a classifier folder")


@dataclass
class LightTokenizer:
    """The ``tokenizers`` library alone (no transformers, hence no torch import): what an ONNX or TensorRT
    deployment would load, so that the measured process memory is the deployment's."""

    tok: Any
    pad_token_id: int
    vocab_size: int

    def encode(self, texts: list[str], max_length: int) -> list[list[int]]:
        self.tok.enable_truncation(max_length)
        return [e.ids for e in self.tok.encode_batch(list(texts))]


def light_tokenizer(folder: Path) -> LightTokenizer | None:
    """A LightTokenizer from ``folder/tokenizer.json``, or None when there is none."""
    f = folder / "tokenizer.json"
    if not f.is_file():
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(f))
    tok.no_padding()
    pad = "[PAD]"
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        pad = json.loads(cfg.read_text()).get("pad_token") or pad
        pad = pad["content"] if isinstance(pad, dict) else pad
    pid = tok.token_to_id(str(pad))
    return LightTokenizer(tok, int(pid if pid is not None else 0), tok.get_vocab_size())
