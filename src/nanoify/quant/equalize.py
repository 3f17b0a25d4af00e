"""Cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization", §4.1): for two convolutions in a row,
scale output channel ``i`` of the first by ``1/s_i`` and input channel ``i`` of the second by ``s_i`` — the
function is unchanged wherever what lies between commutes with a positive per-channel scale — choosing
``s_i = sqrt(r1_i / r2_i)`` so both channels' weight ranges become ``sqrt(r1_i · r2_i)``. With *per-tensor* weight
scales this rescues networks whose channels' ranges differ by orders of magnitude (MobileNetV2 0.1% → 70% top-1
in the paper).

Valid through: nothing, Relu, LeakyRelu, PRelu with one slope, MaxPool and AveragePool (all positively
homogeneous per channel) — each with the convolution's output as its only consumer. Not through Clip (ReLU6:
the clip at 6 does not commute with a scale; the paper replaces ReLU6 by ReLU, which changes the model and is not
done here), Sigmoid/SiLU/HardSwish, Add (residual), Concat, BatchNormalization (fold it first: the exporter does).
Any group on either side, so depthwise → pointwise pairs too.

Not a candidate of the search: every nanoify target quantizes weights per output channel, which already gives
each channel its own scale, and equalization then only moves range into the activation between the pair, which
is quantized per tensor. Measured on ResNet-20 (9 pairs, every op in INT8, 7-bit weights, AVX2): MSE ranges 213 →
232 of 10,000 predictions changed with equalization, percentile 237 → 258 (benchmarks/learned_rounding.py prints
this beside the other weight steps). It is here for per-tensor weight formats and for users who measure it on
their network (:func:`equalize_graph`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

THROUGH = {"Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool"}
ITERATIONS = 20  # sweeps over all pairs (a convolution in two pairs moves twice a sweep); 20 converge on ResNets


def _group(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def conv_pairs(model: Any) -> list[tuple[Any, Any]]:
    """(first, second) convolutions with constant weights where the first's output reaches only the second,
    through nothing but :data:`THROUGH` ops (PRelu only with a single slope)."""
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    pairs = []
    for a in model.graph.node:
        if a.op_type != "Conv" or len(a.input) < 2 or a.input[1] not in inits:
            continue
        t, b = a.output[0], None
        while t not in outputs and len(consumers.get(t, [])) == 1:
            c = consumers[t][0]
            if c.op_type in THROUGH and c.input[0] == t and (
                    c.op_type != "PRelu" or (c.input[1] in inits and int(np.prod(inits[c.input[1]].dims)) == 1)):
                t = c.output[0]
                continue
            b = c
            break
        if b is not None and b.op_type == "Conv" and b.input[0] == t and b.input[1] in inits:
            pairs.append((a, b))
    return pairs


def _in_channel_ranges(wb: np.ndarray, group: int) -> tuple[np.ndarray, list[tuple[slice, int]]]:
    """The second convolution's weight range per *input* channel, and where each input channel's weights are
    (output-channel slice, index in the group's input axis)."""
    cout, cin_g = wb.shape[0], wb.shape[1]
    per = cout // group
    where = [(slice(g * per, (g + 1) * per), j) for g in range(group) for j in range(cin_g)]
    return np.array([np.abs(wb[o, j]).max() for o, j in where]), where


def equalize_pair(wa: np.ndarray, ba: np.ndarray | None, wb: np.ndarray, group_b: int
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """One equalization step of a pair: the new weights (and first bias) and the scales used."""
    r1 = np.abs(wa.reshape(wa.shape[0], -1)).max(axis=1)
    r2, where = _in_channel_ranges(wb, group_b)
    if r2.shape != r1.shape:
        raise ValueError(f"{wa.shape[0]} output channels feed {r2.size} input channels")
    s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0)
    wa = wa / s.reshape(-1, *[1] * (wa.ndim - 1))
    wb = wb.copy()
    for c, (o, j) in enumerate(where):
        wb[o, j] *= s[c]
    return wa, (ba / s if ba is not None else None), wb, s


def equalize_graph(src: Path, dst: Path, iterations: int = ITERATIONS) -> dict[str, Any]:
    """A copy of ``src`` with every :func:`conv_pairs` pair equalized (``iterations`` sweeps); returns the pairs
    and how far the last sweep still moved a scale."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    pairs = conv_pairs(model)

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    def put(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    moved = 0.0
    for _ in range(iterations):
        moved = 0.0
        for a, b in pairs:
            bias = a.input[2] if len(a.input) > 2 and a.input[2] in inits else None
            wa, ba, wb, s = equalize_pair(arr(a.input[1]), arr(bias) if bias else None, arr(b.input[1]), _group(b))
            put(a.input[1], wa)
            put(b.input[1], wb)
            if bias and ba is not None:
                put(bias, ba)
            moved = max(moved, float(np.abs(np.log(s)).max()) if s.size else 0.0)
    onnx.save(model, str(dst))
    return {"pairs": [[a.name, b.name] for a, b in pairs], "last_sweep_max_log_scale": moved}


def weight_ranges(model: Any, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Per-output-channel max |w| of the named initializers (for reports and tests)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n: np.abs(inits[n].reshape(inits[n].shape[0], -1)).max(axis=1) for n in names}
