"""Image classification: rows are images decoded on demand, feeds are preprocessed batches (``preprocess.json``),
predictions are logits. Evaluation data without labels is scored by agreement with the FP32 model."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import ImageSource, Preprocess, image_splits, load_images
from ..data.splits import pick_split
from ..errors import ConfigError, DataError, ModelError
from ..models.files import LABEL_MAP_FILE, PREPROCESS_FILE
from ..models.load import read_labels
from .base import EvalSet, Feed
from .classify import ClassificationTask
from .kinds import CLASSIFICATION_ROWS, ModelRef, Spec, TaskKind

log = logging.getLogger(__name__)

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


def preprocess_of(ref: ModelRef) -> Preprocess:
    """The reference's preprocessing."""
    return Preprocess.from_dict(ref.preprocess, f"preprocessing of {ref.name}")


def one_image_input(path: Path, inputs: Spec, what: str) -> str:
    """The name of the one float input an image model takes, or a one-line error."""
    floats = [k for k, (d, _) in inputs.items() if d.startswith("float")]
    if len(inputs) != 1 or not floats:
        desc = ", ".join(f"{k} {d}{s}" for k, (d, s) in inputs.items())
        raise ModelError(f"{path} takes {desc}; {what} takes one float image input")
    return floats[0]


class ImageKind(TaskKind):
    """Image classifiers: one float rank-4 input, one class score per label out (2-D outputs)."""

    name = "image-classification"
    table_rows = CLASSIFICATION_ROWS
    row_word = "image"
    classifies = True

    def recognise(self, inputs: Spec, outputs: Spec, tokenizer: Path | None) -> bool:
        return (len(inputs) == 1 and len(next(iter(inputs.values()))[1]) == 4
                and {len(s) for _, s in outputs.values()} == {2})

    def from_onnx(self, name: str, path: Path, engine: str, inputs: Spec, outputs: Spec, tokenizer: Path | None,
                  preprocess: Any, decoder: str | None) -> ModelRef:
        x = one_image_input(path, inputs, "an image classifier")
        return image_ref(name, path, engine, x, inputs[x][1], path.parent, preprocess, self)

    def from_module(self, folder: Path, engine: str, input_name: str, shape: list[Any], preprocess: Any,
                    decoder: str | None) -> ModelRef:
        return image_ref(folder.name, folder, engine, input_name, shape, folder, preprocess, self)

    def make(self, ref: ModelRef) -> ImageClassification:
        return ImageClassification(preprocess_of(ref), ref.labels, ref.settings.get("input", "input"))

    def default_data(self) -> Any:
        raise ConfigError("bench needs --data for image models (an .npz file, a folder of images, a detection set)")

    def write_assets(self, ref: ModelRef, folder: Path) -> None:
        preprocess_of(ref).save(folder / PREPROCESS_FILE)
        if ref.labels:
            (folder / LABEL_MAP_FILE).write_text(json.dumps({"names": ref.labels}, indent=2) + "\n")


def image_ref(name: str, p: Path, engine: str, input_name: str, shape: list[Any], folder: Path,
              preprocess: str | Path | dict[str, Any] | None, kind: TaskKind,
              settings: dict[str, Any] | None = None) -> ModelRef:
    """The reference of a model taking one image batch: its preprocessing (given, ``preprocess.json`` beside it,
    or the defaults, said loudly), layout and size told from the input's shape, labels beside it; the input's
    name and ``settings`` (a detector's decoder and thresholds) are the reference's settings, where a model whose
    height and width are dynamic is marked ``dynamic_hw``."""
    assets = []
    found = None
    if isinstance(preprocess, dict):
        pre = Preprocess.from_dict(preprocess, "preprocess")
    elif preprocess is not None:
        pre = Preprocess.load(preprocess)
    else:
        found = next((c / PREPROCESS_FILE for c in (folder, folder.parent) if (c / PREPROCESS_FILE).is_file()), None)
        pre = Preprocess.load(found) if found else Preprocess()
        if found:
            assets.append(found)
        else:  # defaults are a guess about how the model was trained: say so wherever the model is used
            log.warning("%s has no preprocess.json beside it: using the defaults (stretch to the model's size, RGB, "
                        "pixels/255, no mean/std); write one or pass --preprocess if the model was trained otherwise",
                        p)
    if len(shape) != 4:
        raise ModelError(f"{p} takes {input_name!r} of rank {len(shape)} ({shape}); an image model takes one "
                         "rank-4 image batch (N×C×H×W or N×H×W×C)")
    layout = pre.layout
    if isinstance(shape[1], int) and shape[1] == 3 and not (isinstance(shape[3], int) and shape[3] == 3):
        layout = "nchw"
    elif isinstance(shape[3], int) and shape[3] == 3 and not (isinstance(shape[1], int) and shape[1] == 3):
        layout = "nhwc"
    hw = shape[2:4] if layout == "nchw" else shape[1:3]
    fixed = tuple(hw) if all(isinstance(d, int) and d > 0 for d in hw) else None
    size = pre.size or fixed
    if size is None:
        raise DataError(f"{p} takes images of any size and no preprocess.json says which; write one with "
                        "\"size\": [H, W] beside the model or pass --preprocess FILE (for a detector: the largest "
                        "input it should get)")
    if fixed and tuple(size) != fixed:
        raise DataError(f"preprocess size {list(size)} does not match the model's fixed input {list(fixed)}; fix "
                        "\"size\" in preprocess.json")

    pre = replace(pre, size=tuple(size), layout=layout)
    labels = None
    for c in (folder, folder.parent):
        if (c / LABEL_MAP_FILE).is_file():
            labels = read_labels(c)
            assets.append(c / LABEL_MAP_FILE)
            break
    kind_settings: dict[str, Any] = {"input": input_name}
    if settings is not None:
        kind_settings.update(settings)
        kind_settings["dynamic_hw"] = fixed is None
    source = ("given" if isinstance(preprocess, dict) else str(preprocess)) if preprocess is not None else (
        str(found) if found else "defaults")
    info: dict[str, Any] = {"preprocess_source": source}
    if isinstance(shape[0], int) and shape[0] > 0:
        info["max_batch"] = shape[0]  # exported with a fixed batch: feeds never exceed it
    return ModelRef(name, p, engine, kind, labels, pre.to_dict(), assets, info, kind_settings)
