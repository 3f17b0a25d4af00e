"""Learned rounding of INT8 weights (AdaRound, Nagel et al., 2020): per weight layer, choose for every weight
whether it rounds down or up to the per-channel grid so that the layer's *output* on calibration inputs changes
least — nearest rounding minimises each weight's own error, not the layer's.

How: the FP32 graph runs over the calibration feeds once, keeping each weight layer's input (up to a memory cap);
per layer, a continuous rounding variable ``V`` (rectified sigmoid ``h(V)``, initialised at the weight's
fractional part so the layer starts exact) is optimised with Adam to minimise the layer's relative output error
plus a regulariser that anneals ``h(V)`` to 0 or 1; the result is rounded to integers. A layer whose learned
integers reconstruct its output no better than nearest rounding keeps nearest rounding, so the step never makes
a layer worse on the calibration data. Inputs are the FP32 model's (no quantized upstream layers).

The integers reach the target unchanged: the weights are written back as ``scale × integer`` on exactly the grid
ONNX Runtime's Q/DQ writer uses (symmetric per-channel, ``max|w| / 127``, or ``/ 64`` for 7-bit weights; the
largest weight of each channel keeps its value, so the scale is the same), and the writer's own rounding then
reproduces them (tested). The result is a float graph (:func:`round_graph`) that every static Q/DQ scheme can
quantize as usual.

Layers: Conv (1-D and 2-D, any group, so depthwise too; explicit pads), Gemm and MatMul with a constant 2-D
weight. ConvTranspose and ``auto_pad`` convolutions keep nearest rounding (stated in the report).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from tqdm.auto import tqdm

from ..runtime.ort import ort_session

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound)
ITERATIONS = 1000  # ResNet-20, 7-bit weights: 400 → 135, 1000 → 121 of 10,000 predictions changed (nearest: 178)
BATCH = 32
LR = 1e-2  # Adam on the rounding variables
REG_WEIGHT = 0.1  # of the rounding regulariser against the output error (relative to nearest rounding's)
WARMUP = 0.2  # share of iterations without the regulariser
INPUT_BYTES = 512 << 20  # all layers' kept calibration inputs together
SECONDS = 240.0  # the learning of all layers together: iterations shrink to fit (ResNet-20 needs about 110)
MIN_ITERATIONS = 100
PROBE_ITERATIONS = 5


@dataclass
class Layer:
    """A weight layer: its node, the activation input, the weight initializer and its per-channel axis."""

    node: str
    op: str
    x: str
    w: str
    axis: int
    attrs: dict[str, Any] = field(default_factory=dict)


def _attrs(node: Any) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def weight_layers(model: Any, names: Iterable[str] | None = None) -> tuple[list[Layer], dict[str, str]]:
    """The layers learned rounding handles among ``names`` (default: every Conv/Gemm/MatMul with a constant
    weight), and for the others why not."""
    inits = {i.name: i for i in model.graph.initializer}
    wanted = set(names) if names is not None else None
    layers, skipped, seen = [], {}, set()
    for n in model.graph.node:
        if wanted is not None and n.name not in wanted:
            continue
        if n.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            continue
        a = _attrs(n)
        w = inits.get(n.input[1]) if len(n.input) > 1 else None
        if w is None:
            skipped[n.name] = "weight is not a constant"
        elif w.name in seen:
            skipped[n.name] = "weight shared with another layer: nearest rounding"
        elif n.op_type == "ConvTranspose":
            skipped[n.name] = "ConvTranspose: nearest rounding"
        elif n.op_type == "Conv" and (a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or
                                      len(w.dims) not in (3, 4)):
            skipped[n.name] = "Conv with auto_pad or not 1-D/2-D: nearest rounding"
        elif n.op_type in ("Gemm", "MatMul") and (len(w.dims) != 2 or a.get("transA", 0)):
            skipped[n.name] = "not a 2-D weight: nearest rounding"
        else:
            axis = 0 if n.op_type == "Conv" else (0 if n.op_type == "Gemm" and a.get("transB", 0) else 1)
            layers.append(Layer(n.name, n.op_type, n.input[0], n.input[1], axis, a))
            seen.add(w.name)
    return layers, skipped


def grid(w: np.ndarray, axis: int, bits: int) -> tuple[np.ndarray, int]:
    """Per-channel symmetric scale as ONNX Runtime's writer computes it (float32; broadcastable to ``w``) and
    the largest integer: 127 for 8 bits, 64 for 7 (its reduced range)."""
    qmax = 127 if bits == 8 else 64
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red, keepdims=True).astype(np.float32)
    scale = (amax * np.float32(2) / np.float32(2 * qmax)).astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1)), qmax


def nearest(w: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    return np.clip(np.round(w / scale), -qmax, qmax)


def collect_inputs(path: Path, layers: Sequence[Layer], feeds: Iterable[dict[str, np.ndarray]],
                   threads: int | None = None, cap_bytes: int = INPUT_BYTES) -> dict[str, np.ndarray]:
    """Each layer's input over the feeds (FP32 graph), rows (leading axis) kept up to an equal share of
    ``cap_bytes`` (memory stays flat past the cap), of one shape where frames differ in size."""
    names = list(dict.fromkeys(layer.x for layer in layers))
    share = cap_bytes // max(len(names), 1)
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    used = dict.fromkeys(names, 0)
    for values in tensor_stream(path, names, feeds, threads):
        for n, v in values.items():
            if used[n] < share:
                got[n].append(np.asarray(v, dtype=np.float32))
                used[n] += got[n][-1].nbytes
        if all(u >= share for u in used.values()):
            break
    return {n: _largest_group(v) for n, v in got.items() if v}


def tensor_stream(path: Path, names: Sequence[str], feeds: Iterable[dict[str, np.ndarray]],
                  threads: int | None = None, level: str = "all") -> Iterator[dict[str, np.ndarray]]:
    """The values of the tensors ``names`` (graph inputs or intermediate) of the graph at ``path``, feed by feed:
    a copy of the graph exposing them as outputs, run by ONNX Runtime at optimisation ``level``."""
    model = onnx.load(str(path))
    graph_inputs = {i.name for i in model.graph.input}
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have and name not in graph_inputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    with tempfile.TemporaryDirectory() as tmp:
        aug = Path(tmp) / "exposed.onnx"
        onnx.save(model, str(aug), save_as_external_data=model.ByteSize() > 1.8e9)
        del model
        sess = ort_session(aug, threads, level=level)
        wanted = {i.name for i in sess.get_inputs()}
        outs = [n for n in names if n not in graph_inputs]
        for feed in feeds:
            feed = {k: v for k, v in feed.items() if k in wanted}
            yield dict(zip(outs, sess.run(outs, feed) if outs else [], strict=True)) | {
                n: feed[n] for n in names if n in graph_inputs}


def _largest_group(arrays: list[np.ndarray]) -> np.ndarray:
    """The rows of the most common shape (a detector with dynamic H/W sees frames of several sizes; a layer's
    mini-batches need one)."""
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for a in arrays:
        groups.setdefault(a.shape[1:], []).append(a)
    best = max(groups.values(), key=lambda g: sum(a.shape[0] for a in g))
    return np.concatenate(best)


def _forward(layer: Layer, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if layer.op == "Conv":
        a = layer.attrs
        dims = w.dim() - 2
        pads = list(a.get("pads", [0] * 2 * dims))
        if pads[:dims] != pads[dims:]:  # asymmetric: pad explicitly (torch wants (left, right) from the last axis)
            x = F.pad(x, [p for i in reversed(range(dims)) for p in (pads[i], pads[i + dims])])
            pad: Any = 0
        else:
            pad = pads[:dims]
        conv = F.conv1d if dims == 1 else F.conv2d
        return conv(x, w, None, a.get("strides", [1] * dims), pad, a.get("dilations", [1] * dims), a.get("group", 1))
    if layer.op == "Gemm" and layer.attrs.get("transB", 0):
        return x @ w.T
    return x @ w


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def learn_layer(layer: Layer, x: np.ndarray, w: np.ndarray, bits: int, iters: int = ITERATIONS, batch: int = BATCH,
                seed: int = 0, seconds: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The integer weights of ``layer`` (learned, or nearest when that reconstructs no worse) and the
    reconstruction errors of both (relative output MSE on the collected inputs). With ``seconds``, the
    iterations shrink to fit it (timed on the first ones, at least :data:`MIN_ITERATIONS`)."""
    g = torch.Generator().manual_seed(seed)
    scale_np, qmax = grid(w, layer.axis, bits)
    scale, wt = torch.from_numpy(scale_np), torch.from_numpy(w.astype(np.float32))
    floor = torch.floor(wt / scale)
    rest = (wt / scale - floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
    xs = torch.from_numpy(x)
    with torch.no_grad():
        target = _forward(layer, xs, wt)
        power = target.pow(2).mean().clamp_min(1e-30)
        near = torch.from_numpy(nearest(w, scale_np, qmax).astype(np.float32))
        err_near = float((_forward(layer, xs, near * scale) - target).pow(2).mean() / power)
    # Adam by hand: torch.optim's constructor imports dynamo, which sets TORCHINDUCTOR_CACHE_DIR in the user's
    # environment (a quantize call must not change the process it runs in)
    m1, m2 = torch.zeros_like(v), torch.zeros_like(v)
    warm = int(iters * WARMUP)
    t0, it = time.perf_counter(), 0
    while it < iters:
        if seconds is not None and it == PROBE_ITERATIONS:  # fit the schedule to the time this layer has
            per = (time.perf_counter() - t0) / it
            iters = min(iters, max(MIN_ITERATIONS, int(seconds / max(per, 1e-9))))
            warm = max(it, int(iters * WARMUP))
        idx = torch.randint(0, xs.shape[0], (min(batch, xs.shape[0]),), generator=g)
        xb = xs[idx]
        soft = torch.clamp(floor + _h(v), -qmax, qmax) * scale
        rec = (_forward(layer, xb, soft) - target[idx]).pow(2).mean() / power / max(err_near, 1e-12)
        loss = rec
        if it >= warm:
            beta = 20 + (2 - 20) * (it - warm) / max(iters - warm - 1, 1)
            loss = rec + REG_WEIGHT * (1 - (2 * _h(v) - 1).abs().pow(beta)).mean()
        (grad,) = torch.autograd.grad(loss, v)
        with torch.no_grad():
            m1.mul_(0.9).add_(grad, alpha=0.1)
            m2.mul_(0.999).addcmul_(grad, grad, value=0.001)
            v -= LR * (m1 / (1 - 0.9 ** (it + 1))) / ((m2 / (1 - 0.999 ** (it + 1))).sqrt() + 1e-8)
        it += 1
    with torch.no_grad():
        learned = torch.clamp(floor + (_h(v) >= 0.5).float(), -qmax, qmax)
        top = (wt / scale).abs() >= qmax - 1e-3  # each channel's largest weight keeps its value: same scale
        learned = torch.where(top, near, learned)
        err_learned = float((_forward(layer, xs, learned * scale) - target).pow(2).mean() / power)
    use = err_learned < err_near
    q = (learned if use else near).numpy()
    return q, {"node": layer.node, "iterations": iters, "nearest_error": err_near, "learned_error": err_learned,
               "used": bool(use), "changed": int((learned != near).sum()) if use else 0, "rows": int(xs.shape[0])}


def round_graph(src: Path, dst: Path, nodes: Sequence[str], feeds: Iterable[dict[str, np.ndarray]], bits: int,
                threads: int | None = None, iters: int = ITERATIONS, progress: bool = False,
                seconds: float = SECONDS) -> dict[str, Any]:
    """A copy of ``src`` whose weights of ``nodes`` sit on the INT8 grid with learned rounding (see module
    docstring); returns the per-layer report. The learning shares ``seconds`` among the layers still to learn
    (a layer finishing early leaves its time to the rest)."""
    t0 = time.time()
    model = onnx.load(str(src))
    layers, skipped = weight_layers(model, nodes)
    inputs = collect_inputs(src, layers, feeds, threads)
    inits = {i.name: i for i in model.graph.initializer}
    torch_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    report = []
    try:
        for layer in tqdm(layers, desc=f"learned rounding (w{bits})", unit="layer", disable=not progress or None,
                          leave=False):
            if layer.x not in inputs:
                skipped[layer.node] = "no calibration input reached it"
                continue
            w = numpy_helper.to_array(inits[layer.w]).astype(np.float32)
            left = seconds - (time.time() - t0)
            q, info = learn_layer(layer, inputs[layer.x], w, bits, iters,
                                  seconds=max(left, 0.0) / (len(layers) - len(report)))
            scale, _ = grid(w, layer.axis, bits)
            inits[layer.w].CopyFrom(numpy_helper.from_array((q * scale).astype(np.float32), layer.w))
            report.append(info)
    finally:
        torch.set_num_threads(torch_threads)
    onnx.save(model, str(dst))
    return {"bits": bits, "iterations": iters, "layers": report, "skipped": skipped,
            "seconds": round(time.time() - t0, 1)}
