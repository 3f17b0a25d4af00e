"""Quantization targets: one object per place a quantized model will run, knowing everything that varies with
it — the candidate schemes worth measuring, the engine that evaluates (and, where it can, times) them, whether
timing decides the choice, the INT8 form its kernels take (a free zero point or signed symmetric), and the files
written beside the chosen model. ``quantize`` is one path over them (prepare → calibrate → candidates → evaluate
→ choose → write, :mod:`nanoify.quant.run`); a new target is one subclass and ``register_target`` (see
``tests/e2e/test_seams.py``).

- ``cpu``: ONNX Runtime on this machine; dynamic and static INT8 measured and timed here; the chosen graph is
  then also measured in OpenVINO when installed, which deploys it when faster (:mod:`nanoify.quant.engine_choice`).
- ``tensorrt``: the explicit Q/DQ graph TensorRT wants, its calibration cache and a ``trtexec`` line; accuracy
  estimated by running the Q/DQ graph in ONNX Runtime, speed not measured (no TensorRT here).
- ``openvino``: OpenVINO's CPU plugin on this machine; nanoify's Q/DQ graphs (its ranges, per-channel weights)
  evaluated and timed by OpenVINO itself, the chosen one written as Q/DQ ONNX and as OpenVINO IR.
- ``cuda``: PyTorch formats on a GPU (quantized linear layers, FP16/BF16); its candidates are torch modules, not
  ONNX graphs, so it brings its own prepare, search and write (:mod:`nanoify.quant.cuda`) to the same path.

The ONNX targets share :mod:`nanoify.quant.steps` (the defaults below); a target whose candidates are something
else overrides :meth:`Target.prepare`, :meth:`Target.search` and :meth:`Target.write_chosen`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import QuantizeConfig
from ..engines import open_engine
from ..engines.base import Engine, profile_shapes
from ..errors import ConfigError, ModelError
from ..models.files import QUANT_FILE, onnx_io
from ..tasks import task_kind
from . import cuda, steps
from .engine_choice import choose_engine
from .schemes import DynamicInt8, Float, StaticQDQ, apply_plan, precision_of
from .tensorrt import trt_version, trtexec_command, version_tag, write_calibration_cache

OUT_MODEL = "model.int8.onnx"  # --target cpu
QDQ_MODEL = "model.qdq.onnx"  # --target tensorrt and openvino (beside it: model.xml + model.bin)
OV_IR = "model.xml"
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
log = logging.getLogger(__name__)


class Target:
    """Defaults for a target; subclasses override what differs (see module docstring)."""

    name = ""
    model_file = OUT_MODEL
    timed = True  # candidates are timed on this machine and speed decides within the budget
    free_zero_point = True  # u8 activations with a zero point: unsigned and asymmetric ranges are valid
    speed_fallback = True  # profile the chosen static plan per node and keep slow INT8 kernels float
    uses_device = False  # the quantize device setting changes what it does (it is hashed into compress stages)
    engine_name = "ONNX Runtime"  # what evaluates (and times) the candidates, for the report

    def weight_bits(self, cpu: dict[str, Any]) -> int:
        """Static INT8 weight width (7 where the CPU's u8×s8 kernel saturates)."""
        return 8

    def candidates(self, methods: Sequence[str], cnn: bool, weight_bits: int, fused: bool) -> list[Any]:
        """The schemes worth measuring for a graph (``cnn``: it has convolutions; ``fused``: a transformer-fused
        graph exists beside the plain one)."""
        raise NotImplementedError

    def engine(self, path: Path, threads: int | None, precision: str = "fp32") -> Engine:
        """The engine a candidate (and the FP32 reference) is evaluated — and, when ``timed``, timed — in;
        ``precision``: what a float candidate (:class:`~nanoify.quant.schemes.Float`) runs in."""
        if precision != "fp32":
            raise ConfigError(f"target {self.name} runs float graphs in fp32 only, not {precision}")
        return open_engine("onnxruntime", str(path), threads=threads)

    def write(self, folder: Path, chosen: Any, ranges: dict[str, Any], src: Any, ev: Any) -> dict[str, Any]:
        """Files beside the chosen model in ``folder``; returns what the manifest adds about them (``warnings``
        join the manifest's, ``model_file`` replaces the target's)."""
        return {}

    def write_candidate(self, c: steps.Candidate, src: Any, work: Path, ranges: Any) -> Path:
        """Write candidate ``c``'s model into ``work``; returns its path (the file that is evaluated, timed and, when
        chosen, written). Default: the plan applied to the source graph, an ONNX file."""
        path = work / f"{c.name}.onnx"
        apply_plan(c.plan, src.sources, path, ranges)
        return path

    def own_candidates(self, src: Any, calib_set: Any, cfg: QuantizeConfig, work: Path, keep_float: list[str],
                       progress: bool,
                       clock: steps.Clock | None = None) -> tuple[list[steps.Candidate], dict[str, Any]]:
        """Candidates in a format of the target's own (written to ``work``, ``plan`` None), measured and timed
        beside the others; ``keep_float``: the nodes nanoify's rules and sensitivity search keep float. Also
        returns what the manifest says about them."""
        return [], {}

    # -- the path (quant/run.py): ONNX graphs through quant/steps.py unless a target overrides these ------------
    def check(self, cfg: QuantizeConfig) -> None:
        """One line, before any work, when this target cannot run here with ``cfg``."""

    def prepare(self, model: str | Path, tmp: Path, task: str | None, preprocess: str | Path | None,
                decoder: str | None) -> Any:
        """The source the search works on (its ``ref`` and ``task`` are read by the path)."""
        return steps.prepare(model, tmp, self, task, preprocess, decoder)

    def search(self, src: Any, calib_set: Any, ev: Any, cfg: QuantizeConfig, methods: Sequence[str], work: Path,
               progress: bool) -> steps.Search:
        """The reference and every candidate, measured (and timed when ``timed``); scratch files go in ``work``."""
        return steps.search(src, calib_set, ev, cfg, methods, work, progress)

    def write_chosen(self, folder: Path, chosen: steps.Candidate, found: steps.Search, src: Any,
                     ev: Any) -> dict[str, Any]:
        """The chosen model and what travels with it, in ``folder``; returns what the manifest adds."""
        return steps.write_chosen(folder, chosen, found, src, ev)

    def choose_engine(self, folder: Path, src: Any, ev: Any, found: steps.Search,
                      cfg: QuantizeConfig) -> dict[str, Any]:
        """After the chosen model is written to ``folder``: which engine deploys it, when the target has a choice
        (what the manifest adds)."""
        return {}

    def bench_engines(self, device: str, task: str) -> tuple[tuple[str, str], str] | None:
        """``compress``'s bench engines for (baseline, compressed) and the compressed side's name, when this
        target's output is not run by bench's defaults."""
        return None


class CpuTarget(Target):
    """ONNX Runtime's CPU provider on this machine (see :mod:`nanoify.quant.run`)."""

    name = "cpu"

    def weight_bits(self, cpu: dict[str, Any]) -> int:
        return int(cpu["static_weight_bits"])

    def check(self, cfg: QuantizeConfig) -> None:
        if cfg.cpu_engine == "openvino" and importlib.util.find_spec("openvino") is None:
            raise ConfigError("--cpu-engine openvino needs OpenVINO: pip install openvino (or nanoify[openvino]), "
                              "or use --cpu-engine auto")

    def choose_engine(self, folder: Path, src: Any, ev: Any, found: steps.Search,
                      cfg: QuantizeConfig) -> dict[str, Any]:
        return choose_engine(folder, self.model_file, src, ev, found.ref, cfg)

    def candidates(self, methods: Sequence[str], cnn: bool, weight_bits: int, fused: bool) -> list[Any]:
        out: list[Any] = []
        if not cnn:  # dynamic INT8 of convolutions runs at 0.1-0.6x FP32 (ANCHORS.md); of GEMMs it is the best
            for graph in ("fused", "plain") if fused else ("fused",):
                out += [DynamicInt8(True, False, graph), DynamicInt8(True, True, graph),
                        DynamicInt8(False, False, graph)]
        scopes = ("weights", "all") if cnn else ("weights",)
        # the FP32 graph ONNX Runtime runs best, as a row: what the chooser returns when no INT8 one is faster
        return out + [StaticQDQ(m, "cpu", s, weight_bits) for s in scopes for m in methods] + [
            Float("fp32", "fused")]


class TensorRTTarget(Target):
    """The explicit Q/DQ hand-off to TensorRT (signed symmetric INT8, per-channel weights). Unverified here:
    TensorRT is not installed on the project's machines."""

    name = "tensorrt"
    model_file = QDQ_MODEL
    timed = False
    free_zero_point = False
    speed_fallback = False

    def candidates(self, methods: Sequence[str], cnn: bool, weight_bits: int, fused: bool) -> list[Any]:
        scopes = ("weights", "all") if cnn else ("weights",)
        return [StaticQDQ(m, "tensorrt", s, 8) for s in scopes for m in methods]

    def write(self, folder: Path, chosen: Any, ranges: dict[str, Any], src: Any, ev: Any) -> dict[str, Any]:
        method = getattr(chosen.plan.scheme, "method", next(iter(ranges)))
        write_calibration_cache(folder / "calibration.cache", {k: r.amax for k, r in ranges[method].items()})
        spec = onnx_io(folder / QDQ_MODEL)[0]
        axes = src.ref.kind.profile_axes(src.ref, ev)
        cmd = trtexec_command(QDQ_MODEL, "model.plan", profile_shapes(spec, axes),
                              fp16_layers=chosen.plan.float_nodes)
        (folder / "trtexec.sh").write_text("#!/bin/sh\n# Build the TensorRT engine (INT8 from the Q/DQ graph, FP16 "
                                           "elsewhere). Unverified here: no TensorRT on this machine.\n"
                                           "cd \"$(dirname \"$0\")\"\n" + cmd + "\n")
        os.chmod(folder / "trtexec.sh", 0o755)
        return {"tensorrt": {"cache": "calibration.cache", "cache_header": f"TRT-{version_tag(trt_version())}-"
                             "EntropyCalibration2", "qdq_model": QDQ_MODEL, "trtexec": cmd,
                             "fp16_layers": chosen.plan.float_nodes, "verified": False}}


class OpenVinoTarget(Target):
    """OpenVINO's CPU plugin: the Q/DQ graphs it reads as INT8 (u8 activations with a zero point, s8 per-channel
    weights of the width the saturation probe picks — OpenVINO's kernels use the same u8×s8 instruction, and on
    an AVX2 CPU without VNNI 8-bit weights changed 855 of 10,000 ResNet-20 predictions against 221 at 7 bits in
    ONNX Runtime, RESULTS.md), measured and timed in OpenVINO, plus float rows; the chosen graph is also saved as
    IR, and the manifest says which layers OpenVINO ran in INT8."""

    name = "openvino"
    model_file = QDQ_MODEL  # or model.xml when NNCF's IR is chosen (there is no Q/DQ ONNX then)
    speed_fallback = False  # the per-node profile is ONNX Runtime's; OpenVINO's own timing decides instead
    engine_name = "OpenVINO"

    def weight_bits(self, cpu: dict[str, Any]) -> int:
        return int(cpu["static_weight_bits"])

    def check(self, cfg: QuantizeConfig) -> None:
        try:
            import openvino  # noqa: F401 - optional backend: only its presence is checked here
        except ImportError:
            raise ConfigError("--target openvino needs OpenVINO: pip install openvino (or nanoify[openvino]), or "
                              "use --target cpu") from None

    def candidates(self, methods: Sequence[str], cnn: bool, weight_bits: int, fused: bool) -> list[Any]:
        from ..engines.openvino_engine import cpu_capabilities  # optional backend: imported when chosen

        scopes = ("weights", "all") if cnn else ("weights",)
        floats = [Float("fp32")] + ([Float("bf16")] if "BF16" in cpu_capabilities() else [])
        return [StaticQDQ(m, "cpu", s, weight_bits) for s in scopes for m in methods] + floats

    def engine(self, path: Path, threads: int | None, precision: str = "fp32") -> Engine:
        return open_engine("openvino", str(path), threads=threads, dtype=precision)

    def write_candidate(self, c: steps.Candidate, src: Any, work: Path, ranges: Any) -> Path:
        """The BF16 row is an IR with FP16-stored weights (OpenVINO's own way to save a float model: half the file;
        the CPU plugin computes in BF16 either way), measured as written; every other candidate is ONNX."""
        path = super().write_candidate(c, src, work, ranges)
        if not (c.plan is not None and isinstance(c.plan.scheme, Float) and c.plan.scheme.precision == "bf16"):
            return path
        from ..engines.openvino_engine import write_ir  # optional backend: imported when this target runs

        ir = write_ir(path, work / c.name / OV_IR, fp16_weights=True)
        path.unlink()
        return ir

    def own_candidates(self, src: Any, calib_set: Any, cfg: QuantizeConfig, work: Path, keep_float: list[str],
                       progress: bool,
                       clock: steps.Clock | None = None) -> tuple[list[steps.Candidate], dict[str, Any]]:
        """NNCF's INT8 (:mod:`nanoify.quant.nncf_int8`) on nanoify's calibration rows: default and MIXED presets,
        and the default with nanoify's float nodes as NNCF's ignored scope; none when nncf is not installed."""
        try:
            from . import nncf_int8  # optional: the peer's quantizer, measured when installed
        except ImportError:
            return [], {"skipped": "nncf is not installed (pip install nncf): no NNCF row"}
        feeds = [f for _, f in src.task.batches(calib_set, 1)]
        graph = src.graphs["plain"].graph
        transformer = not src.cnn and any(n.op_type == "Softmax" for n in graph.node)
        variants = [("nncf-default", "PERFORMANCE", ())]
        if keep_float:
            variants.append((f"nncf-default+ignored[{len(keep_float)}]", "PERFORMANCE", tuple(keep_float)))
        variants.append(("nncf-mixed", "MIXED", ()))
        out, failed, skipped = [], [], []
        cost = 0.0  # the last variant's cost: the next runs only when the search time has that much left
        for name, preset, ignored in variants:
            if out and clock is not None and clock.avail() < cost:
                skipped.append(name)
                continue
            dst = work / name / OV_IR
            t0 = time.time()
            try:
                made = nncf_int8.quantize_ir(src.plain, feeds, dst, preset, transformer, ignored, progress)
            except ModelError as e:
                log.warning("%s", e)
                failed.append(f"{name}: {e}")
                continue
            cost = 2 * (time.time() - t0)  # its quantization (a calibration pass) and about as long to evaluate
            out.append(steps.Candidate(name, None, dst, made=made, float_nodes=list(ignored)))
        return out, {"nncf_rows": [c.name for c in out], "nncf_failed": failed,
                     **({"skipped_for_time": skipped} if skipped else {})}

    def write_chosen(self, folder: Path, chosen: steps.Candidate, found: steps.Search, src: Any,
                     ev: Any) -> dict[str, Any]:
        assert chosen.path is not None
        if chosen.path.suffix != ".xml":  # nanoify's Q/DQ graph or the FP32 row: the ONNX steps, then write() below
            return steps.write_chosen(folder, chosen, found, src, ev)
        from ..engines.openvino_engine import compiled_info  # optional backend: imported when this target is chosen

        # an IR candidate (NNCF's INT8, the BF16 row): the model is the IR itself, as measured (no Q/DQ ONNX exists)
        shutil.copyfile(chosen.path, folder / OV_IR)
        shutil.copyfile(chosen.path.with_suffix(".bin"), folder / "model.bin")
        src.ref.kind.write_assets(src.ref, folder)
        precision = chosen.precision
        if precision != "fp32":  # the engine's default for this folder (bench runs it so)
            (folder / QUANT_FILE).write_text(json.dumps({"kind": "precision", "format": precision,
                                                         "target": "openvino"}, indent=2) + "\n")
        made = chosen.made or ({"made_by": "openvino.save_model", "weights": "fp16"} if chosen.plan is not None
                               else {})
        info = compiled_info(folder / OV_IR, precision)
        return {"model_file": OV_IR, "engine": "openvino",
                "openvino": {"ir": OV_IR, "qdq_model": None, "precision": precision, **made, **info}}

    def write(self, folder: Path, chosen: Any, ranges: dict[str, Any], src: Any, ev: Any) -> dict[str, Any]:
        from ..engines.openvino_engine import save_ir  # optional backend: imported when this target is chosen

        precision = precision_of(chosen.plan.scheme)  # fp32 here: a row run in BF16 is an IR (write_chosen)
        ops = {n.name: n.op_type for n in src.graphs["plain"].graph.node}
        float_nodes = set(chosen.plan.float_nodes)
        quantized = tuple(u for u in chosen.plan.units if u not in float_nodes and ops.get(u) in COMPUTE_OPS)
        info = save_ir(folder / QDQ_MODEL, folder / OV_IR, precision, quantized)
        warnings = [f"OpenVINO runs {len(info['kept_float'])} of the {len(quantized)} quantized compute node(s) in "
                    f"float, not INT8 (their Q/DQ pairs buy nothing there): {', '.join(info['kept_float'][:8])}"
                    + (" …" if len(info["kept_float"]) > 8 else "")] if info["kept_float"] else []
        return {"engine": "openvino", "warnings": warnings,
                "openvino": {"ir": OV_IR, "qdq_model": QDQ_MODEL, "precision": precision, **info}}


class CudaTarget(Target):
    """PyTorch formats on a GPU, measured by the torch engine (:mod:`nanoify.quant.cuda`); ``formats`` limits the
    quantized-linear formats tried (default: all the GPU supports)."""

    name = "cuda"
    model_file = ""  # the folder is the model (a classifier or module folder), or model.onnx for an ONNX source
    uses_device = True
    speed_fallback = False

    def __init__(self, formats: tuple[str, ...] | None = None) -> None:
        self.formats = formats

    def check(self, cfg: QuantizeConfig) -> None:
        cuda.check_device(cfg.device)

    def prepare(self, model: str | Path, tmp: Path, task: str | None, preprocess: str | Path | None,
                decoder: str | None) -> cuda.CudaSource:
        return cuda.prepare(model)

    def search(self, src: Any, calib_set: Any, ev: Any, cfg: QuantizeConfig, methods: Sequence[str], work: Path,
               progress: bool) -> steps.Search:
        return cuda.search(src, calib_set, ev, cfg, work, self.formats)

    def write_chosen(self, folder: Path, chosen: steps.Candidate, found: steps.Search, src: Any,
                     ev: Any) -> dict[str, Any]:
        return cuda.write_chosen(folder, chosen, src, on_gpu=str(found.extras["device"]).startswith("cuda"))

    def bench_engines(self, device: str, task: str) -> tuple[tuple[str, str], str] | None:
        dtype = task_kind(task).cuda_bench_dtype
        on_gpu = device.startswith("cuda")
        compressed = f"torch:{device}{f':{dtype}' if on_gpu and dtype else ''}{':graphs' if on_gpu else ''}"
        return (f"torch:{device}:fp32", compressed), f"torch on {device}"


TARGETS: dict[str, Target] = {t.name: t for t in (CpuTarget(), TensorRTTarget(), OpenVinoTarget(), CudaTarget())}


def register_target(target: type[Target] | Target) -> type[Target] | Target:
    """Register a target (an instance, or a subclass — usable as a class decorator); one of the same name is
    replaced."""
    obj = target() if isinstance(target, type) else target
    if not obj.name:
        raise ConfigError(f"{type(obj).__name__} has no name: set the class attribute name")
    TARGETS[obj.name] = obj
    return target


def unregister_target(name: str) -> None:
    TARGETS.pop(name, None)


def get_target(name: str) -> Target:
    """The target registered as ``name``, or a one-line error naming the known ones."""
    if name not in TARGETS:
        raise ConfigError(f"--target must be one of {', '.join(TARGETS)}, got {name!r}")
    return TARGETS[name]
