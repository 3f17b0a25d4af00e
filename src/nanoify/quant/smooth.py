"""SmoothQuant (Xiao et al., 2023) for the weight GEMMs of transformers: move the activations' outlier channels
into the weights before INT8, so one per-tensor activation scale no longer has to cover a few channels that are
100× larger than the rest.

For a MatMul ``Y = X·W`` (``X`` ``[..., K]``, constant ``W`` ``[K, N]``) and a positive per-channel vector ``s``
(length ``K``), ``Y = (X / s)·(diag(s)·W)`` exactly. With ``s_k = max|X_k|^α / max|W_k|^(1−α)`` (``max|X_k|``
over the calibration rows, ``max|W_k|`` over row ``k`` of every weight reading ``X``) the activation's channel
ranges shrink towards each other and the weights' rows take up the difference; ``α`` sets how much moves.
Weights stay per-output-channel INT8, so the larger rows cost them little.

``α`` per group, from data (the default, ``"auto"``, as Neural Compressor's auto-α): on a uniform sample of the
calibration rows' inputs (:data:`SAMPLE_ROWS` per tensor, kept while streaming), each α of :data:`ALPHAS` — and
no smoothing at all — is scored by the group's output error with the input fake-quantized per tensor and the
weights per output channel, and the best wins; a group no α improves is left as it was. Measured on MiniLM-L6 /
SST-2 (RESULTS.md): one α for every group changed 10–25 of 872 predictions at 0.5 and 3–10 at 0.8, against 15–40
unsmoothed.

How it lands in the graph: GEMMs reading the same tensor (query, key and value) share one ``s`` (from the largest
of their weights' rows) and one inserted ``Mul`` by ``1/s``, whose output is what the Q/DQ writer quantizes;
every other reader of the tensor (a residual ``Add`` in a post-LayerNorm BERT) still reads it unchanged — which is
why ``s`` is not folded into the LayerNorm before it, as it can be in pre-LN decoders. The ``Mul`` is one
elementwise pass over a GEMM's input (OpenVINO folds it into the quantizer that follows; ONNX Runtime runs it in
float). The smoothed graph computes the same function as the original in float (tested), so a GEMM that mixed
precision keeps float keeps its smoothed weights.

Why (RESULTS.md, MiniLM-L6 on SST-2, VNNI CPU): NNCF's transformer recipe changes 6 of 872 predictions with its
SmoothQuant and 16 without; nanoify's static INT8 changed 15–40 before this step.

Scope: MatMul with a constant 2-D second input whose weight feeds only that node, in graphs without convolutions
(the search adds smoothed twins of its static candidates there). Convolutions are served by learned rounding and
bias correction (issue 21's steps) instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .ops import nonfloat_tensor_names
from .rounding import grid, nearest, tensor_stream

AUTO = "auto"  # α chosen per group from the calibration rows
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # what "auto" tries (the paper: 0.5 for most models, up to 0.75+)
SAMPLE_ROWS = 256  # rows (tokens) of each GEMM input kept for choosing α (MiniLM-L6's 24 inputs: about 15 MB)
SCALE_RANGE = (1e-2, 1e2)  # s is clipped here: a dead channel (max|X| ≈ 0) must not blow its weight row up


@dataclass(frozen=True)
class Group:
    """The weight GEMMs reading one activation tensor ``x`` (they share one smoothing vector)."""

    x: str
    nodes: tuple[str, ...]
    weights: tuple[str, ...]


def smooth_groups(model: Any) -> list[Group]:
    """Every activation tensor read by MatMuls with a constant 2-D weight (``X·W``), with those MatMuls, in graph
    order. A weight read by anything else (tied embeddings) rules its tensor's group out: scaling it would change
    the other reader."""
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    skip = nonfloat_tensor_names(model) | set(inits)
    groups: dict[str, list[Any]] = {}
    bad: set[str] = set()
    for n in model.graph.node:
        if n.op_type != "MatMul" or len(n.input) != 2 or n.input[1] not in inits or n.input[0] in skip:
            continue
        if len(inits[n.input[1]].dims) != 2 or readers[n.input[1]] != 1:
            bad.add(n.input[0])
            continue
        groups.setdefault(n.input[0], []).append(n)
    return [Group(x, tuple(n.name for n in ns), tuple(n.input[1] for n in ns))
            for x, ns in groups.items() if x not in bad]


def channel_stats(path: Path, tensors: list[str], feeds: Iterable[dict[str, np.ndarray]], threads: int | None = None,
                  rows: int = SAMPLE_ROWS, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per tensor, the largest magnitude of each channel (last axis) over every row of ``feeds``, and a uniform
    sample of ``rows`` of its rows (each row gets a random key; the smallest keys stay): one pass, memory one
    batch plus ``rows`` rows per tensor, whatever the number of feeds."""
    rng = np.random.default_rng(seed)
    amax: dict[str, np.ndarray] = {}
    kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for values in tensor_stream(path, tensors, feeds, threads):
        for name, v in values.items():
            flat = v.reshape(-1, v.shape[-1]).astype(np.float32)
            m = np.abs(flat).max(axis=0).astype(np.float64)
            amax[name] = np.maximum(amax[name], m) if name in amax else m
            keys = rng.random(len(flat))
            if name in kept:
                keys, flat = np.concatenate([kept[name][0], keys]), np.concatenate([kept[name][1], flat])
            if len(keys) > rows:
                top = np.argpartition(keys, rows)[:rows]
                keys, flat = keys[top], flat[top]
            kept[name] = (keys, flat)
    return amax, {k: v[1] for k, v in kept.items()}


def group_error(x: np.ndarray, weights: list[np.ndarray], s: np.ndarray | None, bits: int = 8,
                outputs: list[np.ndarray] | None = None) -> float:
    """The group's output error with its input ``x`` (rows × K) divided by ``s`` (None: not smoothed) and
    fake-quantized per tensor, and each weight times ``s`` on the Q/DQ writer's per-output-channel grid
    (:func:`~nanoify.quant.rounding.grid`, ``bits`` 8 or 7), relative to the float outputs' energy — what α is
    chosen by. ``outputs``: the float ``x @ w`` of each weight, when the caller already has them."""
    xs = x if s is None else x / s
    step = np.float32(np.abs(xs).max() / 127) or np.float32(1)
    xq = nearest(xs, step, 127) * step
    err = ref = 0.0
    for k, w in enumerate(weights):
        ws = w if s is None else w * s[:, None]
        scale, qmax = grid(ws, 1, bits)
        y = outputs[k] if outputs is not None else x @ w
        err += float(((xq @ (nearest(ws, scale, qmax) * scale) - y) ** 2).sum())
        ref += float((y ** 2).sum())
    return err / max(ref, 1e-30)


def choose_alpha(x: np.ndarray, weights: list[np.ndarray], x_amax: np.ndarray, bits: int = 8,
                 alphas: Iterable[float] = ALPHAS) -> tuple[float | None, float, float]:
    """The α of ``alphas`` whose smoothing gives the smallest :func:`group_error` on the sample ``x``, or None
    when none beats leaving the group alone; returns (α, its error, the unsmoothed error)."""
    rows = np.max([np.abs(w).max(axis=1) for w in weights], axis=0).astype(np.float64)
    outputs = [x @ w for w in weights]  # the float outputs, once for every α
    base = group_error(x, weights, None, bits, outputs)
    best, best_err = None, base
    for a in alphas:
        e = group_error(x, weights, smoothing_scales(x_amax, rows, a).astype(np.float32), bits, outputs)
        if e < best_err:
            best, best_err = a, e
    return best, best_err, base


def smoothing_scales(x_amax: np.ndarray, w_rows: np.ndarray, alpha: float) -> np.ndarray:
    """``s_k = max|X_k|^α / max|W_k|^(1−α)``, clipped to :data:`SCALE_RANGE`; 1 where either side is 0."""
    s = np.ones_like(x_amax, dtype=np.float64)
    ok = (x_amax > 0) & (w_rows > 0)
    s[ok] = x_amax[ok] ** alpha / w_rows[ok] ** (1 - alpha)
    return np.clip(s, *SCALE_RANGE)


def smoothed_name(x: str, alpha: float | str) -> str:
    """The name of the smoothed copy of tensor ``x`` (what the Q/DQ writer quantizes and calibration measures)."""
    return f"{x}/smooth{_tag(alpha)}"


def _tag(alpha: float | str) -> str:
    return alpha if isinstance(alpha, str) else f"{alpha:g}"


def smooth_graph(src: Path, dst: Path, amax: dict[str, np.ndarray], alpha: float | str = AUTO,
                 samples: dict[str, np.ndarray] | None = None, bits: int = 8) -> dict[str, Any]:
    """``src`` with the groups of :func:`smooth_groups` smoothed (a ``Mul`` inserted, the weights' rows scaled),
    written to ``dst``. ``amax``/``samples``: :func:`channel_stats` of the groups' tensors; ``alpha``: one α for
    every group, or ``"auto"`` (:func:`choose_alpha` per group on ``samples``, for ``bits``-bit weights; a group
    no α improves stays as it was). Returns the report: the groups smoothed, the α of each, the new tensors (to
    calibrate), how uneven the activations' channels were before and after, and (auto) the predicted error."""
    model = onnx.load(str(src))
    groups = [g for g in smooth_groups(model) if g.x in amax]
    inits = {i.name: i for i in model.graph.initializer}
    position = {n.name: k for k, n in enumerate(model.graph.node)}
    by_name = {n.name: n for n in model.graph.node}
    inserts: list[tuple[int, Any]] = []
    spread_before, spread_after, chosen, errors = [], [], {}, []
    for g in groups:
        ws = {w: numpy_helper.to_array(inits[w]) for w in g.weights}
        a = amax[g.x]
        if alpha == AUTO:
            if samples is None or g.x not in samples:
                raise ValueError(f"smooth_graph: alpha 'auto' needs sample rows of {g.x}")
            pick, err, base = choose_alpha(samples[g.x], list(ws.values()), a, bits)
            errors.append((base, err))
            if pick is None:
                continue
        else:
            pick = float(alpha)
        chosen[g.x] = pick
        rows = np.max([np.abs(w).max(axis=1) for w in ws.values()], axis=0).astype(np.float64)
        s = smoothing_scales(a, rows, pick)
        for name, w in ws.items():
            inits[name].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(w.dtype), name))
        inv = f"{smoothed_name(g.x, alpha)}/inv_scale"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        out = smoothed_name(g.x, alpha)
        mul = onnx.helper.make_node("Mul", [g.x, inv], [out], name=f"{out}/Mul")
        inserts.append((min(position[n] for n in g.nodes), mul))
        for n in g.nodes:
            by_name[n].input[0] = out
        live = a[a > 0]
        if live.size:
            spread_before.append(float(live.max() / np.median(live)))
            after = (a / s)[a > 0]
            spread_after.append(float(after.max() / np.median(after)))
    for k, mul in sorted(inserts, key=lambda t: t[0], reverse=True):  # before the group's first reader
        model.graph.node.insert(k, mul)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst), save_as_external_data=model.ByteSize() > 1.8e9)
    smoothed = [g for g in groups if g.x in chosen]
    out_info: dict[str, Any] = {
        "alpha": _tag(alpha), "groups": len(smoothed), "of_groups": len(groups),
        "gemms": sum(len(g.nodes) for g in smoothed), "tensors": [smoothed_name(g.x, alpha) for g in smoothed],
        "alphas": {str(k): sum(v == k for v in chosen.values()) for k in sorted(set(chosen.values()))},
        "channel_spread_before": round(float(np.median(spread_before)), 1) if spread_before else None,
        "channel_spread_after": round(float(np.median(spread_after)), 1) if spread_after else None}
    if errors:  # the predicted relative output error, summed over the groups: unsmoothed → chosen
        out_info["predicted_error"] = [round(sum(b for b, _ in errors), 5), round(sum(e for _, e in errors), 5)]
    return out_info
