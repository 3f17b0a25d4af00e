"""Image classification: rows are images decoded on demand, feeds are preprocessed batches (``preprocess.json``),
predictions are logits. Evaluation data without labels is scored by agreement with the FP32 model."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.images import ImageSource, Preprocess, image_splits, load_images
from ..data.splits import pick_split
from ..errors import DataError
from .base import EvalSet, Feed
from .classify import ClassificationTask


@dataclass
class ImageRows:
    """A view of ``source`` through ``index`` (a subset or sample), decoded only when batched."""

    source: ImageSource
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def take(self, idx: Sequence[int]) -> ImageRows:
        return ImageRows(self.source, self.index[np.asarray(list(idx), dtype=np.int64)])

    def load(self, idx: Sequence[int]) -> list[np.ndarray]:
        return self.source.load([int(self.index[i]) for i in idx])


def _spec(data: Any) -> str:
    spec = getattr(data, "data", data)
    if not spec:
        raise DataError("image data is needed: pass an .npz file or a folder of images (--data/--calib/--eval)")
    return str(spec)


class ImageClassification(ClassificationTask):
    """One float image input (``input_name``, NCHW or NHWC by ``preprocess.layout``) → class logits."""

    name = "image-classification"
    default_calib_samples = 100
    timing_distinct_rows = 64

    def __init__(self, preprocess: Preprocess, labels: list[str] | None, input_name: str = "input") -> None:
        if preprocess.size is None:
            raise DataError("the preprocessing has no size and the model's input size is dynamic; set \"size\": "
                            "[H, W] in preprocess.json")
        self.preprocess = preprocess
        self.labels = list(labels) if labels else None
        self.input_name = input_name

    def _gold(self, raw: list[Any] | None, classes: list[str] | None, where: str) -> np.ndarray | None:
        """Class ids in the model's order from the data's labels (ints, or class-folder names)."""
        if raw is None:
            return None
        if all(isinstance(v, int | np.integer) for v in raw):
            ids = np.asarray(raw, dtype=np.int64)
            if self.labels and classes and list(classes) != list(self.labels):
                names = [classes[i] for i in ids]  # the data names its classes: map by name
                return self._by_name(names, where)
            if self.labels and ids.size and (ids.min() < 0 or ids.max() >= len(self.labels)):
                raise DataError(f"{where} has label {int(ids.max())} but the model has {len(self.labels)} classes")
            return ids
        names = [str(v) for v in raw]
        if self.labels:
            return self._by_name(names, where)
        order = sorted(set(names))  # no label map with the model: classes in sorted folder order (ImageFolder)
        m = {n: i for i, n in enumerate(order)}
        return np.asarray([m[n] for n in names], dtype=np.int64)

    def _by_name(self, names: list[str], where: str) -> np.ndarray:
        assert self.labels is not None
        m = {n: i for i, n in enumerate(self.labels)}
        unknown = sorted({n for n in names if n not in m})
        if unknown:
            raise DataError(f"class {unknown[0]!r} in {where} is not among the model's labels "
                            f"({', '.join(self.labels[:5])}{' …' if len(self.labels) > 5 else ''}); rename the "
                            "folder or fix label_map.json")
        return np.asarray([m[n] for n in names], dtype=np.int64)

    def _split(self, data: Any, split: str | None, purpose: str) -> tuple[Any, str]:
        spec = _spec(data)
        splits = image_splits(spec)
        chosen = pick_split(None if splits is None else set(splits), split, purpose, spec)
        return load_images(spec, chosen), chosen

    def eval_set(self, data: Any, split: str | None = None, limit: int | None = None) -> EvalSet:
        sp, chosen = self._split(data, split, "eval")
        n = len(sp.source) if limit is None else min(limit, len(sp.source))
        if n == 0:
            raise DataError(f"{sp.where} holds no images")
        gold = self._gold(sp.labels, sp.classes, sp.where)
        return EvalSet(ImageRows(sp.source, np.arange(n)), None if gold is None else gold[:n], f"{sp.where} ({chosen})",
                       chosen, sp.provenance)

    def calib_set(self, data: Any, n: int | None = None, seed: int = 0) -> EvalSet:
        sp, chosen = self._split(data, None, "calib")
        k = min(n or self.default_calib_samples, len(sp.source))
        idx = np.sort(np.random.default_rng(seed).choice(len(sp.source), size=k, replace=False))
        return EvalSet(ImageRows(sp.source, idx), None, f"{sp.where} ({chosen})", chosen,
                       {**sp.provenance, "sample": {"n": int(k), "seed": seed}})

    def subset(self, es: EvalSet, idx: Sequence[int]) -> EvalSet:
        idx = list(idx)
        return EvalSet(es.rows.take(idx), None if es.labels is None else es.labels[idx], es.where, es.split,
                       es.provenance)

    def batches(self, es: EvalSet, batch_size: int, sort: bool = False) -> Iterator[tuple[np.ndarray, Feed]]:
        rows: ImageRows = es.rows
        for start in range(0, len(rows), batch_size):
            b = np.arange(start, min(start + batch_size, len(rows)), dtype=np.int64)
            yield b, {self.input_name: self.preprocess(rows.load(b))}
