"""Histogram and range choice against brute-force numpy on hand-built data."""

import math

import numpy as np
import pytest

from nanoify.errors import DataError
from nanoify.quant.histogram import AbsHistogram
from nanoify.quant.observers import OBSERVERS, entropy_amax, minmax_amax, mse_amax, percentile_amax


def _feed(x, batches=1, bins=2048):
    h = AbsHistogram(bins=bins, name="t")
    for part in np.array_split(x, batches):
        h.update(part)
    return h


def test_minmax_is_exact_and_histogram_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000).astype(np.float32) * 3
    h = _feed(x)
    assert minmax_amax(h) == float(np.abs(x).max())
    assert (h.min, h.max, h.n) == (float(x.min()), float(x.max()), x.size)
    want, _ = np.histogram(np.abs(x), bins=h.edges)
    assert np.abs(h.counts - want).sum() <= 2  # float rounding at bin edges only
    assert h.counts.sum() == x.size


def test_growing_range_regroups_bins_exactly():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-1, 1, 5000), rng.uniform(-7, 7, 5000), [-50.0]]).astype(np.float32)
    h = _feed(x, batches=3)
    want, _ = np.histogram(np.abs(x), bins=h.edges)
    assert h.counts.sum() == x.size
    assert np.abs(h.counts - want).sum() <= 4
    assert h.width * h.bins >= 50.0


def test_memory_does_not_grow_with_samples():
    h = AbsHistogram(name="t")
    rng = np.random.default_rng(2)
    for i in range(200):
        h.update(rng.normal(size=(8, 64)) * (1 + i / 50))
    assert h.counts.shape == (2048,) and h.n == 200 * 8 * 64


def test_merge_equals_one_histogram_of_all_data():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=4000), rng.normal(size=4000) * 4
    h1, h2 = _feed(a), _feed(b)
    h1.merge(h2)
    whole = _feed(np.concatenate([a, b]))
    assert (h1.min, h1.max, h1.n) == (whole.min, whole.max, whole.n)
    assert h1.counts.sum() == whole.counts.sum()
    assert percentile_amax(h1, 99.0) == pytest.approx(np.percentile(np.abs(np.concatenate([a, b])), 99),
                                                      abs=2 * h1.width)


def test_nan_is_a_clear_error_naming_the_tensor():
    h = AbsHistogram(name="/encoder/layer.0/Add_output_0")
    with pytest.raises(DataError, match="layer.0/Add_output_0 has 1 NaN/inf"):
        h.update(np.array([1.0, np.nan, 2.0]))


def test_percentile_within_one_bin_of_numpy():
    rng = np.random.default_rng(4)
    x = rng.standard_t(3, size=50000)
    h = _feed(x, batches=5)
    for p in (90.0, 99.0, 99.9):
        want = np.percentile(np.abs(x), p, method="inverted_cdf")  # smallest |x| with cdf >= p
        assert percentile_amax(h, p) == pytest.approx(want, abs=1.01 * h.width)


def _brute_quant_mse(x, amax):
    s = amax / 127
    return float(((x - np.clip(np.round(x / s), -127, 127) * s) ** 2).mean())


def test_mse_choice_is_close_to_brute_force_optimum():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=30000), rng.normal(size=30) * 40])
    h = _feed(x)
    chosen = mse_amax(h, stride=4)
    cands = np.linspace(0.5, np.abs(x).max(), 400)
    best = min(_brute_quant_mse(x, c) for c in cands)
    assert _brute_quant_mse(x, chosen) <= 1.1 * best


def _reference_entropy(counts, width, levels=128):
    """TensorRT's pseudo-code, written the slow obvious way."""
    best_i, best = None, math.inf
    last = max(i for i, c in enumerate(counts) if c > 0) + 1
    for i in range(levels, min(len(counts), last) + 1):
        p = [float(c) for c in counts[:i]]
        p[-1] += float(sum(counts[i:]))
        ref = counts[:i]
        q = [0.0] * i
        bounds = [int(v) for v in np.linspace(0, i, levels + 1)]
        for g in range(levels):
            a, b = bounds[g], bounds[g + 1]
            nz = [j for j in range(a, b) if ref[j] > 0]
            for j in nz:
                q[j] = float(sum(ref[a:b])) / len(nz)
        ps, qs = sum(p), sum(q)
        kl = 0.0
        for pj, qj in zip(p, q, strict=True):
            if pj > 0:
                kl = math.inf if qj == 0 else kl + pj / ps * math.log((pj / ps) / (qj / qs))
        if kl < best:
            best_i, best = i, kl
    return best_i * width


def test_entropy_matches_reference_on_a_known_histogram():
    rng = np.random.default_rng(6)
    counts = np.zeros(512, dtype=np.int64)
    counts[:300] = (1000 * np.exp(-np.arange(300) / 40)).astype(np.int64) + 1
    counts[500] = 3  # a few far outliers
    h = AbsHistogram(bins=512, width=0.01, counts=counts, min=-5.01, max=5.01, n=int(counts.sum()))
    got = entropy_amax(h)
    assert got == pytest.approx(_reference_entropy(counts.tolist(), 0.01))
    assert got <= 3.0  # the outliers at 5.0 are clipped
    # all mass inside the first 128 bins: nothing to clip, threshold is the last non-empty bin's edge
    small = np.zeros(512, dtype=np.int64)
    small[:100] = 5
    h2 = AbsHistogram(bins=512, width=0.01, counts=small, min=-1.0, max=1.0, n=500)
    assert entropy_amax(h2) == pytest.approx(1.0)
    del rng


def test_entropy_keeps_full_range_for_uniform_data():
    x = np.linspace(-1, 1, 100001)
    h = _feed(x)
    assert entropy_amax(h, stride=8) == pytest.approx(1.0, rel=0.01)


def test_observer_registry():
    h = _feed(np.random.default_rng(7).normal(size=5000))
    for name, fn in OBSERVERS.items():
        v = fn(h)
        assert 0 < v <= h.amax, name
