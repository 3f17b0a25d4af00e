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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts import MANIFEST
from ..bench.latency import measure_speed
from ..config import QuantizeConfig
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
from ..tasks import check_budget, evaluate_predictions, make_task
from ..tasks.resolve import resolve
from .steps import TIMING_SHARE, Candidate, Reference, Search, fit_timing

log = logging.getLogger(__name__)


def _classifier_folder(model: str | Path) -> Path:
    p = Path(model)
    if (p / "hf" / "config.json").is_file():  # an export folder keeps its source in hf/
        return p / "hf"
    if (p / "config.json").is_file():
        return p
    raise ModelError(f"--target cuda quantizes Hugging Face classifiers (a folder with config.json, or an export "
                     f"folder with hf/); {p} is neither — for CNNs and detectors use --target tensorrt")


@dataclass
class CudaSource:
    """What ``--target cuda`` quantizes: the model's reference and task, the path the torch engine opens (a
    classifier folder, a torch-module folder or an ONNX file), and whether its formats are quantized linear
    layers (transformers) or precisions (CNNs, detectors)."""

    ref: Any
    task: Any
    path: Path
    linear: bool


def check_device(device: str) -> None:
    """One line when the GPU asked for is not there."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--target cuda needs a CUDA GPU and a CUDA build of torch (torch.cuda.is_available() is "
                          "False here); use --target cpu, or --target tensorrt for a hand-off graph")


def prepare(model: str | Path) -> CudaSource:
    """The source: an image or detection model's module folder / ONNX file, else a Hugging Face classifier."""
    image = _image_source(model)
    if image is not None:
        ref = resolve(model)
        if ref.kind.gpu_formats != "precision":
            raise ModelError(f"{model} is a {ref.task} model; --target cuda takes its Hugging Face folder")
        return CudaSource(ref, make_task(ref), image, linear=False)
    folder = _classifier_folder(model)
    ref = resolve(folder)
    if ref.kind.gpu_formats != "linear":
        raise ModelError(f"--target cuda covers text classifiers, torch-module folders and ONNX files; {model} is a "
                         f"{ref.task} model of another kind: use --target tensorrt")
    return CudaSource(ref, make_task(ref), folder, linear=True)


def search(src: CudaSource, calib_set: Any, ev: Any, cfg: QuantizeConfig, work: Path,
           formats: tuple[str, ...] | None = None) -> Search:
    """Every GPU format of the source, scored and timed against FP32 eager on the same device."""
    device = cfg.device
    on_gpu = device.startswith("cuda")
    if src.linear:
        wanted = formats or tuple(f for f in FORMATS if f != "fp8" or fp8_supported(device))
        skipped = [] if formats else [f for f in FORMATS if f not in wanted]
        paths = {"fp16": src.path, **_linear_candidates(src, calib_set, wanted, work)}
        fast = {"device": device, "dtype": "fp16" if on_gpu else "fp32", "graphs": on_gpu}
        cands = {name: (str(p), fast, _files_mb(p)) for name, p in paths.items()}
        batch = cfg.timing.batch
    else:
        wanted = tuple(f for f in PRECISIONS if f != "bf16" or not on_gpu or torch.cuda.is_bf16_supported())
        skipped = [f for f in PRECISIONS if f not in wanted]
        paths = dict.fromkeys(wanted, src.path)
        cands = {f: (str(src.path), {"device": device, "dtype": f, "graphs": on_gpu}, _files_mb(src.path))
                 for f in wanted}
        batch = src.task.batch_for(cfg.timing.batch)
    ref, records = _measure(src.task, ev, cfg, (str(src.path), {"device": device, "dtype": "fp32"},
                                                _files_mb(src.path)), cands, batch)
    extras = {"engine": "torch",  # the folder runs in the torch engine (resolve reads this)
              "device": device, "skipped_formats": skipped,
              "speed_note": None if on_gpu else "not a GPU: timings are of the CPU kernels and say nothing about "
                                                "GPU speed"}
    return Search(Reference(src.path, None, ref, src.task.primary_metric(ev)),
                  [Candidate(r["name"], None, Path(paths[r["name"]]), r) for r in records],
                  "PyTorch FP32 (eager)", extras)


def _linear_candidates(src: CudaSource, calib_set: Any, wanted: tuple[str, ...], work: Path) -> dict[str, Path]:
    """Each quantized-linear format of the classifier saved as a loadable folder under ``work``."""
    model_fp32, tok, lm = load_classifier(str(src.path))
    names = quantizable_linears(model_fp32)
    batches = [{k: torch.from_numpy(v) for k, v in f.items()} for f in src.task.feeds(calib_set, 16)]
    scales = calibrate_input_scales(model_fp32, names, batches) if "int8-static" in wanted else None
    paths = {}
    for fmt in wanted:
        m = copy.deepcopy(model_fp32)
        quantize_model(m, fmt, names, scales)
        calib_info = {"rows": len(calib_set), "method": "max"} if fmt == "int8-static" else None
        save_quantized(m, tok, lm.names, work / fmt, fmt, names, {"calibration": calib_info})
        paths[fmt] = work / fmt
        del m
    return paths


def write_chosen(tmp: Path, chosen: Candidate, src: CudaSource, on_gpu: bool) -> dict[str, Any]:
    """The chosen format as the torch engine loads it: a classifier's (quantized) folder; a module folder or ONNX
    file as it came, with what travels with it, and ``quantization.json`` naming the precision."""
    assert chosen.path is not None
    if src.linear:
        for f in chosen.path.iterdir():
            if f.is_file() and f.name != MANIFEST:
                shutil.copy(f, tmp / f.name)
        return {}
    if src.path.is_dir():  # the module folder as it is, and what its parent holds for it (preprocessing, labels)
        for f in src.path.iterdir():
            if f.is_file() and f.name != MANIFEST:
                shutil.copy(f, tmp / f.name)
    else:
        shutil.copy(src.path, tmp / "model.onnx")
    for name in SIDECARS:
        found = next((d / name for d in (src.path if src.path.is_dir() else src.path.parent, src.path.parent)
                      if (d / name).is_file()), None)
        if found is not None and not (tmp / name).exists():
            shutil.copy(found, tmp / name)
    (tmp / QUANT_FILE).write_text(json.dumps(
        {"kind": "precision", "format": chosen.name, "target": "cuda", "measured_with_graphs": on_gpu},
        indent=2) + "\n")
    return {}


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
        t0 = time.perf_counter()
        ref_preds = task.predict(ref_eng.infer, ev)
        row_seconds = (time.perf_counter() - t0) / max(len(ev), 1)
        ref = {**task.reference_metrics(ref_preds, ev), "file_mb": reference[2]}
        for name, eng in engines.items():
            preds = task.predict(eng.infer, ev)
            m = {"name": name, **evaluate_predictions(task, preds, ev, ref_preds), "file_mb": candidates[name][2]}
            chk = check_budget(ref, m, cfg.budget, metric, cfg.agreement_budget, task.agreement_key)
            m.update(metric=metric, drop_pts=chk.drop_pts, meets_budget=chk.met)
            records.append(m)
        # the timing's share of --search-seconds, as on the ONNX targets (on a GPU it fits at once; on the CPU
        # kernels of --device cpu, five formats at the default rows took minutes)
        t = fit_timing(cfg.timing, len(engines) + 1, row_seconds, TIMING_SHARE * cfg.search_seconds, batch)
        ref_speed, *speeds = measure_speed([ref_eng.infer, *(e.infer for e in engines.values())],
                                           task.feeds(ev, 1, t.latency_rows), task.feeds(ev, batch, t.throughput_rows),
                                           t.rounds, batch)
    ref.update(ref_speed)
    for r, sp in zip(records, speeds, strict=True):
        r.update(sp)
    return ref, records


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


def _files_mb(src: Path) -> float:
    """Weights in MB: a file, or a folder's safetensors and ONNX files."""
    files = [src] if src.is_file() else [f for f in src.iterdir() if f.suffix in (".safetensors", ".onnx")]
    return sum(f.stat().st_size for f in files) / 1e6
