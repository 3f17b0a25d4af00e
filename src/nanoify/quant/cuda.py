"""``nanoify quantize --target cuda``: GPU formats for transformer classifiers, chosen by measurement on the GPU.

Candidates (models/quantized.py): FP16 without quantization, INT8 dynamic (``_int_mm``), INT8 static (activation scales
calibrated on the calibration rows), FP8 e4m3 (``_scaled_mm``; compute capability ≥ 8.9 only) and INT8
weight-only. Every candidate runs in the torch engine on the GPU — FP16 for what stays float, CUDA graphs per
batch and sequence bucket — against the FP32 model on the same GPU: the task's primary metric and agreement
on the evaluation rows, batch-1 latency and batch-32 throughput timed in interleaved rounds (the routine
``quantize --target cpu`` and ``bench`` use), and :func:`nanoify.quant.choose.choose` picks within the budget.

The folder written is loadable by the torch engine (``nanoify bench OUT --engine torch:cuda:fp16:graphs``):
config, tokenizer, label map, ``model.safetensors`` with the quantized tensors, ``quantization.json``, and
the manifest with every candidate's measurements.

CNNs and detectors (torch-module folders, export folders, ONNX files): PyTorch has no INT8 or FP8 convolution
outside TensorRT, so their GPU candidates are precisions — FP16 and BF16 (where the GPU has it), each with CUDA
graphs per input shape, against FP32 eager on the same GPU, chosen the same way. The folder written is the model
as it came (a torch-module folder, or the ONNX file with its preprocess/label/detection files, run by the torch
engine's ONNX interpreter) plus ``quantization.json`` naming the precision, which the torch engine then uses by
default. For INT8 convolutions, ``--target tensorrt`` writes the Q/DQ graph.

``device``: the GPU (``cuda``, ``cuda:N``); ``cpu`` (``--device cpu``) scores every format on the CPU kernels of
the same ops — accuracy and agreement hold, speed numbers mean nothing there and the manifest says so (how the
tests run the whole path, ``compress`` included).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..artifacts import MANIFEST, atomic_dir, manifest, write_json
from ..bench.latency import measure_speed
from ..config import QuantizeConfig, to_dict
from ..engines.torch_engine import TorchEngine
from ..errors import ConfigError, ModelError
from ..models.load import load_classifier
from ..models.quantized import (
    FORMATS,
    QUANT_FILE,
    calibrate_input_scales,
    fp8_supported,
    quantizable_linears,
    quantize_model,
    save_quantized,
)
from ..tasks import check_budget, evaluate_predictions, make_task, task_kind
from ..tasks.resolve import resolve
from .choose import choose

log = logging.getLogger(__name__)


def _classifier_folder(model: str | Path) -> Path:
    p = Path(model)
    if (p / "hf" / "config.json").is_file():  # an export folder keeps its source in hf/
        return p / "hf"
    if (p / "config.json").is_file():
        return p
    raise ModelError(f"--target cuda quantizes Hugging Face classifiers (a folder with config.json, or an export "
                     f"folder with hf/); {p} is neither — for CNNs and detectors use --target tensorrt")


def quantize_cuda(model: str | Path, out: str | Path, calib: Any = None, eval_data: Any = None,
                  config: QuantizeConfig | None = None, device: str = "cuda", formats: tuple[str, ...] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Measure the GPU formats and write the chosen one (see module docstring); returns the manifest."""

    cfg = config or QuantizeConfig(target="cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--target cuda needs a CUDA GPU and a CUDA build of torch (torch.cuda.is_available() is "
                          "False here); use --target cpu, or --target tensorrt for a hand-off graph")
    if _image_source(model) is not None:
        return _quantize_precision(model, out, calib, eval_data, cfg, device, progress)
    folder = _classifier_folder(model)
    ref_obj = resolve(folder)
    task = make_task(ref_obj)
    if task_kind(ref_obj.task).gpu_formats != "linear":
        raise ModelError(f"--target cuda covers text classifiers, torch-module folders and ONNX files; {model} is a "
                         f"{task.name} model of another kind: use --target tensorrt")
    calib_set = task.calib_set(calib, cfg.calib_samples)
    ev = task.eval_set(eval_data if eval_data is not None else calib, None, cfg.eval_rows)
    on_gpu = device.startswith("cuda")
    wanted = formats or tuple(f for f in FORMATS if f != "fp8" or fp8_supported(device))
    skipped = [] if formats else [f for f in FORMATS if f not in wanted]
    t_start = time.time()
    out = Path(out)
    with atomic_dir(out) as tmp:
        model_fp32, tok, lm = load_classifier(str(folder))
        names = quantizable_linears(model_fp32)
        batches = [{k: torch.from_numpy(v) for k, v in f.items()} for f in task.feeds(calib_set, 16)]
        scales = calibrate_input_scales(model_fp32, names, batches) if "int8-static" in wanted else None
        paths = {"fp16": folder}
        for fmt in wanted:
            m = copy.deepcopy(model_fp32)
            quantize_model(m, fmt, names, scales)
            calib_info = {"rows": len(calib_set), "method": "max"} if fmt == "int8-static" else None
            save_quantized(m, tok, lm.names, tmp / "candidates" / fmt, fmt, names, {"calibration": calib_info})
            paths[fmt] = tmp / "candidates" / fmt
            del m
        del model_fp32
        fast = {"device": device, "dtype": "fp16" if on_gpu else "fp32", "graphs": on_gpu}
        ref, records = _measure(task, ev, cfg, (str(folder), {"device": device, "dtype": "fp32"}, _files_mb(folder)),
                                {name: (str(p), fast, _files_mb(p)) for name, p in paths.items()}, cfg.timing.batch)
        best, why = choose(records, ref, cfg.optimize, task.primary_metric(ev), agree_key=task.agreement_key)
        chosen = records[best]
        final = paths[chosen["name"]]
        for f in Path(final).iterdir():
            if f.is_file() and f.name != MANIFEST:
                shutil.copy(f, tmp / f.name)
        shutil.rmtree(tmp / "candidates", ignore_errors=True)
        man = _manifest(cfg, model, device, task.name, ref, records, chosen["name"], why, skipped, t_start)
        write_json(tmp / MANIFEST, man)
    return man


def _measure(task: Any, ev: Any, cfg: QuantizeConfig, reference: tuple[str, dict[str, Any], float],
             candidates: dict[str, tuple[str, dict[str, Any], float]], batch: int
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every candidate (path, engine options, file MB) against the FP32 eager reference on the evaluation
    rows — the task's metric, agreement, the budget check — then time them all in interleaved rounds (the
    routine ``quantize --target cpu`` and ``bench`` use). Each engine is opened once (on a GPU: loaded and its
    graphs captured once)."""

    metric = task.primary_metric(ev)
    records = []
    with contextlib.ExitStack() as stack:
        ref_eng = stack.enter_context(TorchEngine(reference[0], **reference[1]))
        engines = {name: stack.enter_context(TorchEngine(path, **opts)) for name, (path, opts, _) in
                   candidates.items()}
        ref_preds = task.predict(ref_eng.infer, ev)
        ref = {**task.reference_metrics(ref_preds, ev), "file_mb": reference[2]}
        for name, eng in engines.items():
            preds = task.predict(eng.infer, ev)
            m = {"name": name, **evaluate_predictions(task, preds, ev, ref_preds), "file_mb": candidates[name][2]}
            chk = check_budget(ref, m, cfg.budget, metric, cfg.agreement_budget, task.agreement_key)
            m.update(metric=metric, drop_pts=chk.drop_pts, meets_budget=chk.met)
            records.append(m)
        t = cfg.timing
        ref_speed, *speeds = measure_speed([ref_eng.infer, *(e.infer for e in engines.values())],
                                           task.feeds(ev, 1, t.latency_rows), task.feeds(ev, batch, t.throughput_rows),
                                           t.rounds, batch)
    ref.update(ref_speed)
    for r, sp in zip(records, speeds, strict=True):
        r.update(sp)
    return ref, records


def _manifest(cfg: QuantizeConfig, model: str | Path, device: str, task: str, ref: dict[str, Any],
              records: list[dict[str, Any]], chosen: str, why: str, skipped: list[str], t_start: float
              ) -> dict[str, Any]:
    return manifest("quantize", to_dict(cfg) | {"model": str(model), "target": "cuda", "device": device},
                    engine="torch",  # the folder runs in the torch engine (resolve reads this)
                    chosen=chosen, why=why, reference={"name": "PyTorch FP32 (eager)", **ref}, candidates=records,
                    skipped_formats=skipped, task=task, seconds=round(time.time() - t_start, 1),
                    speed_note=None if device.startswith("cuda") else "not a GPU: timings are of the CPU kernels "
                                                                      "and say nothing about GPU speed")


SIDECARS = ("preprocess.json", "label_map.json", "detection.json")
PRECISIONS = ("fp16", "bf16")


def _image_source(model: str | Path) -> Path | None:
    """What the torch engine opens for an image or detection model: its torch-module folder (an export folder's
    ``torch/``, preferred: native PyTorch), else its ONNX file; None for anything else (text classifiers)."""
    p = Path(model)
    if p.is_file() and p.suffix.lower() == ".onnx":
        return p
    if not p.is_dir() or (p / "config.json").is_file() or (p / "hf").is_dir():
        return None
    for cand in (p / "module.json", p / "torch" / "module.json"):
        if cand.is_file():
            return cand.parent
    onnx_files = sorted(p.glob("*.onnx"))
    return onnx_files[0] if len(onnx_files) == 1 else None


def _quantize_precision(model: str | Path, out: str | Path, calib: Any, eval_data: Any, cfg: QuantizeConfig,
                        device: str, progress: bool) -> dict[str, Any]:
    """``--target cuda`` for CNNs and detectors: FP16 / BF16 with CUDA graphs against FP32 eager (module
    docstring)."""


    src = _image_source(model)
    assert src is not None
    ref_obj = resolve(model)
    task = make_task(ref_obj)
    if task_kind(ref_obj.task).gpu_formats != "precision":
        raise ModelError(f"{model} is a {task.name} model; --target cuda takes its Hugging Face folder")
    ev = task.eval_set(eval_data if eval_data is not None else calib, None, cfg.eval_rows)
    on_gpu = device.startswith("cuda")
    wanted = [f for f in PRECISIONS if f != "bf16" or not on_gpu or torch.cuda.is_bf16_supported()]
    skipped = [f for f in PRECISIONS if f not in wanted]
    metric = task.primary_metric(ev)
    t_start = time.time()
    size = _files_mb(src)
    ref, records = _measure(task, ev, cfg, (str(src), {"device": device, "dtype": "fp32"}, size),
                            {f: (str(src), {"device": device, "dtype": f, "graphs": on_gpu}, size) for f in wanted},
                            task.batch_for(cfg.timing.batch))
    best, why = choose(records, ref, cfg.optimize, metric, agree_key=task.agreement_key)
    chosen = records[best]
    with atomic_dir(Path(out)) as tmp:
        if src.is_dir():  # the module folder as it is, and what its parent holds for it (preprocessing, labels)
            for f in src.iterdir():
                if f.is_file() and f.name != MANIFEST:
                    shutil.copy(f, tmp / f.name)
        else:
            shutil.copy(src, tmp / "model.onnx")
        for name in SIDECARS:
            found = next((d / name for d in (src if src.is_dir() else src.parent, src.parent)
                          if (d / name).is_file()), None)
            if found is not None and not (tmp / name).exists():
                shutil.copy(found, tmp / name)
        (tmp / QUANT_FILE).write_text(json.dumps(
            {"kind": "precision", "format": chosen["name"], "target": "cuda", "measured_with_graphs": on_gpu},
            indent=2) + "\n")
        man = _manifest(cfg, model, device, task.name, ref, records, chosen["name"], why, skipped, t_start)
        write_json(tmp / MANIFEST, man)
    return man


def _files_mb(src: Path) -> float:
    """Weights in MB: a file, or a folder's safetensors and ONNX files."""
    files = [src] if src.is_file() else [f for f in src.iterdir() if f.suffix in (".safetensors", ".onnx")]
    return sum(f.stat().st_size for f in files) / 1e6
