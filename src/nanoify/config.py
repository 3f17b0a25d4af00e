"""Frozen, validated configuration for each stage; loadable from dicts (YAML/JSON recipes).

The CLI builds these from its flags and the Python API accepts them directly, so a recipe file, a
command line and a library call all describe a run the same way (and hash the same way).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class DataConfig:
    """Where the text data is and how to read it.

    Attributes:
        data: a folder with train/validation/test files, one file, ``hf:NAME[/CONFIG]``, or None for the
            default (``$NANOIFY_DATA_DIR``, then ``../shared/data/text/sst2``, then ``hf:glue/sst2``).
        text_column / label_column: column names; None detects ``sentence``/``text`` and ``label``.
        max_length: tokenizer truncation length.
        max_train: use a seeded random subset of this many training rows.
    """

    data: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    max_length: int = 128
    max_train: int | None = None

    def __post_init__(self) -> None:
        _check(self.max_length >= 8, f"--max-length must be at least 8, got {self.max_length}")
        _check(self.max_train is None or self.max_train > 0, "--max-train must be a positive number")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and loop settings shared by fine-tuning and distillation (per stage)."""

    epochs: float = 1.0
    max_steps: int | None = None
    # small data trains longer: at least min_steps per stage, but never more than max_epochs (TREC, 2,000 rows,
    # MiniLM: 1 epoch = 63 steps gave 65.4% test accuracy, 5 epochs = 315 steps 94.0%)
    min_steps: int = 500
    max_epochs: float = 10.0
    # when that rule lengthens a stage (small data), this share of the training rows is held out and the stage
    # stops after `patience` evaluations without a lower held-out loss, keeping its best weights (0: off)
    holdout: float = 0.1
    patience: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    eval_batch_size: int = 64
    device: str = "cpu"  # "cuda" / "cuda:N": train on a GPU
    precision: str = "fp32"  # "bf16": autocast the forward passes (and the losses) to bfloat16

    def __post_init__(self) -> None:
        _check(self.epochs > 0, f"--epochs must be positive, got {self.epochs}")
        _check(self.max_steps is None or self.max_steps > 0, "--max-steps must be positive")
        _check(self.min_steps >= 0 and self.max_epochs > 0, "--min-steps must be ≥ 0 and --max-epochs positive")
        _check(0 <= self.holdout < 0.5 and self.patience >= 1, "--holdout must be in [0, 0.5), --patience ≥ 1")
        _check(self.batch_size > 0, "--batch-size must be positive")
        _check(self.lr > 0, "--lr must be positive")
        _check(0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)")
        _check(self.checkpoint_every > 0, "--checkpoint-every must be positive")
        _check(self.device == "cpu" or self.device.startswith("cuda"), f"--device must be cpu or cuda[:N], got "
               f"{self.device!r}")
        _check(self.precision in ("fp32", "bf16"), f"--precision must be fp32 or bf16, got {self.precision!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    """A pretrained encoder (path, hub name or ``minilm``) turned into a classifier."""

    model: str = "minilm"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


STAGES = ("joint", "intermediate", "prediction")


@dataclass(frozen=True)
class DistillConfig:
    """Teacher → student distillation.

    Intermediate-loss weights left as None resolve to 1.0 when the schedule has an ``intermediate``
    stage (and no relation loss is asked for) and to 0.0 otherwise (logits-only distillation, where teacher
    logits are cached). ``relation_weight`` turns on MiniLM-v2 relation distillation (``distill/relations.py``).
    """

    teacher: str = ""
    student: str = "half"
    student_latency: float | None = None  # ms at batch 1 here: the carved shape that fits replaces ``student``
    init: str = "auto"
    alpha_hard: float = 0.5
    alpha_soft: float = 1.0
    temperature: float = 2.0
    attention_weight: float | None = None
    hidden_weight: float | None = None
    embedding_weight: float | None = None
    relation_weight: float = 0.0
    relation_layer: int = 0  # teacher layer (1-based) whose Q/K/V relations the student's last layer learns; 0: last
    relation_heads: int = 0  # relation heads R; 0: the student's head count when it divides both widths
    augment: int = 0  # TinyBERT-style variants per training sentence, labelled by the teacher (distill/augment.py)
    augment_prob: float = 0.4
    augment_neighbours: int = 15
    augment_mlm: str | None = None  # a masked LM on the teacher's vocabulary: candidates as in TinyBERT
    layer_map: str = "uniform"
    stages: tuple[str, ...] = ("joint",)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))

    def __post_init__(self) -> None:
        _check(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        _check(self.student_latency is None or self.student_latency > 0,
               f"--student-latency must be a positive number of milliseconds, got {self.student_latency}")
        for name in ("alpha_hard", "alpha_soft", "attention_weight", "hidden_weight", "embedding_weight",
                     "relation_weight"):
            v = getattr(self, name)
            _check(v is None or v >= 0, f"--{name.replace('_', '-')} must be >= 0, got {v}")
        stages = tuple(self.stages)
        object.__setattr__(self, "stages", stages)
        _check(len(stages) > 0 and all(s in STAGES for s in stages),
               f"--stages takes a comma list of {', '.join(STAGES)}; got {','.join(stages)}")
        inter = "intermediate" in stages
        for name in ("attention_weight", "hidden_weight", "embedding_weight"):
            if getattr(self, name) is None:  # relations replace TinyBERT's layer losses unless asked for too
                object.__setattr__(self, name, 1.0 if inter and not self.relation_weight else 0.0)
        if inter:
            _check(self.attention_weight + self.hidden_weight + self.embedding_weight + self.relation_weight > 0,
                   "the intermediate stage needs a non-zero --attention-weight, --hidden-weight, --embedding-weight "
                   "or --relation-weight")
        _check(self.augment >= 0 and 0 < self.augment_prob <= 1 and self.augment_neighbours >= 1,
               "--augment must be ≥ 0, --augment-prob in (0, 1], --augment-neighbours ≥ 1")
        _check(self.relation_layer >= 0 and self.relation_heads >= 0,
               "--relation-layer and --relation-heads must be ≥ 0 (0: the teacher's last layer; automatic)")
        _check(self.alpha_hard + self.alpha_soft > 0 or stages == ("intermediate",),
               "--alpha-hard and --alpha-soft are both 0: the student would never learn the task")

    @property
    def uses_intermediate(self) -> bool:
        """True when any attention, hidden-state, embedding or relation loss is on in some stage."""
        return ((self.attention_weight or 0) + (self.hidden_weight or 0) + (self.embedding_weight or 0)
                + self.relation_weight) > 0


# the observers of nanoify.quant.observers.OBSERVERS, in its order (a test holds the two together)
CALIBRATION_METHODS = ("minmax", "percentile", "mse", "entropy")
OPTIMIZE = ("balanced", "latency", "throughput", "size")


@dataclass(frozen=True)
class TimingConfig:
    """How speed is measured — the same rows, batches and rounds in ``quantize`` (choosing) and ``bench``
    (reporting), so the two agree: batch-1 latency over the first ``latency_rows`` rows and batch-32 throughput
    over the first ``throughput_rows`` (in data order), ``rounds`` times, median. Quantize interleaves the
    rounds across its candidates; bench repeats them inside each model's process."""

    latency_rows: int = 200
    throughput_rows: int = 512
    rounds: int = 3
    batch: int = 32

    def __post_init__(self) -> None:
        _check(self.latency_rows > 0 and self.throughput_rows > 0, "timing rows must be positive")
        _check(self.rounds >= 1, "timing rounds must be ≥ 1")
        _check(self.batch >= 1, "the throughput batch must be ≥ 1")


CPU_ENGINES = ("auto", "onnxruntime", "openvino")
ROUNDINGS = ("nearest", "learned")


@dataclass(frozen=True)
class QuantizeConfig:
    """``nanoify quantize``: target, budget (points of the task's primary metric against the FP32 model),
    calibration methods and samples, what the model is for (``optimize``), timing.

    Attributes:
        agreement_budget: also bound how far predictions may drift from the FP32 model's, in points of
            agreement (1.0: at most 1% of top-1 predictions change). A metric budget alone lets changes that
            cancel out pass; this one does not.
        min_budget: used by ``compress`` only (the quantize stage gets at least this much of the total budget).
        calib_samples: None = the task's default (256 sentences, 100 images).
        methods: None = every calibration method (entropy, percentile, mse, minmax for ``cpu``).
        cpu_engine: ``--target cpu``: ``auto`` (default) also runs the chosen graph in OpenVINO when installed
            and deploys on whichever engine is faster here within the budget; ``onnxruntime`` or ``openvino``
            to fix it (:mod:`nanoify.quant.engine_choice`).
    """

    target: str = "cpu"
    budget: float = 0.5
    agreement_budget: float | None = None
    min_budget: float = 0.5
    methods: tuple[str, ...] | None = None
    calib_samples: int | None = None
    eval_rows: int | None = None
    optimize: str = "balanced"
    threads: int | None = None
    timing: TimingConfig = field(default_factory=TimingConfig)
    device: str = "cuda"  # --target cuda only: the GPU ("cuda:N"); "cpu" scores the formats on CPU kernels
    cpu_engine: str = "auto"
    sensitivity_seconds: float | None = None  # mixed precision's per-node search fits this; None: a share of the next
    search_seconds: float = 600.0  # the whole search's deadline: its steps take shares of it (quant/steps.py Clock)
    rounding: tuple[str, ...] | None = None  # static weights: nearest, learned; None: learned too for CNNs
    bias_correction: bool | None = None  # twins of the best static candidates with corrected biases; None: CNNs
    smooth: bool | None = None  # SmoothQuant twins of the static candidates; None: graphs without convolutions
    require_int8: bool = False  # fail (nothing written) instead of writing the float model when no INT8 one wins

    def __post_init__(self) -> None:
        # the name is checked against the registered targets where quantize runs (nanoify.quant.targets): a
        # target registered at run time is valid too
        _check(isinstance(self.target, str) and bool(self.target), "--target must name a target (cpu, tensorrt, cuda)")
        _check(self.device == "cpu" or self.device.startswith("cuda"),
               f"--device must be cuda, cuda:N or cpu, got {self.device!r}")
        _check(self.budget >= 0 and self.min_budget >= 0, "--budget is a drop in points and must be ≥ 0")
        _check(self.agreement_budget is None or self.agreement_budget >= 0, "--agreement-budget must be ≥ 0")
        _check(self.optimize in OPTIMIZE, f"--optimize must be one of {', '.join(OPTIMIZE)}, got {self.optimize!r}")
        _check(self.cpu_engine in CPU_ENGINES,
               f"--cpu-engine must be one of {', '.join(CPU_ENGINES)}, got {self.cpu_engine!r}")
        _check(self.sensitivity_seconds is None or self.sensitivity_seconds > 0,
               "--sensitivity-seconds must be positive")
        _check(self.search_seconds > 0, "--search-seconds must be positive")
        _check(self.bias_correction in (None, True, False), "--bias-correction must be auto, on or off")
        _check(self.smooth in (None, True, False), "--smooth must be auto, on or off")
        if self.rounding is not None:
            object.__setattr__(self, "rounding", tuple(self.rounding))
            _check(bool(self.rounding) and all(r in ROUNDINGS for r in self.rounding),
                   f"--rounding must name {' and/or '.join(ROUNDINGS)}, got {','.join(self.rounding) or 'nothing'}")
        _check(self.calib_samples is None or self.calib_samples > 0, "--calib-samples must be positive")
        _check(self.eval_rows is None or self.eval_rows > 0, "--eval-rows must be positive")
        if self.methods is not None:
            methods = tuple(self.methods)
            object.__setattr__(self, "methods", methods)
            bad = [m for m in methods if m not in CALIBRATION_METHODS]
            _check(not bad, f"unknown calibration method {bad[0] if bad else ''!r}; choose from "
                            f"{', '.join(CALIBRATION_METHODS)}")


@dataclass(frozen=True)
class BenchConfig:
    """``nanoify bench``: split, concurrent streams, fresh-process repeats, timing (shared with quantize)."""

    split: str | None = None
    streams: int = 0
    repeats: int = 1
    isolate: bool = True
    engines: tuple[str | None, ...] | None = None
    device: str = "cpu"
    timing: TimingConfig = field(default_factory=TimingConfig)

    def __post_init__(self) -> None:
        _check(self.streams >= 0, "--streams must be ≥ 0")
        _check(self.repeats >= 1, "--repeats must be ≥ 1")
        if self.engines is not None:
            object.__setattr__(self, "engines", tuple(self.engines))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON-serialisable dict of a config dataclass."""
    d = dataclasses.asdict(cfg)
    return json.loads(json.dumps(d, default=list))


def _dataclass_of(t: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else None."""

    if dataclasses.is_dataclass(t):
        return t
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(t) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build a (nested) config dataclass from a dict, rejecting unknown keys with a clear error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    _check(not unknown,
           f"unknown {cls.__name__} key(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for k, v in d.items():
        t = _dataclass_of(hints[k])
        if t is not None and isinstance(v, dict):
            v = from_dict(t, v)
        elif k == "stages" and isinstance(v, str):
            v = tuple(s.strip() for s in v.split(",") if s.strip())
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON recipe file into a dict."""
    p = Path(path)
    _check(p.is_file(), f"recipe {p} does not exist")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        d = yaml.safe_load(text)
    else:
        d = json.loads(text)
    _check(isinstance(d, dict), f"recipe {p} must hold a mapping at the top level")
    return d


def config_hash(obj: Any) -> str:
    """A stable short hash of a config (dataclass or dict)."""
    d = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
