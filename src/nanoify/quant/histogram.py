"""A mergeable histogram of |x| that reduces each batch as it arrives, independent of how data is batched.

Bins are *fine* and their width is always a power of two (``2**exp``): the first batch picks the width
that puts its largest |x| within ``FINE_INIT`` bins; later batches with larger values append bins of the
same width (as ModelOpt's calibrator does), and only when the array would exceed ``FINE_MAX`` bins are
neighbouring pairs summed (width doubles). Because every width is a power of two and every bin starts at
a multiple of its width, two histograms always regroup onto a common grid by summing whole bins: updating
and merging are exact (``|x| / 2**exp`` is exact in floating point), whatever the batching.

Range choice does not look at the fine bins directly: :meth:`AbsHistogram.view` redistributes them into
the classic calibration histogram of ``bins`` (2048) equal bins over ``[0, max|x|]`` — the one TensorRT's
entropy calibrator and ModelOpt search — splitting a fine bin proportionally where a coarse edge cuts it.
With at least 8 fine bins per coarse bin, the view is the same (to a fraction of a count per bin) whether a
tensor arrived in one batch or in sixteen; the old design merged bins k at a time as the range grew and
left 1025–1903 of 2048 bins populated after 16 batches.

Memory per tensor is the fine array (at most ``FINE_MAX`` int64 = 512 KiB; 128 to 256 KiB for the first
batches' range) plus a few scalars, whatever the number of calibration samples. Exact signed min and max are
kept beside it (min-max ranges, signedness).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

DEFAULT_BINS = 2048
FINE_INIT = 1 << 14  # the first batch's max|x| lands within this many fine bins (8 to 16 per coarse bin)
FINE_MAX = 1 << 16  # beyond this many fine bins, pairs are summed (never fewer than 8 per coarse bin)


@dataclass(frozen=True)
class HistView:
    """``counts`` of |x| in ``len(counts)`` equal bins of ``width`` over [0, amax] (counts may be fractional
    where a fine bin was split); ``amax`` = max|x|, ``min`` the signed minimum (≥ 0: a non-negative tensor)."""

    counts: np.ndarray
    width: float
    amax: float
    min: float = 0.0

    @property
    def bins(self) -> int:
        return len(self.counts)

    @property
    def edges(self) -> np.ndarray:
        return np.arange(self.bins + 1, dtype=np.float64) * self.width

    @property
    def centers(self) -> np.ndarray:
        return (np.arange(self.bins, dtype=np.float64) + 0.5) * self.width


@dataclass
class AbsHistogram:
    """Fine counts of |x| in bins of width ``2**exp`` starting at 0; plus exact min, max and count.

    Attributes:
        bins: number of bins of the calibration view (:meth:`view`), 2048 as in TensorRT and ModelOpt.
    """

    bins: int = DEFAULT_BINS
    name: str = ""
    exp: int | None = None
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    zeros: int = 0  # values seen while every value so far was 0 (no width chosen yet)
    min: float = math.inf
    max: float = -math.inf
    n: int = 0

    @property
    def amax(self) -> float:
        """Largest |x| seen."""
        return max(abs(self.min), abs(self.max)) if self.n else 0.0

    @property
    def fine_width(self) -> float:
        return 0.0 if self.exp is None else math.ldexp(1.0, self.exp)

    @property
    def nonnegative(self) -> bool:
        """True when no value below zero was seen (post-ReLU, sigmoid, softmax): an unsigned range fits."""
        return self.n > 0 and self.min >= 0.0

    def _coarsen(self, exp: int) -> None:
        """Regroup to width ``2**exp`` (≥ the current width) by summing whole bins: exact."""
        assert self.exp is not None and exp >= self.exp
        k = 1 << (exp - self.exp)
        if k > 1:
            pad = (-self.counts.size) % k
            c = np.concatenate([self.counts, np.zeros(pad, dtype=np.int64)]) if pad else self.counts
            self.counts = c.reshape(-1, k).sum(1)
            self.exp = exp

    def _fit(self, amax: float) -> None:
        """Make room for values up to ``amax``: choose the width on first data, append bins, coarsen."""
        if self.exp is None:
            # smallest power of two with amax / width <= FINE_INIT
            self.exp = math.ceil(math.log2(amax / FINE_INIT))
            if amax / self.fine_width >= FINE_INIT:  # log2 rounding at exact powers of two
                self.exp += 1
            self.counts = np.zeros(int(amax / self.fine_width) + 1, dtype=np.int64)
            self.counts[0] += self.zeros
            self.zeros = 0
        need = int(amax / self.fine_width) + 1
        exp = self.exp
        while need > FINE_MAX:
            exp += 1
            need = int(amax / math.ldexp(1.0, exp)) + 1
        self._coarsen(exp)
        if need > self.counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(need - self.counts.size, dtype=np.int64)])

    def _index(self, a: np.ndarray) -> np.ndarray:
        """Fine bin of each |x| (exact: scaling by a power of two does not round)."""
        assert self.exp is not None
        if -120 < self.exp < 100 and a.dtype == np.float32:
            return np.floor(a * np.float32(math.ldexp(1.0, -self.exp))).astype(np.int64)
        return np.floor(a.astype(np.float64) * math.ldexp(1.0, -self.exp)).astype(np.int64)

    def update(self, x: np.ndarray) -> AbsHistogram:
        """Add one batch of values (any shape). NaN or inf is a DataError naming the tensor."""
        x = np.asarray(x)
        if x.size == 0:
            return self
        xf = x.ravel()
        if xf.dtype != np.float64:
            xf = xf.astype(np.float32, copy=False)
        lo, hi = float(xf.min()), float(xf.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~np.isfinite(xf)).sum())
            raise DataError(f"tensor {self.name or '?'} has {bad} NaN/inf values in the calibration data; "
                            "check the inputs (or the model's FP32 outputs) before calibrating")
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.n += xf.size
        amax = max(abs(lo), abs(hi))
        if amax == 0.0 and self.exp is None:
            self.zeros += xf.size
            return self
        self._fit(amax)
        self.counts += np.bincount(self._index(np.abs(xf)), minlength=self.counts.size)[: self.counts.size]
        return self

    def merge(self, other: AbsHistogram) -> AbsHistogram:
        """Add another histogram's counts (e.g. from another worker). Exact: both regroup onto the coarser
        power-of-two grid by summing whole bins."""
        if other.n == 0:
            return self
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.n += other.n
        if other.exp is None:
            if self.exp is None:
                self.zeros += other.zeros
            else:
                self.counts[0] += other.zeros
            return self
        theirs = AbsHistogram(self.bins, other.name, other.exp, other.counts.copy())
        if self.exp is None:
            theirs.counts[0] += self.zeros
            self.exp, self.counts, self.zeros = theirs.exp, theirs.counts, 0
            return self
        exp = max(self.exp, theirs.exp)
        self._coarsen(exp)
        theirs._coarsen(exp)
        self._fit(self.amax)
        theirs._fit(self.amax)
        size = max(self.counts.size, theirs.counts.size)
        out = np.zeros(size, dtype=np.int64)
        out[: self.counts.size] += self.counts
        out[: theirs.counts.size] += theirs.counts
        self.counts = out
        return self

    def fine(self) -> tuple[np.ndarray, float]:
        """(fine counts, fine width); all zeros collapse into one bin of width 0."""
        if self.exp is None:
            return np.array([self.zeros], dtype=np.int64), 0.0
        return self.counts, self.fine_width

    def view(self, bins: int | None = None) -> HistView:
        """The calibration histogram: ``bins`` equal bins over [0, max|x|], fine bins split proportionally
        where a coarse edge cuts them (the values of a fine bin are taken as spread evenly over it)."""
        bins = bins or self.bins
        amax = self.amax
        if self.n == 0 or amax == 0.0:
            c = np.zeros(bins)
            c[0] = self.n
            return HistView(c, 0.0, amax, 0.0 if self.n == 0 else self.min)
        counts, w = self.fine()
        cum = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
        width = amax / bins
        pos = np.arange(bins + 1, dtype=np.float64) * (width / w)  # coarse edges in fine-bin units
        c = np.interp(pos, np.arange(cum.size, dtype=np.float64), cum)
        c[-1] = cum[-1]  # every value is ≤ amax; the fine bin holding amax may reach past it
        return HistView(np.diff(c), width, amax, self.min)
