"""``nanoify compress``: teacher → distil → export → quantize → bench → report, in one output folder.

    OUT/
      teacher/     only when the recipe fine-tunes a pretrained encoder first
      student/     distilled student (Hugging Face format; text models)
      export/      ONNX (+ fused ONNX for transformers), validated against PyTorch
      quantized/   INT8 / mixed-precision model chosen under the budget, with every candidate's numbers
      bench/       baseline (PyTorch FP32) against the compressed model (engine, INT8)
      report.md  report.json  report.png  manifest.json   (report.json: the bench report + "summary")

The stages follow the recipe: a text recipe distils (``distill``); an image recipe (``task:
image-classification``) has no distillation stage and exports its ``model`` (a PyTorch module built from an
import path with safetensors weights, or a given torch-module folder / ONNX file) straight away.

Each stage folder is written atomically by its own command. The pipeline's manifest records, per stage, a
hash of everything the stage depends on (its config and the hashes of the stages before it). A rerun skips a
stage whose folder exists with the same hash; a changed stage and every stage after it run again. When a stage
fails, the completed stages stay as they are, the manifest marks the failed one, and the error names it.

The budget is the total, in points of the task's primary metric, the compressed model may lose against the
teacher (text) or the FP32 model (images). Distillation spends part of it; quantization gets what is left (at
least ``quantize.min_budget``, so a student already beyond the budget still gets a careful INT8 search) and the
report says whether the total held.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import MANIFEST, atomic_dir, file_sha256, manifest, read_manifest, write_json
from .bench.run import benchmark
from .config import (
    BenchConfig,
    DataConfig,
    DistillConfig,
    FinetuneConfig,
    QuantizeConfig,
    TrainConfig,
    _check,
    config_hash,
    from_dict,
    load_recipe,
    to_dict,
)
from .distill.run import distill, finetune
from .errors import ConfigError, NanoifyError
from .export.onnx import export
from .models.load import build_module, load_weights
from .quant.run import quantize
from .quant.targets import get_target
from .tasks import BudgetCheck, check_budget, task_kind, task_names
from .tasks.resolve import resolve
from .tasks.text import TextKind

log = logging.getLogger(__name__)

STAGES = ("teacher", "student", "export", "quantized", "bench")


@dataclass(frozen=True)
class ModelSource:
    """A PyTorch image model to export: ``module`` (``package.module:callable``) with ``kwargs``, ``weights``
    (safetensors), ``input_shape`` (C, H, W), ``labels`` (names, or a file), ``preprocess`` (a preprocess.json
    path or the dict itself)."""

    module: str = ""
    weights: str = ""
    input_shape: tuple[int, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] | str | None = None
    preprocess: dict[str, Any] | str | None = None
    dynamic_hw: bool = False
    outputs: tuple[str, ...] = ("logits",)

    def __post_init__(self) -> None:
        _check(bool(self.module) and bool(self.weights), "model: needs module (package.module:callable) and weights")
        _check(len(self.input_shape) == 3, f"model.input_shape must be (C, H, W), got {list(self.input_shape)}")


@dataclass(frozen=True)
class CompressConfig:
    """The whole chain.

    Text: ``teacher`` is a fine-tuned classifier folder, or (with ``finetune_teacher``) a pretrained encoder
    (path, hub name or ``minilm``) fine-tuned on ``data`` first; ``distill`` makes the student.
    Images: ``model`` (a PyTorch module to export) or ``teacher`` (a torch-module folder, export folder or
    ``.onnx``); ``data`` is evaluated, ``calib`` (default: ``data``) calibrates; no distillation.
    """

    teacher: str = ""
    task: str = TextKind.name
    finetune_teacher: bool = False
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    distill: DistillConfig | None = None  # text: None means the defaults (DistillConfig())
    model: ModelSource | None = None
    data: DataConfig = field(default_factory=DataConfig)
    calib: str | None = None
    preprocess: dict[str, Any] | str | None = None  # for an ONNX teacher without preprocess.json beside it
    decoder: str | None = None  # detectors: yolov8 | yolov5 | fastestdet | package.module:function
    quantize: QuantizeConfig = field(default_factory=lambda: QuantizeConfig(budget=1.0))
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self) -> None:
        _check(self.task in task_names(), f"task must be one of {', '.join(task_names())}, got {self.task!r}")
        if not task_kind(self.task).distils:
            _check(self.distill is None,
                   "distillation of image models is not built; remove distill/student from the recipe")
            _check(not self.finetune_teacher, "finetune_teacher applies to text encoders only")
            _check(bool(self.teacher) != (self.model is not None),
                   "an image recipe needs either model: (module, weights, input_shape) or teacher: (a model path)")
        else:
            _check(bool(self.teacher), "compress needs a teacher: --teacher DIR (or teacher: in the recipe)")
            _check(self.model is None, "model: (a PyTorch module) is for image recipes; set task: image-classification")
            if self.distill is None:
                object.__setattr__(self, "distill", DistillConfig())

    @property
    def stages(self) -> list[str]:
        s = ["teacher"] if self.finetune_teacher else []
        return s + (["student"] if self.distill is not None else []) + ["export", "quantized", "bench"]


def load_compress_recipe(path: str | Path, **overrides: Any) -> CompressConfig:
    """A CompressConfig from a YAML/JSON recipe; ``overrides`` (CLI flags, None = not given) win."""
    d = load_recipe(path)
    d.pop("out", None)
    for k in ("student", "student_latency", "init"):
        if k in d:  # convenience: student/student_latency/init at the top level of a recipe
            d.setdefault("distill", {})[k] = d.pop(k)
    if isinstance(d.get("model"), dict) and isinstance(d["model"].get("kwargs"), dict):
        d["model"]["kwargs"] = dict(d["model"]["kwargs"])
    return apply_overrides(from_dict(CompressConfig, d), **overrides)


def apply_overrides(cfg: CompressConfig, teacher: str | None = None, data: str | None = None,
                    student: str | None = None, target: str | None = None, budget: float | None = None,
                    finetune_teacher: bool | None = None, optimize: str | None = None) -> CompressConfig:
    """Replace the given fields (None leaves the config's value)."""
    rep = dataclasses.replace
    if teacher is not None:
        cfg = rep(cfg, teacher=teacher, model=cfg.model if task_kind(cfg.task).distils else None)
    if finetune_teacher is not None:
        cfg = rep(cfg, finetune_teacher=finetune_teacher)
    if data is not None:
        cfg = rep(cfg, data=rep(cfg.data, data=data))
    if student is not None:
        cfg = rep(cfg, distill=rep(cfg.distill or DistillConfig(), student=student))
    q = cfg.quantize
    if target is not None:
        q = rep(q, target=target)
    if budget is not None:
        q = rep(q, budget=budget)
    if optimize is not None:
        q = rep(q, optimize=optimize)
    return rep(cfg, quantize=q)


class StageError(NanoifyError):
    """A pipeline stage failed; the completed stages are intact."""


def _path_identity(path: str) -> dict[str, Any]:
    """What identifies a given model path: its config and a hash of its weights."""
    p = Path(path)
    if not p.exists():
        return {"name": path}
    files = [p] if p.is_file() else (sorted(p.glob("*.safetensors")) + sorted(p.glob("*.onnx")) +
                                     [p / n for n in ("config.json", "label_map.json", "module.json",
                                                      "preprocess.json")])
    ident: dict[str, Any] = {"path": str(p.resolve())}
    for f in files:
        if f.is_file():
            ident[f.name] = file_sha256(f)
    return ident


def _model_identity(m: ModelSource) -> dict[str, Any]:
    d = to_dict(m)
    if Path(m.weights).is_file():
        d["weights_sha256"] = file_sha256(m.weights)
    if isinstance(m.preprocess, str) and Path(m.preprocess).is_file():
        d["preprocess_sha256"] = file_sha256(m.preprocess)
    return d


def stage_plan(cfg: CompressConfig) -> dict[str, str]:
    """Stage → hash of its inputs (its own config and the hashes of the stages it depends on)."""
    data = to_dict(cfg.data)
    keys: dict[str, str] = {}
    if cfg.finetune_teacher:
        keys["teacher"] = config_hash({"model": cfg.teacher, "data": data, "train": to_dict(cfg.finetune)})
        teacher_key = keys["teacher"]
    elif cfg.model is not None:
        teacher_key = config_hash(_model_identity(cfg.model))
    else:
        teacher_key = config_hash(_path_identity(cfg.teacher))
    upstream = teacher_key
    if cfg.distill is not None:
        dist = {k: v for k, v in to_dict(cfg.distill).items() if k not in ("teacher", "data")}
        keys["student"] = config_hash({"teacher": teacher_key, "distill": dist, "data": data})
        upstream = keys["student"]
    keys["export"] = config_hash({"source": upstream, "opset": 17})
    quant = to_dict(cfg.quantize)
    if not get_target(cfg.quantize.target).uses_device:
        quant.pop("device")  # read by targets that use it alone (cuda): other targets' stages stay valid
    keys["quantized"] = config_hash({"export": keys["export"], "teacher": teacher_key, "calib": cfg.calib,
                                     "quantize": quant, "data": data})
    keys["bench"] = config_hash({"quantized": keys["quantized"], "teacher": teacher_key,
                                 "bench": to_dict(cfg.bench), "data": data})
    return keys


def quantize_allowance(total_budget: float, min_budget: float, teacher_metric: float | None,
                       student_metric: float | None) -> float:
    """Points left for quantization: the total budget minus what distillation spent (teacher − student, in
    points), but at least ``min_budget``."""
    if teacher_metric is None or student_metric is None:
        return max(total_budget, min_budget)
    spent = BudgetCheck("distillation", teacher_metric, student_metric, total_budget).drop_pts
    return max(total_budget - spent, min_budget)


def _data_arg(cfg: CompressConfig) -> Any:
    """Data as the task reads it: a DataConfig for text, the spec for images."""
    return task_kind(cfg.task).data_arg(cfg.data)


def compress(cfg: CompressConfig, out: str | Path, progress: bool = True,
             on_stage: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run the chain into ``out`` (see module docstring); returns the pipeline manifest.

    ``on_stage(stage, status)`` is called with status "start", "done" or "reused".
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = stage_plan(cfg)
    old = read_manifest(out)
    if old and old.get("kind") != "compress":
        raise ConfigError(f"{out} holds a {old.get('kind')} output, not a compress run; pick another --out")
    stages = _Stages(out, keys, old, manifest("compress", to_dict(cfg), task=cfg.task, stages={}, plan=keys),
                     on_stage or (lambda s, st: None))
    teacher_dir = str(out / "teacher") if cfg.finetune_teacher else cfg.teacher
    if cfg.finetune_teacher:  # training stages resume a killed run; a checkpoint of other settings is ignored
        teacher = FinetuneConfig(model=cfg.teacher, data=cfg.data, train=cfg.finetune)
        stages.run("teacher", lambda f: finetune(teacher, f, resume="auto", progress=progress))
    if cfg.distill is not None:
        dcfg = dataclasses.replace(cfg.distill, teacher=teacher_dir, data=cfg.data)
        stages.run("student", lambda f: distill(dcfg, f, resume="auto", progress=progress))
        stages.run("export", lambda f: export(f.parent / "student", f))
    else:
        stages.run("export", lambda f: _export_model(cfg, f))
    stages.run("quantized", lambda f: _quantize_stage(cfg, out, f, progress))
    stages.run("bench", lambda f: _bench_stage(cfg, out, f, teacher_dir, progress))
    summary = _summary(cfg, out)
    stages.man["summary"] = summary
    _write_report(out, summary)
    write_json(out / MANIFEST, stages.man)
    return stages.man


class _Stages:
    """Runs a stage into ``out/<stage>`` unless an earlier run finished it with the same hash (and no stage before
    it reran); records each stage's status in the manifest as it goes; a failing stage is one line naming it."""

    def __init__(self, out: Path, keys: dict[str, str], old: dict[str, Any], man: dict[str, Any],
                 notify: Callable[[str, str], None]) -> None:
        self.out, self.keys, self.man, self.notify = out, keys, man, notify
        self.done_before = {s: v.get("hash") for s, v in old.get("stages", {}).items()
                            if v.get("status") in ("done", "reused")}
        self.stale = False  # once a stage reruns, every later stage reruns too

    def run(self, stage: str, fn: Callable[[Path], Any]) -> None:
        folder, key = self.out / stage, self.keys[stage]
        if not self.stale and self.done_before.get(stage) == key and (folder / MANIFEST).is_file():
            self._record(stage, {"hash": key, "status": "reused", "seconds": 0.0})
            self.notify(stage, "reused")
            return
        self.stale = True
        self.notify(stage, "start")
        t0 = time.time()
        try:
            fn(folder)
        except NanoifyError as e:
            self._record(stage, {"hash": key, "status": "failed", "error": str(e), "seconds": time.time() - t0})
            done = [s for s, v in self.man["stages"].items() if v["status"] in ("done", "reused")]
            raise StageError(f"stage {stage} failed: {e} (completed stages kept: {', '.join(done) or 'none'}; "
                             "fix it and rerun the same command to resume)") from None
        self._record(stage, {"hash": key, "status": "done", "seconds": time.time() - t0})
        self.notify(stage, "done")

    def _record(self, stage: str, entry: dict[str, Any]) -> None:
        self.man["stages"][stage] = entry
        write_json(self.out / MANIFEST, self.man)


def _quantize_stage(cfg: CompressConfig, out: Path, f: Path, progress: bool) -> None:
    """quantize the export with what distillation left of the budget."""
    allowance = cfg.quantize.budget
    if cfg.distill is not None:  # distillation is text classification's: its manifest reports accuracy
        val = read_manifest(out / "student").get("metrics", {})
        val = val.get("validation") or val.get("test") or {}
        allowance = quantize_allowance(cfg.quantize.budget, cfg.quantize.min_budget, val.get("teacher_accuracy"),
                                       val.get("accuracy"))
    ev = task_kind(cfg.task).data_arg(dataclasses.replace(cfg.data, max_train=None))
    quantize(out / "export", f, calib=cfg.calib or _data_arg(cfg), eval_data=ev,
             config=dataclasses.replace(cfg.quantize, budget=allowance), progress=progress)


def _bench_stage(cfg: CompressConfig, out: Path, f: Path, teacher_dir: str, progress: bool) -> None:
    """bench the baseline against the compressed model, on the engines the target's output runs on."""
    base, base_name = _baseline(cfg, out, teacher_dir)
    q = read_manifest(out / "quantized")
    engine = str(q.get("engine") or "onnxruntime")
    name = "compressed (ONNX Runtime INT8)" if engine == "onnxruntime" else \
        f"compressed ({q.get('chosen')}, {ENGINE_WORDS.get(engine, engine)})"
    bench_cfg = cfg.bench
    engines = get_target(cfg.quantize.target).bench_engines(cfg.quantize.device, cfg.task)
    if engines is not None:  # e.g. cuda: both in the torch engine on the GPU, FP32 eager against the choice
        pair, where = engines
        if not bench_cfg.engines:
            bench_cfg = dataclasses.replace(bench_cfg, engines=pair)
        name = f"compressed ({q.get('chosen')}, {where})"
    benchmark([base, str(out / "quantized")], _data_arg(cfg), out=f, config=bench_cfg, progress=progress,
              names=[base_name, name])


def _export_model(cfg: CompressConfig, f: Path) -> None:
    """The export stage of an image recipe: build and export the module, or export/copy the given model."""

    if cfg.model is not None:
        m = cfg.model
        module = load_weights(build_module(m.module, dict(m.kwargs)), m.weights)
        labels = list(m.labels) if isinstance(m.labels, list | tuple) else m.labels
        export(module, f, example_input=np.zeros((1, *m.input_shape), dtype=np.float32), preprocess=m.preprocess,
               labels=labels, factory=m.module, kwargs=dict(m.kwargs), dynamic_hw=m.dynamic_hw,
               output_names=tuple(m.outputs), task=cfg.task, decoder=cfg.decoder)
        return
    src = Path(cfg.teacher)
    if src.is_dir() and (src / "module.json").is_file():
        export(src, f)
        return

    # an ONNX model (or export folder): copied with its preprocessing (and a detector's decoder)
    ref = resolve(src, task=cfg.task, preprocess=cfg.preprocess, decoder=cfg.decoder)
    with atomic_dir(f) as tmp:
        shutil.copyfile(ref.path, tmp / "model.onnx")

        ref.kind.write_assets(ref, tmp)
        write_json(tmp / MANIFEST, manifest("export", {"model": str(src)}, task=ref.task, copied_from=str(ref.path)))


def _baseline(cfg: CompressConfig, out: Path, teacher_dir: str) -> tuple[str, str]:
    """What the compressed model is measured against: the teacher in PyTorch (text), the exported module in
    PyTorch when its source is known, else the FP32 ONNX model."""
    if task_kind(cfg.task).distils:
        return teacher_dir, "teacher (PyTorch FP32)"
    if (out / "export" / "torch" / "module.json").is_file():
        return str(out / "export" / "torch"), "model (PyTorch FP32)"
    return str(out / "export"), "model (ONNX Runtime FP32)"


def _summary(cfg: CompressConfig, out: Path) -> dict[str, Any]:
    """The headline: the bench report's own primary metric and the budget verdict of :func:`check_budget` (the
    one place a budget is checked), with the speed, size and memory ratios."""
    rep = json.loads((out / "bench" / "report.json").read_text())
    base, comp = rep["models"][0], rep["models"][-1]
    metric = rep["metric"]
    chk = check_budget(base, comp, cfg.quantize.budget, metric)
    q = read_manifest(out / "quantized")
    s = {"task": cfg.task, "metric": metric, "baseline_name": base["name"], "baseline_value": chk.reference,
         "compressed_value": chk.value, "drop_pts": chk.drop_pts, "budget_pts": cfg.quantize.budget,
         "budget_met": chk.met, "quantized_format": q.get("chosen"),
         "quantize_budget_pts": q.get("config", {}).get("budget"),
         "compressed_engine": comp.get("engine"),
         "predictions_changed": comp.get("predictions_changed"),
         "latency_speedup_b1": base["latency_ms_p50"] / comp["latency_ms_p50"],
         "throughput_speedup_b32": comp["throughput"] / base["throughput"],
         "throughput_batch": comp.get("throughput_batch"),
         "size_ratio": base["file_mb"] / comp["file_mb"], "memory_ratio": base["peak_rss_mb"] / comp["peak_rss_mb"]}
    if metric == "accuracy":  # the names earlier reports used
        s["teacher_accuracy"], s["compressed_accuracy"] = chk.reference, chk.value
    if cfg.distill is not None:
        st = read_manifest(out / "student").get("metrics", {})
        s["student_fp32_accuracy"] = (st.get("validation") or st.get("test") or {}).get("accuracy")
    return s


ENGINE_WORDS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "torch": "PyTorch", "tensorrt": "TensorRT"}


def _engine_words(s: dict[str, Any]) -> str:
    eng = str(s.get("compressed_engine") or "onnxruntime")
    return ENGINE_WORDS.get(eng.split(":")[0], eng)


def _write_report(out: Path, s: dict[str, Any]) -> None:
    table = (out / "bench" / "report.md").read_text().rstrip()
    verdict = "met" if s["budget_met"] else "MISSED"
    what = task_kind(s["task"]).metric_name(s["metric"])
    head = [f"# nanoify compress — {out.name}", "",
            f"{s['baseline_name']} → compressed ({s['quantized_format']}, {_engine_words(s)}): {what} "
            f"{s['baseline_value']:.4f} → {s['compressed_value']:.4f} ({-s['drop_pts']:+.2f} pt; budget "
            f"{s['budget_pts']} pt: {verdict}); batch-1 latency {s['latency_speedup_b1']:.1f}× faster, batch-"
            f"{s.get('throughput_batch') or 32} throughput {s['throughput_speedup_b32']:.1f}×, file "
            f"{s['size_ratio']:.1f}× smaller, peak memory {s['memory_ratio']:.1f}× lower.", ""]
    (out / "report.md").write_text("\n".join(head) + "\n" + table + "\n")
    rep = json.loads((out / "bench" / "report.json").read_text())
    write_json(out / "report.json", {"summary": s, **rep})  # the headline beside the table's numbers
    shutil.copyfile(out / "bench" / "report.png", out / "report.png")
