"""Text classification data: files or Hugging Face datasets → labelled splits → token batches.

A data spec is a folder holding ``train``/``validation``/``test`` files (``.tsv``, ``.csv``, ``.jsonl``;
``dev`` is read as ``validation``), a single file (used for every split asked for), or
``hf:NAME[/CONFIG]`` for the Hugging Face hub. With no spec the default is ``$NANOIFY_DATA_DIR``, then
the shared SST-2 copy beside the project, then ``hf:glue/sst2``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import file_sha256
from ..config import DataConfig
from ..errors import DataError, first_line
from .splits import split_of

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "dev", "val"), "test": ("test",)}
EXTENSIONS = (".tsv", ".csv", ".jsonl", ".json")
TEXT_COLUMNS = ("sentence", "text", "sentence1", "content", "review")
LABEL_COLUMNS = ("label", "labels", "coarse_label", "class")


def _project_shared() -> list[Path]:
    here = Path(__file__).resolve()
    cands = [Path.cwd().parent / "shared", Path.cwd() / "shared"]
    if len(here.parents) > 3:
        cands.insert(0, here.parents[3].parent / "shared")
    return cands


def default_data_spec() -> str:
    """The data used when none is named (see module docstring)."""
    env = os.environ.get("NANOIFY_DATA_DIR")
    if env:
        return env
    for shared in _project_shared():
        p = shared / "data" / "text" / "sst2"
        if p.is_dir():
            return str(p)
    return "hf:glue/sst2"


@dataclass
class LabelMap:
    """Label names in id order. Integer labels keep numeric order; strings are sorted."""

    names: list[str]

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> LabelMap:
        uniq = {str(v) for v in values}
        try:
            names = sorted(uniq, key=lambda s: int(s))
        except ValueError:
            names = sorted(uniq)
        return cls(names)

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def encode(self, values: Sequence[Any], where: str) -> list[int]:
        m = self.label2id
        out = []
        for v in values:
            key = str(v)
            if key not in m:
                raise DataError(f"label {key!r} in {where} is not in the model's label map {self.names}; "
                                "check --label-column or train on data with this label")
            out.append(m[key])
        return out

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class Split:
    """One split: raw texts and raw label values (strings or ints as read)."""

    texts: list[str]
    labels: list[Any]
    source: str = ""


@dataclass
class TextData:
    """Splits read from one data spec, with provenance for the manifest."""

    spec: str
    splits: dict[str, Split]
    provenance: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(f"data {self.spec} has no {name!r} split (it has: {', '.join(self.splits) or 'none'}); "
                            f"add a {name} file or pick another split")
        return self.splits[name]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8")
            if suffix == ".json" and text.lstrip().startswith("["):
                rows = json.loads(text)
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            return rows
        delim = "\t" if suffix == ".tsv" else ","
        with open(path, newline="", encoding="utf-8") as f:
            quoting = csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL
            return list(csv.DictReader(f, delimiter=delim, quoting=quoting))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot parse {path}: {e}; expected {suffix[1:].upper()} with a header row") from None


def _pick(columns: Sequence[str], wanted: str | None, defaults: Sequence[str], kind: str, where: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"no column {wanted!r} in {where} (columns: {', '.join(columns)}); "
                            f"fix --{kind}-column")
        return wanted
    for c in defaults:
        if c in columns:
            return c
    raise DataError(f"cannot find a {kind} column in {where} (columns: {', '.join(columns)}); "
                    f"name it with --{kind}-column")


def _rows_to_split(rows: list[dict[str, Any]], cfg: DataConfig, where: str) -> Split:
    if not rows:
        raise DataError(f"{where} is empty; give it at least one labelled row")
    cols = list(rows[0].keys())
    tcol = _pick(cols, cfg.text_column, TEXT_COLUMNS, "text", where)
    lcol = _pick(cols, cfg.label_column, LABEL_COLUMNS, "label", where)
    texts, labels = [], []
    for i, r in enumerate(rows):
        t, lab = r.get(tcol), r.get(lcol)
        if t is None or lab is None or (isinstance(lab, str) and not lab.strip()):
            raise DataError(f"row {i + 1} of {where} has no {tcol!r} or {lcol!r} value; fix or remove it")
        texts.append(str(t))
        labels.append(lab.strip() if isinstance(lab, str) else lab)
    return Split(texts, labels, where)


def _find_split_file(folder: Path, split: str) -> Path | None:
    """``train.tsv``/``validation.tsv``/``dev.csv`` …, else the one data file whose name starts like the split
    (``train_full.tsv``; see :mod:`nanoify.data.splits`)."""
    for alias in SPLIT_ALIASES.get(split, (split,)):
        for ext in EXTENSIONS:
            p = folder / f"{alias}{ext}"
            if p.is_file():
                return p
    cands = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS
                   and split_of(p.name) == split)
    if len(cands) > 1:
        raise DataError(f"{folder} has several {split} files ({', '.join(p.name for p in cands)}); keep one or "
                        f"name it {split}.tsv")
    return cands[0] if cands else None


def available_splits(spec: str | None) -> set[str] | None:
    """The splits a data spec holds, or None when any split is served (one file, or the hub)."""
    spec = spec or default_data_spec()
    if spec.startswith("hf:"):
        return None
    p = Path(spec).expanduser()
    if not p.exists():
        raise DataError(f"data path {p} does not exist; pass a folder with train/validation files, "
                        "a .tsv/.csv/.jsonl file, or hf:NAME")
    if p.is_file():
        return None
    return {s for s in SPLIT_ALIASES if _find_split_file(p, s) is not None}


def _load_hf(spec: str, cfg: DataConfig, splits: Sequence[str]) -> TextData:
    name = spec[3:]
    if not name:
        raise DataError("hf: needs a dataset name, e.g. hf:glue/sst2")
    ds_name, _, ds_config = name.partition("/")
    try:
        import datasets
    except ImportError:
        raise DataError("loading hf: data needs the 'datasets' package: pip install datasets") from None
    try:
        dd = datasets.load_dataset(ds_name, ds_config or None)
    except Exception as e:  # noqa: BLE001 - any hub/network failure becomes one clear line
        first = first_line(e)
        raise DataError(f"cannot load Hugging Face dataset {name!r} ({first}); "
                        "check the name and your network, or pass a local folder with --data") from None
    out = {}
    for split in splits:
        key = next((a for a in SPLIT_ALIASES.get(split, (split,)) if a in dd), None)
        if key is None:
            continue
        rows = dd[key].to_list()
        if rows and all(str(r.get(cfg.label_column or "label", "")) == "-1" for r in rows[:50]):
            log.info("skipping %s split of %s: it has no labels", key, name)
            continue
        out[split] = _rows_to_split(rows, cfg, f"{spec} [{key}]")
    return TextData(spec, out, {"source": spec})


def load_text_data(cfg: DataConfig, splits: Sequence[str] = ("train", "validation", "test"),
                   seed: int = 0) -> TextData:
    """Read the splits named (those present) from ``cfg.data``; apply ``max_train`` to train.

    Raises:
        DataError: missing path, unknown column, empty split, no requested split present.
    """
    spec = cfg.data or default_data_spec()
    if spec.startswith("hf:"):
        data = _load_hf(spec, cfg, splits)
    else:
        p = Path(spec).expanduser()
        if not p.exists():
            raise DataError(f"data path {p} does not exist; pass a folder with train/validation files, "
                            "a .tsv/.csv/.jsonl file, or hf:NAME")
        out, prov = {}, {"source": str(p.resolve()), "files": {}}
        if p.is_file():
            if p.suffix.lower() not in EXTENSIONS:
                raise DataError(f"{p} is not a .tsv, .csv or .jsonl file")
            rows = _read_rows(p)
            base = _rows_to_split(rows, cfg, str(p))
            for s in splits:
                out[s] = base
            prov["files"][p.name] = {"sha256": file_sha256(p), "rows": len(rows)}
        else:
            for s in splits:
                f = _find_split_file(p, s)
                if f is None:
                    continue
                rows = _read_rows(f)
                out[s] = _rows_to_split(rows, cfg, str(f))
                prov["files"][f.name] = {"sha256": file_sha256(f), "rows": len(rows)}
            if not out:
                raise DataError(f"{p} has none of the files {', '.join(s + '.tsv' for s in splits)} "
                                "(.csv/.jsonl also work)")
        data = TextData(spec, out, prov)
    if not data.splits:
        raise DataError(f"{spec} has none of the splits {', '.join(splits)}")
    if cfg.max_train and "train" in data.splits and len(data.splits["train"].texts) > cfg.max_train:
        tr = data.splits["train"]
        idx = sorted(random.Random(seed).sample(range(len(tr.texts)), cfg.max_train))
        data.splits["train"] = Split([tr.texts[i] for i in idx], [tr.labels[i] for i in idx], tr.source)
        data.provenance["max_train"] = {"n": cfg.max_train, "seed": seed}
    data.provenance["rows"] = {k: len(v.texts) for k, v in data.splits.items()}
    return data


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated to ``max_length`` (no padding: batches pad dynamically)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return [list(x) for x in enc["input_ids"]]


def collate(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, np.ndarray]:
    """Pad a list of token-id lists to the longest one: input_ids, attention_mask, token_type_ids."""
    n, width = len(ids), max(len(x) for x in ids)
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  bucket: int = 50) -> list[list[int]]:
    """Deterministic shuffled batches for one epoch with length bucketing.

    Rows are shuffled with ``(seed, epoch)``, sorted by length inside windows of ``bucket`` batches
    (so a batch pads little), then the batch order is shuffled again. The same arguments always give
    the same batches, which is what makes ``--resume`` exact.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * bucket
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window].tolist(), key=lambda i: lengths[i])
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def inference_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Batches of row indices sorted by length (for fast inference); callers scatter results back."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for j in range(0, len(order), batch_size):
        yield order[j:j + batch_size]
