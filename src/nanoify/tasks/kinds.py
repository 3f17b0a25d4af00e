"""Task kinds: one object per kind of model (text classification, image classification, detection, or one a
user registers) that knows everything varying with the kind outside the :class:`~nanoify.tasks.base.Task`
itself — recognising its models, building their reference and their task, the files that travel with them, the
data they read, and how reports name their metrics and rows. Nothing outside ``tasks/`` branches on a kind's
name: it asks the kind, which every :class:`ModelRef` carries (``ref.kind``; by name: ``task_kind(name)`` from
:mod:`nanoify.tasks.registry`).

A new kind is one subclass of :class:`TaskKind` and one ``register_task`` call (see ``tests/e2e/test_seams.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import ConfigError, ModelError
from .base import EvalSet, Task

Spec = dict[str, tuple[str, list[Any]]]  # input or output name → (dtype, dims) of an ONNX graph


CLASSIFICATION_ROWS = (
    ("accuracy", "accuracy", 4),
    ("macro_f1", "macro-F1", 4),
    ("top1_agreement", "top-1 agreement with baseline", 4),
    ("predictions_changed", "predictions changed vs baseline", 0),
    ("logit_cosine", "logit cosine to baseline", 4),
    ("sqnr_db", "logit SQNR vs baseline (dB)", 1),
)


class TaskKind:
    """Defaults for a kind; subclasses override what differs (see module docstring)."""

    name = ""
    # the report's words for its metrics (``map50_95`` → "mAP@0.5:0.95"), and the unit of a row
    metric_words: dict[str, str] = {"top1_agreement": "top-1 agreement"}
    row_word = "row"
    # ``compress`` distils a student from the teacher (text), or exports the given model as it is (images)
    distils = False
    # the data a task of this kind reads: the whole DataConfig (columns, max length) or just its path
    reads_data_config = False
    # outputs are class scores (one per label): export checks the label count against them
    classifies = False
    # --target cuda: "linear" (quantized linear layers) or "precision" (FP16/BF16 of the whole model)
    gpu_formats = "precision"
    # the torch engine's dtype for the compressed side of ``compress --target cuda``'s bench ("" = as quantized)
    cuda_bench_dtype = ""
    # bench's table rows for the kind's scores: (key in the results, label, decimals)
    table_rows: tuple[tuple[str, str, int], ...] = ()
    settings: tuple[str, ...] = ()  # keys of the kind's settings file beside the model
    settings_file = ""  # its name (detection.json), where the kind has one

    # -- recognising a model ------------------------------------------------------------------------------
    def recognise(self, inputs: Spec, outputs: Spec, tokenizer: Path | None) -> bool:
        """True when an ONNX graph with these inputs and outputs (and a tokenizer near it, or None) is of this
        kind; asked in turn of every kind when ``--task`` is not given."""
        return False

    def from_folder(self, folder: Path, engine: str | None) -> ModelRef | None:
        """The reference of a folder in the kind's own format (a Hugging Face classifier), else None."""
        return None

    def from_onnx(self, name: str, path: Path, engine: str, inputs: Spec, outputs: Spec, tokenizer: Path | None,
                  preprocess: Any, decoder: str | None) -> ModelRef:
        """The reference of an ONNX graph (or a TensorRT engine built from it) of this kind."""
        raise ModelError(f"{path}: {self.name} models cannot be read from ONNX")

    def from_module(self, folder: Path, engine: str, input_name: str, shape: list[Any], preprocess: Any,
                    decoder: str | None) -> ModelRef:
        """The reference of a nanoify torch-module folder (``module.json``) of this kind."""
        raise ModelError(f"{folder}: torch modules of task {self.name!r} are not supported")

    # -- running it ----------------------------------------------------------------------------------------
    def make(self, ref: ModelRef) -> Task:
        """The task for a reference of this kind."""
        raise NotImplementedError

    def write_assets(self, ref: ModelRef, folder: Path) -> None:
        """What a model needs beside it to run anywhere (tokenizer, ``preprocess.json``, labels, settings),
        written from the reference's data."""

    def export_settings(self, decoder: str | None) -> dict[str, Any] | None:
        """The settings file an export writes beside a model of this kind, or None."""
        return None

    # -- data ---------------------------------------------------------------------------------------------
    def data_arg(self, data: DataConfig) -> Any:
        """What the task reads from a recipe's data: the DataConfig, or its path."""
        return data if self.reads_data_config else data.data

    def default_data(self) -> Any:
        """Evaluation data when none is given (bench), or a one-line error."""
        raise ConfigError(f"bench needs --data for {self.name} models")

    def profile_axes(self, ref: ModelRef, ev: EvalSet) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) per symbolic input axis for a TensorRT optimisation profile."""
        return {"batch": (1, 16, 32)}

    def metric_name(self, metric: str) -> str:
        return self.metric_words.get(metric, metric.replace("_", " "))


@dataclass
class ModelRef:
    """A runnable model: the file or folder an engine opens, the engine, its task kind (the object: ``task`` is its
    name, what manifests store), labels, preprocessing (as data: a tokenizer folder and limits, or
    :class:`~nanoify.data.images.Preprocess` fields), the kind's settings (an image model's input name; a
    detector's decoder, thresholds and ``dynamic_hw``), the files that travel with it (``assets``: tokenizer
    folder, ``preprocess.json``, ``label_map.json``, ``detection.json``) and facts for reports (``info``)."""

    name: str
    path: Path
    engine: str
    kind: TaskKind
    labels: list[str] | None
    preprocess: dict[str, Any]
    assets: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        """The kind's name."""
        return self.kind.name

    def files(self) -> list[Path]:
        """The weight files (for the size column): an ONNX file with its external data, an OpenVINO IR's ``.xml``
        with the ``.bin`` that holds its weights, a folder's safetensors (else ``.bin``) files."""
        if self.path.is_file():
            extra = [p for p in self.path.parent.glob(self.path.name + ".data") if p.is_file()]
            weights = self.path.with_suffix(".bin")
            if self.path.suffix == ".xml" and weights.is_file():
                extra.append(weights)
            return [self.path, *extra]
        return sorted(p for p in self.path.glob("*.safetensors")) or sorted(self.path.glob("*.bin"))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    @property
    def max_sequence(self) -> int | None:
        return self.preprocess.get("max_sequence")
