"""A mergeable histogram of |x| that reduces each batch as it arrives.

Memory is the bin array (2048 int64 by default) plus a few scalars per tensor, whatever the number of
calibration samples, unlike calibrators that keep every intermediate output until the end.

When a batch exceeds the current range, the range grows by an integer factor k and every k adjacent
bins are summed into one: bin edges stay aligned, so no count is ever split or interpolated and merging
is exact. Exact signed min/max are kept beside the histogram for the min-max observer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

DEFAULT_BINS = 2048


@dataclass
class AbsHistogram:
    """Counts of |x| in ``bins`` equal bins over [0, width·bins); plus exact min, max and count."""

    bins: int = DEFAULT_BINS
    width: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    min: float = math.inf
    max: float = -math.inf
    n: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if self.counts.size == 0:
            self.counts = np.zeros(self.bins, dtype=np.int64)

    @property
    def amax(self) -> float:
        """Largest |x| seen."""
        return max(abs(self.min), abs(self.max)) if self.n else 0.0

    @property
    def edges(self) -> np.ndarray:
        return np.arange(self.bins + 1, dtype=np.float64) * self.width

    def _grow(self, new_amax: float) -> None:
        if self.width == 0.0:
            # first non-zero data: a little headroom so the next batch rarely forces a regroup
            self.width = new_amax / self.bins * (1 + 1e-6)
            return
        k = math.ceil(new_amax / (self.width * self.bins) * (1 + 1e-9))
        if k <= 1:
            return
        pad = (-self.bins) % k
        c = np.concatenate([self.counts, np.zeros(pad, dtype=np.int64)]).reshape(-1, k).sum(1)
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.counts[: c.size] = c
        self.width *= k

    def update(self, x: np.ndarray) -> AbsHistogram:
        """Add one batch of values (any shape). NaN or inf is a DataError naming the tensor."""
        x = np.asarray(x)
        if x.size == 0:
            return self
        xf = x.astype(np.float32, copy=False).ravel()
        lo, hi = float(xf.min()), float(xf.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~np.isfinite(xf)).sum())
            raise DataError(f"tensor {self.name or '?'} has {bad} NaN/inf values in the calibration data; "
                            "check the inputs (or the model's FP32 outputs) before calibrating")
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.n += xf.size
        amax = max(abs(lo), abs(hi))
        if amax > 0 and (self.width == 0.0 or amax >= self.width * self.bins):
            self._grow(amax)
        if self.width == 0.0:
            self.counts[0] += xf.size
            return self
        idx = np.minimum((np.abs(xf) / self.width).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(idx, minlength=self.bins)
        return self

    def merge(self, other: AbsHistogram) -> AbsHistogram:
        """Add another histogram's counts (e.g. from another worker); both grow to a common range."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.width, self.counts = other.width, other.counts.copy()
            self.min, self.max, self.n = other.min, other.max, other.n
            return self
        a, b = (self, other) if self.width >= other.width else (other, self)
        wide = AbsHistogram(self.bins, a.width, a.counts.copy())
        if b.width > 0:
            # regroup the finer one into the wider one's bins (exact when widths are integer multiples)
            centers = (np.arange(b.bins) + 0.5) * b.width
            top = centers.max() if b.counts.any() else 0.0
            if top >= wide.width * wide.bins:
                wide._grow(top)
            idx = np.minimum((centers / wide.width).astype(np.int64), wide.bins - 1)
            np.add.at(wide.counts, idx, b.counts)
        else:
            wide.counts[0] += b.counts.sum()
        self.width, self.counts = wide.width, wide.counts
        self.min, self.max, self.n = min(self.min, other.min), max(self.max, other.max), self.n + other.n
        return self
