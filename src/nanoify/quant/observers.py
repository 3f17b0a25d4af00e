"""Range choice as pure functions of one histogram: min-max, percentile, MSE, entropy (KL).

Each returns ``amax``, the clipping threshold of a symmetric INT8 range [-amax, amax] (scale amax/127).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .histogram import AbsHistogram

QMAX = 127


def minmax_amax(h: AbsHistogram) -> float:
    """Largest |x| seen: no clipping, coarsest steps. Exact (kept outside the histogram)."""
    return h.amax


def percentile_amax(h: AbsHistogram, percentile: float = 99.99) -> float:
    """The upper edge of the bin where the cumulative count of |x| reaches ``percentile`` %."""
    total = h.counts.sum()
    if total == 0 or h.width == 0:
        return h.amax
    cdf = np.cumsum(h.counts) / total
    i = int(np.searchsorted(cdf, percentile / 100.0, side="left"))
    return float(min((i + 1) * h.width, h.amax))


def _quant_mse(centers: np.ndarray, counts: np.ndarray, amax: float, levels: int = QMAX) -> float:
    scale = amax / levels
    q = np.clip(np.round(centers / scale), -levels, levels) * scale
    return float((counts * (centers - q) ** 2).sum())


def mse_amax(h: AbsHistogram, stride: int = 1, start: int = 128) -> float:
    """The bin edge that minimises the expected squared INT8 error over the histogram (bin centres)."""
    if h.width == 0 or h.counts.sum() == 0:
        return h.amax
    centers = (np.arange(h.bins) + 0.5) * h.width
    nz = h.counts > 0
    c, n = centers[nz], h.counts[nz].astype(np.float64)
    best, best_err = h.amax, _quant_mse(c, n, h.amax)
    for i in range(start, h.bins + 1, stride):
        amax = i * h.width
        err = _quant_mse(c, n, amax)
        if err < best_err:
            best, best_err = amax, err
    return float(min(best, h.amax))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    if np.any(q[mask] == 0):
        return float("inf")
    return float((p[mask] * np.log(p[mask] / q[mask])).sum())


def entropy_amax(h: AbsHistogram, levels: int = 128, start: int | None = None, stride: int = 1) -> float:
    """TensorRT EntropyCalibrator2's threshold: the bin count i minimising KL(P ‖ Q).

    For each candidate i ≥ ``levels``: P is the first i bins with every count beyond them folded into
    bin i−1 (clipped outliers); Q quantises the first i bins into ``levels`` groups and spreads each group's
    mass evenly over its non-empty bins. The threshold is the upper edge of bin i−1, i.e. i·width. Both are
    normalised before the KL; empty bins of P do not count.
    """
    counts = h.counts.astype(np.float64)
    if h.width == 0 or counts.sum() == 0:
        return h.amax
    nbins = len(counts)
    last = int(np.nonzero(counts)[0].max()) + 1
    if last <= levels:
        return float(min(last * h.width, h.amax)) if last else h.amax
    start = levels if start is None else max(levels, start)
    best_i, best_kl = nbins, float("inf")
    for i in range(start, min(nbins, last) + 1, stride):
        p = counts[:i].copy()
        p[i - 1] += counts[i:].sum()
        ref = counts[:i]
        nz = (ref > 0).astype(np.float64)
        # i bins → `levels` groups as evenly as possible; each group's mass spread over its non-empty bins
        bounds = np.linspace(0, i, levels + 1).astype(np.int64)
        sums = np.add.reduceat(ref, bounds[:-1])
        nonempty = np.add.reduceat(nz, bounds[:-1])
        per = np.divide(sums, nonempty, out=np.zeros_like(sums), where=nonempty > 0)
        q = np.repeat(per, np.diff(bounds)) * nz
        if q.sum() == 0:  # every value lies beyond the first i bins
            continue
        kl = _kl(p / p.sum(), q / q.sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    return float(min(best_i * h.width, h.amax))


OBSERVERS: dict[str, Callable[[AbsHistogram], float]] = {
    "minmax": minmax_amax,
    "percentile": percentile_amax,
    "mse": mse_amax,
    "entropy": entropy_amax,
}
