"""``nanoify compress``: teacher → distil → export → quantize → bench → report, in one output folder.

    OUT/
      teacher/     only when the recipe fine-tunes a pretrained encoder first
      student/     distilled student (Hugging Face format)
      export/      ONNX + fused ONNX, validated against PyTorch
      quantized/   INT8 / mixed-precision model chosen under the budget, with every candidate's numbers
      bench/       teacher (PyTorch FP32) against the compressed student (engine, INT8)
      report.md  report.json  report.png  manifest.json

Each stage folder is written atomically by its own command. The pipeline's manifest records, per stage,
a hash of everything the stage depends on (its config and the hashes of the stages before it). A rerun
skips a stage whose folder exists with the same hash; a changed stage and every stage after it run
again. When a stage fails, the completed stages stay as they are, the manifest marks the failed one,
and the error names it.

The budget is the total accuracy, in points, the compressed student may lose against the teacher.
Distillation spends part of it; quantization gets what is left (at least ``quantize.min_budget``, so a
student already beyond the budget still gets a careful INT8 search) and the report says whether the
total held.
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

from .artifacts import MANIFEST, file_sha256, manifest, read_manifest, write_json
from .config import DataConfig, DistillConfig, TrainConfig, _check, config_hash, from_dict, load_recipe, to_dict
from .errors import ConfigError, NanoifyError

log = logging.getLogger(__name__)

STAGES = ("teacher", "student", "export", "quantized", "bench")


@dataclass(frozen=True)
class QuantizeConfig:
    """The quantize stage: target, total budget against the teacher (points), calibration."""

    target: str = "cpu"
    budget: float = 1.0
    min_budget: float = 0.5
    methods: tuple[str, ...] = ("entropy", "percentile")
    calib_samples: int = 256

    def __post_init__(self) -> None:
        _check(self.target in ("cpu", "tensorrt"), f"--target must be cpu or tensorrt, got {self.target!r}")
        _check(self.budget >= 0 and self.min_budget >= 0, "--budget must be ≥ 0 points")
        object.__setattr__(self, "methods", tuple(self.methods))


@dataclass(frozen=True)
class BenchConfig:
    """The bench stage: how many rows to time, concurrent streams, process isolation."""

    latency_rows: int = 200
    throughput_rows: int = 512
    streams: int = 0
    isolate: bool = True
    repeats: int = 1


@dataclass(frozen=True)
class CompressConfig:
    """The whole chain. ``teacher`` is a fine-tuned classifier folder, or (with ``finetune_teacher``) a
    pretrained encoder (path, hub name or ``minilm``) that is fine-tuned on ``data`` first."""

    teacher: str = ""
    finetune_teacher: bool = False
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: DataConfig = field(default_factory=DataConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self) -> None:
        _check(bool(self.teacher), "compress needs a teacher: --teacher DIR (or teacher: in the recipe)")


def load_compress_recipe(path: str | Path, **overrides: Any) -> CompressConfig:
    """A CompressConfig from a YAML/JSON recipe; ``overrides`` (CLI flags, None = not given) win."""
    d = load_recipe(path)
    d.pop("out", None)
    for k in ("student", "init"):
        if k in d:  # convenience: student/init at the top level of a recipe
            d.setdefault("distill", {})[k] = d.pop(k)
    return apply_overrides(from_dict(CompressConfig, d), **overrides)


def apply_overrides(cfg: CompressConfig, teacher: str | None = None, data: str | None = None,
                    student: str | None = None, target: str | None = None, budget: float | None = None,
                    finetune_teacher: bool | None = None) -> CompressConfig:
    """Replace the given fields (None leaves the config's value)."""
    rep = dataclasses.replace
    if teacher is not None:
        cfg = rep(cfg, teacher=teacher)
    if finetune_teacher is not None:
        cfg = rep(cfg, finetune_teacher=finetune_teacher)
    if data is not None:
        cfg = rep(cfg, data=rep(cfg.data, data=data))
    if student is not None:
        cfg = rep(cfg, distill=rep(cfg.distill, student=student))
    if target is not None:
        cfg = rep(cfg, quantize=rep(cfg.quantize, target=target))
    if budget is not None:
        cfg = rep(cfg, quantize=rep(cfg.quantize, budget=budget))
    return cfg


class StageError(NanoifyError):
    """A pipeline stage failed; the completed stages are intact."""


def _teacher_identity(path: str) -> dict[str, Any]:
    """What identifies a given teacher folder: its config and a hash of its weights."""
    p = Path(path)
    if not p.is_dir():
        return {"name": path}
    ident: dict[str, Any] = {"path": str(p.resolve())}
    for f in sorted(p.glob("*.safetensors")) + [p / "config.json", p / "label_map.json"]:
        if f.is_file():
            ident[f.name] = file_sha256(f)
    return ident


def stage_plan(cfg: CompressConfig) -> dict[str, str]:
    """Stage → hash of its inputs (its own config and the hashes of the stages it depends on)."""
    data = to_dict(cfg.data)
    keys: dict[str, str] = {}
    if cfg.finetune_teacher:
        keys["teacher"] = config_hash({"model": cfg.teacher, "data": data, "train": to_dict(cfg.finetune)})
        teacher_key = keys["teacher"]
    else:
        teacher_key = config_hash(_teacher_identity(cfg.teacher))
    dist = {k: v for k, v in to_dict(cfg.distill).items() if k not in ("teacher", "data")}
    keys["student"] = config_hash({"teacher": teacher_key, "distill": dist, "data": data})
    keys["export"] = config_hash({"student": keys["student"], "opset": 17})
    keys["quantized"] = config_hash({"export": keys["export"], "teacher": teacher_key,
                                     "quantize": to_dict(cfg.quantize), "data": data})
    keys["bench"] = config_hash({"quantized": keys["quantized"], "teacher": teacher_key,
                                 "bench": to_dict(cfg.bench), "data": data})
    return keys


def compress(cfg: CompressConfig, out: str | Path, progress: bool = True,
             on_stage: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run the chain into ``out`` (see module docstring); returns the pipeline manifest.

    ``on_stage(stage, status)`` is called with status "start", "done" or "reused".
    """
    from .distill.run import distill, finetune
    from .export.onnx import export

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = stage_plan(cfg)
    old = read_manifest(out)
    if old and old.get("kind") != "compress":
        raise ConfigError(f"{out} holds a {old.get('kind')} output, not a compress run; pick another --out")
    done_before = {s: v.get("hash") for s, v in old.get("stages", {}).items() if v.get("status") in ("done", "reused")}
    man = manifest("compress", to_dict(cfg), stages={}, plan=keys)
    stale = False  # once a stage reruns, every later stage reruns too
    notify = on_stage or (lambda s, st: None)
    teacher_dir = str(out / "teacher") if cfg.finetune_teacher else cfg.teacher
    state: dict[str, Any] = {}

    def run(stage: str, fn: Callable[[Path], Any]) -> None:
        nonlocal stale
        folder = out / stage
        reuse = not stale and done_before.get(stage) == keys[stage] and (folder / MANIFEST).is_file()
        if reuse:
            man["stages"][stage] = {"hash": keys[stage], "status": "reused", "seconds": 0.0}
            notify(stage, "reused")
            write_json(out / MANIFEST, man)
            return
        stale = True
        notify(stage, "start")
        t0 = time.time()
        try:
            fn(folder)
        except NanoifyError as e:
            man["stages"][stage] = {"hash": keys[stage], "status": "failed", "error": str(e),
                                    "seconds": time.time() - t0}
            write_json(out / MANIFEST, man)
            done = [s for s, v in man["stages"].items() if v["status"] in ("done", "reused")]
            raise StageError(f"stage {stage} failed: {e} (completed stages kept: {', '.join(done) or 'none'}; "
                             "fix it and rerun the same command to resume)") from None
        man["stages"][stage] = {"hash": keys[stage], "status": "done", "seconds": time.time() - t0}
        write_json(out / MANIFEST, man)
        notify(stage, "done")

    def resumable(fn: Callable[..., Any], c: Any, f: Path) -> Any:
        """Continue a killed training stage from its checkpoint; one made with other settings is ignored."""
        return fn(c, f, resume="auto", progress=progress)

    if cfg.finetune_teacher:
        from .config import FinetuneConfig

        run("teacher", lambda f: resumable(finetune, FinetuneConfig(model=cfg.teacher, data=cfg.data,
                                                                    train=cfg.finetune), f))
    dcfg = dataclasses.replace(cfg.distill, teacher=teacher_dir, data=cfg.data)
    run("student", lambda f: resumable(distill, dcfg, f))
    run("export", lambda f: export(f.parent / "student", f))

    def quantize_stage(f: Path) -> None:
        from .quant.run import quantize

        st = read_manifest(out / "student")
        val = st.get("metrics", {}).get("validation", {})
        t_acc, s_acc = val.get("teacher_accuracy"), val.get("accuracy")
        gap = (t_acc - s_acc) * 100 if t_acc is not None and s_acc is not None else 0.0
        allowance = max(cfg.quantize.budget - gap, cfg.quantize.min_budget)
        state["allowance"] = allowance
        quantize(out / "export", f, calib=cfg.data, eval_data=dataclasses.replace(cfg.data, max_train=None),
                 budget=allowance, target=cfg.quantize.target, methods=cfg.quantize.methods,
                 calib_samples=cfg.quantize.calib_samples, progress=progress)

    run("quantized", quantize_stage)

    def bench_stage(f: Path) -> None:
        from .bench.run import benchmark

        b = cfg.bench
        benchmark([teacher_dir, str(out / "quantized")], cfg.data, out=f, streams=b.streams,
                  latency_rows=b.latency_rows, throughput_rows=b.throughput_rows, isolate=b.isolate,
                  progress=progress, names=["teacher (PyTorch FP32)", "compressed (ONNX Runtime INT8)"],
                  repeats=b.repeats)

    run("bench", bench_stage)
    summary = _summary(cfg, out)
    man["summary"] = summary
    _write_report(out, summary)
    write_json(out / MANIFEST, man)
    return man


def _summary(cfg: CompressConfig, out: Path) -> dict[str, Any]:
    rep = json.loads((out / "bench" / "report.json").read_text())
    teacher, comp = rep["models"][0], rep["models"][-1]
    q = read_manifest(out / "quantized")
    st = read_manifest(out / "student")
    drop = (teacher["accuracy"] - comp["accuracy"]) * 100
    return {"teacher_accuracy": teacher["accuracy"], "compressed_accuracy": comp["accuracy"],
            "student_fp32_accuracy": st.get("metrics", {}).get("validation", {}).get("accuracy"),
            "drop_pts": drop, "budget_pts": cfg.quantize.budget, "budget_met": drop <= cfg.quantize.budget + 1e-9,
            "quantized_format": q.get("chosen"), "quantize_budget_pts": q.get("config", {}).get("budget_pts"),
            "latency_speedup_b1": teacher["latency_ms_p50"] / comp["latency_ms_p50"],
            "throughput_speedup_b32": comp["throughput_b32"] / teacher["throughput_b32"],
            "size_ratio": teacher["file_mb"] / comp["file_mb"],
            "memory_ratio": teacher["peak_rss_mb"] / comp["peak_rss_mb"]}


def _write_report(out: Path, s: dict[str, Any]) -> None:
    table = (out / "bench" / "report.md").read_text().rstrip()
    verdict = "met" if s["budget_met"] else "MISSED"
    head = [f"# nanoify compress — {out.name}", "",
            f"Teacher (PyTorch FP32) → compressed student ({s['quantized_format']}, ONNX Runtime): accuracy "
            f"{s['teacher_accuracy']:.4f} → {s['compressed_accuracy']:.4f} ({-s['drop_pts']:+.2f} pt; budget "
            f"{s['budget_pts']} pt: {verdict}); batch-1 latency {s['latency_speedup_b1']:.1f}× faster, batch-32 "
            f"throughput {s['throughput_speedup_b32']:.1f}×, file {s['size_ratio']:.1f}× smaller, peak memory "
            f"{s['memory_ratio']:.1f}× lower.", ""]
    (out / "report.md").write_text("\n".join(head) + "\n" + table + "\n")
    shutil.copyfile(out / "bench" / "report.json", out / "report.json")
    shutil.copyfile(out / "bench" / "report.png", out / "report.png")
