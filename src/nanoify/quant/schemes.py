"""Quantization schemes as data, and one verb that applies them (torchao's ``quantize_(model, config)`` is the
model): a scheme is a small frozen dataclass, a plan maps each quantizable node to a scheme or to ``None``
(keep float), and :func:`apply_plan` looks up the handler by the scheme's type.

    plan = QuantPlan.uniform(StaticQDQ("entropy", "cpu", scope="all"), units)
    plan = plan.keep_float(["/layer1.0/conv1/Conv"])          # mixed precision
    apply_plan(plan, sources, "out.onnx", ranges)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ..errors import ConfigError
from .dynamic import quantize_dynamic_int8
from .qdq import quantize_static_qdq


@dataclass(frozen=True)
class DynamicInt8:
    """Weights INT8 offline, activations quantized per batch at run time (ONNX Runtime ``quantize_dynamic``).
    ``reduce_range``: 7-bit weights. ``graph``: the transformer-fused graph (Attention, SkipLayerNorm, …) or the
    plain export — which runs faster differs between CPUs (on the VNNI machine the plain one won at batch 32)."""

    per_channel: bool = True
    reduce_range: bool = False
    graph: str = "fused"

    @property
    def name(self) -> str:
        if not self.per_channel and not self.reduce_range:
            base = "dynamic-stock"  # ONNX Runtime's defaults
        else:
            base = ("dynamic-per-channel" if self.per_channel else "dynamic-per-tensor") + (
                "-reduce-range" if self.reduce_range else "")
        return base + ("-unfused" if self.graph == "plain" else "")


@dataclass(frozen=True)
class StaticQDQ:
    """Static INT8 as Q/DQ pairs with calibrated ranges (``method``), for a ``preset`` (cpu | tensorrt), over a
    ``scope`` of ops (weights | all), with per-channel weights of ``weight_bits``, rounded to the nearest integer
    or by ``rounding="learned"`` (AdaRound, :mod:`nanoify.quant.rounding`: the float graph with its weights
    already on the grid, which the Q/DQ writer then reproduces); ``bias_correct``: the biases carry the mean
    output shift of the rounded weights (:mod:`nanoify.quant.bias_correction`); ``smooth``: SmoothQuant first
    (:mod:`nanoify.quant.smooth`: the GEMMs' input outliers moved into their weights) with α ``"auto"`` (chosen
    per GEMM input from the calibration rows) or a number; empty: off. With nearest rounding only."""

    method: str = "entropy"
    preset: str = "cpu"
    scope: str = "weights"
    weight_bits: int = 8
    rounding: str = "nearest"
    bias_correct: bool = False
    smooth: str = ""

    def __post_init__(self) -> None:
        if self.smooth and (self.rounding != "nearest" or self.bias_correct):
            raise ConfigError("smoothing (SmoothQuant) combines with nearest rounding and no bias correction only")

    @property
    def name(self) -> str:
        base = ("static" if self.preset == "cpu" else "qdq") + f"-{self.method}"
        return base + ("-all-ops" if self.scope == "all" else "") + ("-w7" if self.weight_bits == 7 else "") + (
            "-adaround" if self.rounding == "learned" else "") + ("-bc" if self.bias_correct else "") + (
            ("-smooth" if self.smooth == "auto" else f"-smooth{self.smooth}") if self.smooth else "")

    @property
    def graph(self) -> str:
        if self.smooth:
            return smoothed_graph(self.smooth, self.weight_bits)
        if self.rounding == "nearest" and not self.bias_correct:
            return "plain"
        return derived_graph(self.weight_bits, self.rounding, self.bias_correct)


def smoothed_graph(alpha: str, bits: int = 8) -> str:
    """The key of the float graph whose GEMM inputs are smoothed with strength ``alpha`` ("auto": chosen for
    ``bits``-bit weights); it computes what the plain graph computes (its weights are rescaled, not rounded)."""
    return f"{SMOOTHED}{alpha}-w{bits}"


SMOOTHED = "smoothed-"


def weights_changed(graph: str) -> bool:
    """Whether a derived graph's weights differ in value from the FP32 model's (learned rounding, bias
    correction): a node mixed precision keeps float gets its FP32 weights back there. A smoothed graph's weights
    are rescaled to match its rescaled inputs and must stay."""
    return graph not in ("plain", "fused") and not graph.startswith(SMOOTHED)


def derived_graph(bits: int, rounding: str, bias_correct: bool = False) -> str:
    """The key of the float graph made for a static scheme: learned rounding for ``bits``-bit weights (weights on
    the grid) and/or bias correction for them (biases changed)."""
    return ("learned" if rounding == "learned" else "nearest") + f"-w{bits}" + ("-bc" if bias_correct else "")


def learned_graph(bits: int) -> str:
    """The key of the float graph whose weights carry learned rounding for ``bits``-bit weights."""
    return derived_graph(bits, "learned")


@dataclass(frozen=True)
class Float:
    """No quantization: the graph as it is, run by the target's engine in ``precision`` (``fp32``, or ``bf16``
    where the engine and CPU compute in it) — the float rows a target measures beside its INT8 candidates."""

    precision: str = "fp32"
    graph: str = "plain"

    @property
    def name(self) -> str:
        return f"float-{self.precision}"


Scheme = DynamicInt8 | StaticQDQ | Float


def precision_of(scheme: Any) -> str:
    """The precision an engine runs a scheme's graph in (float32 for every INT8 graph's float parts)."""
    return scheme.precision if isinstance(scheme, Float) else "fp32"


@dataclass(frozen=True)
class QuantPlan:
    """Node → scheme, or None to keep the node in float. Every quantized node shares one scheme (one graph
    rewrite per plan); the float nodes are the mixed-precision part."""

    nodes: Mapping[str, Scheme | None] = field(default_factory=dict)
    base: Scheme | None = None  # the scheme of a plan that keeps every node float (it still names the format)

    @classmethod
    def uniform(cls, scheme: Scheme, units: Iterable[str]) -> QuantPlan:
        return cls({u: scheme for u in units}, scheme)

    def keep_float(self, names: Iterable[str]) -> QuantPlan:
        drop = set(names)
        return QuantPlan({k: (None if k in drop else v) for k, v in self.nodes.items()}, self.scheme)

    @property
    def scheme(self) -> Scheme:
        schemes = {s for s in self.nodes.values() if s is not None}
        if len(schemes) > 1:
            raise ConfigError(f"a plan applies one scheme; this one has {len(schemes)}: "
                              f"{', '.join(sorted(s.name for s in schemes))}")
        if not schemes:
            if self.base is None:
                raise ConfigError("the plan names no scheme; build it with QuantPlan.uniform(scheme, nodes)")
            return self.base
        return next(iter(schemes))

    @property
    def float_nodes(self) -> list[str]:
        return [k for k, v in self.nodes.items() if v is None]

    @property
    def units(self) -> list[str]:
        return list(self.nodes)


def _apply_dynamic(scheme: DynamicInt8, src: Path, dst: Path, ranges: Any, float_nodes: list[str]) -> None:
    quantize_dynamic_int8(src, dst, per_channel=scheme.per_channel, reduce_range=scheme.reduce_range,
                          exclude_nodes=float_nodes)


def _apply_static(scheme: StaticQDQ, src: Path, dst: Path, ranges: Any, float_nodes: list[str]) -> None:
    if ranges is None or scheme.method not in ranges:
        raise ConfigError(f"{scheme.name} needs ranges calibrated with {scheme.method}")
    quantize_static_qdq(src, dst, ranges[scheme.method], preset=scheme.preset, exclude_nodes=float_nodes,
                        scope=scheme.scope, weight_bits=scheme.weight_bits)


def _apply_float(scheme: Float, src: Path, dst: Path, ranges: Any, float_nodes: list[str]) -> None:
    shutil.copyfile(src, dst)


HANDLERS: dict[type, Callable[..., None]] = {DynamicInt8: _apply_dynamic, StaticQDQ: _apply_static, Float: _apply_float}


def apply_plan(plan: QuantPlan, sources: Mapping[str, Path], dst: Path,
               ranges: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Write the quantized graph of ``plan`` to ``dst``. ``sources`` maps a scheme's ``graph`` ("plain" for Q/DQ,
    "fused" for dynamic INT8) to the ONNX file; ``ranges`` maps calibration method → tensor → Range."""
    scheme = plan.scheme
    HANDLERS[type(scheme)](scheme, Path(sources[scheme.graph]), Path(dst), ranges, plan.float_nodes)
    if weights_changed(scheme.graph) and plan.float_nodes:  # a node kept float gets its FP32 weights back
        restore_weights(Path(dst), Path(sources["plain"]), plan.float_nodes)


def restore_weights(path: Path, original: Path, nodes: Iterable[str]) -> None:
    """The weight and bias initializers of ``nodes`` in ``path`` set back to their values in ``original`` (same
    names); a bias that bias correction added to a node without one is dropped again."""
    model = onnx.load(str(path))
    before = onnx.load(str(original))
    orig = {i.name: i for i in before.graph.initializer}
    arity = {n.name: len(n.input) for n in before.graph.node}
    wanted = set(nodes)
    for n in model.graph.node:
        if n.name in wanted and n.name in arity and len(n.input) > arity[n.name]:
            del n.input[arity[n.name]:]
    names = {i for n in model.graph.node if n.name in wanted for i in n.input[1:]}
    for init in model.graph.initializer:
        if init.name in names and init.name in orig:
            init.CopyFrom(orig[init.name])
    onnx.save(model, str(path))


def describe(scheme: Scheme) -> dict[str, Any]:
    """A scheme as a JSON-able dict (for manifests)."""

    return {"type": type(scheme).__name__, **asdict(scheme)}
