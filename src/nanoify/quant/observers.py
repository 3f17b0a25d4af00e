"""Range choice as pure functions of one histogram: min-max, percentile, MSE, entropy (KL).

Each takes an :class:`AbsHistogram` (or its :class:`HistView`: 2048 bins over [0, max|x|]) and returns
``amax``, the clipping threshold. Bit width and signedness are parameters, as in ModelOpt: a signed range is
[-amax, amax] with ``2**(num_bits-1) - 1`` steps on each side (scale amax/127 for INT8); an unsigned one is
[0, amax] with ``2**num_bits - 1`` steps (amax/255), which doubles the resolution of a non-negative tensor
(post-ReLU, sigmoid, softmax). Whether a tensor may be unsigned is the caller's decision
(:func:`nanoify.quant.calibrate.choose_ranges`): it depends on the tensor's minimum and on the target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .histogram import AbsHistogram, HistView

START_BIN = 128  # smallest candidate threshold, in bins (TensorRT, ModelOpt)


def _view(h: AbsHistogram | HistView) -> HistView:
    return h.view() if isinstance(h, AbsHistogram) else h


def qmax(num_bits: int = 8, unsigned: bool = False) -> int:
    """Largest quantized magnitude: 127 for signed INT8 (narrow range), 255 for unsigned."""
    return (1 << num_bits) - 1 if unsigned else (1 << (num_bits - 1)) - 1


def fake_quant(x: np.ndarray, amax: float, num_bits: int = 8, unsigned: bool = False) -> np.ndarray:
    """Quantize-dequantize ``x`` with scale amax/qmax (round half to even, as ONNX QuantizeLinear does)."""
    q = qmax(num_bits, unsigned)
    scale = amax / q if amax > 0 else 1.0
    lo = 0 if unsigned else -q
    return np.clip(np.round(np.asarray(x, dtype=np.float64) / scale), lo, q) * scale


def sqnr_db(x: np.ndarray, amax: float, num_bits: int = 8, unsigned: bool = False) -> float:
    """INT8 signal-to-quantization-noise ratio of a tensor under a range, in dB."""
    x = np.asarray(x, dtype=np.float64)
    noise = float(((x - fake_quant(x, amax, num_bits, unsigned)) ** 2).sum())
    return float("inf") if noise == 0 else 10.0 * float(np.log10((x**2).sum() / noise))


def histogram_sqnr_db(h: AbsHistogram | HistView, amax: float, num_bits: int = 8, unsigned: bool = False) -> float:
    """The SQNR a range would give, estimated from the histogram (values at bin centres)."""
    v = _view(h)
    c = v.centers
    noise = float((v.counts * (c - fake_quant(c, amax, num_bits, unsigned)) ** 2).sum())
    signal = float((v.counts * c**2).sum())
    return float("inf") if noise == 0 else 10.0 * float(np.log10(max(signal, 1e-300) / noise))


def minmax_amax(h: AbsHistogram | HistView, **_: Any) -> float:
    """Largest |x| seen: no clipping, coarsest steps. Exact (kept outside the bins)."""
    return float(h.amax)


def percentile_amax(h: AbsHistogram | HistView, percentile: float = 99.99, **_: Any) -> float:
    """The upper edge of the bin where the cumulative count of |x| reaches ``percentile`` %."""
    v = _view(h)
    total = v.counts.sum()
    if total == 0 or v.width == 0:
        return float(v.amax)
    cdf = np.cumsum(v.counts) / total
    i = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12, side="left"))
    return float(min((i + 1) * v.width, v.amax))


def mse_amax(h: AbsHistogram | HistView, num_bits: int = 8, unsigned: bool = False, start: int = START_BIN,
             stride: int = 1, **_: Any) -> float:
    """The bin edge (≥ ``start`` bins, or max|x|) minimising the expected squared quantization error over the
    histogram, values taken at bin centres — the same noise :func:`histogram_sqnr_db` measures."""
    v = _view(h)
    if v.width == 0 or v.counts.sum() == 0:
        return float(v.amax)
    nz = v.counts > 0
    c, n = v.centers[nz], v.counts[nz]
    cands = np.append(np.arange(start, v.bins + 1, stride) * v.width, v.amax)
    q = qmax(num_bits, unsigned)
    lo = 0 if unsigned else -q
    errs = np.empty(cands.size)
    for k, amax in enumerate(cands):
        scale = amax / q
        errs[k] = float((n * (c - np.clip(np.round(c / scale), lo, q) * scale) ** 2).sum())
    best = cands[np.flatnonzero(errs == errs.min())].max()  # ties: the wider range
    return float(min(best, v.amax))


def entropy_amax(h: AbsHistogram | HistView, num_bits: int = 8, unsigned: bool = False, start: int = START_BIN,
                 stride: int = 1, **_: Any) -> float:
    """TensorRT's entropy calibration (EntropyCalibrator2, as ModelOpt implements it): the threshold, in bins,
    that minimises KL(P ‖ Q).

    Before the search the first bin takes the second bin's count (the *zero-bin rule*: a post-ReLU tensor
    keeps half its values in bin 0, and that spike, spread over a quantization group, would wreck every KL).
    For each candidate i from ``start`` to the number of bins: P is the first i bins with all counts beyond
    folded into bin i−1; Q merges the first i bins into ``2**(num_bits-1+unsigned)`` levels — bin j belongs to
    level ⌊j·levels/i⌋, so level k starts at ⌈k·i/levels⌉ — and spreads each level's count evenly over its
    non-empty bins. Ties go to the largest threshold. Returns i·width (capped at max|x|).
    """
    v = _view(h)
    bins = v.counts.astype(np.float64).copy()
    if v.width == 0 or bins.sum() == 0:
        return float(v.amax)
    nbins = len(bins)
    if nbins > 1:
        bins[0] = bins[1]
    levels = 1 << (num_bits - 1 + int(unsigned))
    start = max(1, min(start, nbins))
    best_i, best_kl = nbins, float("inf")
    tail = np.concatenate([np.cumsum(bins[::-1])[::-1], [0.0]])  # tail[i] = sum(bins[i:])
    for i in range(start, nbins + 1, stride):
        ref = bins[:i]
        p = ref.copy()
        p[-1] += tail[i]
        group = (np.arange(i) * levels) // i
        nz = ref > 0
        sums = np.bincount(group, weights=ref, minlength=levels)
        cnt = np.bincount(group, weights=nz.astype(np.float64), minlength=levels)
        per = np.divide(sums, cnt, out=np.zeros_like(sums), where=cnt > 0)
        q = per[group] * nz
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            continue
        mask = p > 0
        if np.any(q[mask] == 0):
            kl = float("inf")
        else:
            pn, qn = p[mask] / ps, q[mask] / qs
            kl = float((pn * np.log(pn / qn)).sum())
        if kl <= best_kl:
            best_i, best_kl = i, kl
    return float(min(best_i * v.width, v.amax))


OBSERVERS: dict[str, Callable[..., float]] = {
    "minmax": minmax_amax,
    "percentile": percentile_amax,
    "mse": mse_amax,
    "entropy": entropy_amax,
}
