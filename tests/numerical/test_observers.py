"""Histogram and range choice against brute-force numpy and a slow reference of TensorRT's algorithm."""

import math
from collections import Counter

import numpy as np
import pytest

from nanoify.errors import DataError
from nanoify.quant.histogram import FINE_MAX, AbsHistogram, HistView
from nanoify.quant.observers import (
    OBSERVERS,
    entropy_amax,
    histogram_sqnr_db,
    minmax_amax,
    mse_amax,
    percentile_amax,
    sqnr_db,
)


def _feed(x, batches=1):
    h = AbsHistogram(name="t")
    for part in np.array_split(np.asarray(x), batches):
        h.update(part)
    return h


def _brute_fine(x, h):
    """np.histogram of |x| on the histogram's own fine edges."""
    counts, w = h.fine()
    want, _ = np.histogram(np.abs(np.asarray(x, dtype=np.float64)), bins=np.arange(counts.size + 1) * w)
    return counts, want


def test_fine_counts_equal_numpy_exactly_even_as_the_range_grows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000).astype(np.float32) * 3
    h = _feed(x)
    counts, want = _brute_fine(x, h)
    assert np.array_equal(counts, want) and counts.sum() == x.size
    assert minmax_amax(h) == float(np.abs(x).max())
    assert (h.min, h.max, h.n) == (float(x.min()), float(x.max()), x.size)
    assert math.log2(h.fine_width) == int(math.log2(h.fine_width))  # a power of two
    # growth by a factor of 500 across batches: bins are appended, then pairs summed, never split
    grow = np.concatenate([rng.uniform(-1, 1, 5000), rng.uniform(-7, 7, 5000), [-500.0]]).astype(np.float32)
    h = _feed(grow, batches=3)
    counts, want = _brute_fine(grow, h)
    assert np.array_equal(counts, want) and counts.size <= FINE_MAX


def test_merge_is_exact():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=4000), rng.normal(size=4000) * 40
    whole = _feed(np.concatenate([a, b]))
    for first, second in ((a, b), (b, a)):
        h = _feed(first).merge(_feed(second))
        assert h.exp == whole.exp and np.array_equal(h.counts, whole.counts)
        assert (h.min, h.max, h.n) == (whole.min, whole.max, whole.n)
    zeros = _feed(np.zeros(10))
    assert zeros.exp is None and zeros.amax == 0.0
    h = _feed(a).merge(zeros)
    assert h.n == a.size + 10 and h.counts.sum() == a.size + 10
    z2 = _feed(np.zeros(10)).merge(_feed(a))
    assert np.array_equal(z2.counts, h.counts)


def test_memory_does_not_grow_with_samples():
    h = AbsHistogram(name="t")
    rng = np.random.default_rng(2)
    for i in range(200):
        h.update(rng.normal(size=(8, 64)) * (1 + i / 50))
    assert h.counts.size <= FINE_MAX and h.n == 200 * 8 * 64 and h.counts.sum() == h.n


def test_the_view_does_not_depend_on_batching():
    rng = np.random.default_rng(4)
    tokens = 1 << 11
    x = rng.normal(scale=0.5, size=(tokens, 512))
    x[:, [7, 99]] = rng.normal(loc=-8.0, scale=4.0, size=(tokens, 2))  # BERT-like outlier dimensions
    x = x.ravel().astype(np.float32)
    one, sixteen = _feed(x, 1), _feed(x, 16)
    v1, v16 = one.view(), sixteen.view()
    assert v1.bins == v16.bins == 2048 and v1.amax == v16.amax
    assert np.abs(v1.counts - v16.counts).max() <= 0.01 * x.size / 2048
    assert (v1.counts > 0).sum() == (v16.counts > 0).sum()
    for name, fn in OBSERVERS.items():
        assert fn(one) == pytest.approx(fn(sixteen), rel=0.01), name


def test_nan_is_a_clear_error_naming_the_tensor():
    h = AbsHistogram(name="/encoder/layer.0/Add_output_0")
    with pytest.raises(DataError, match="layer.0/Add_output_0 has 1 NaN/inf"):
        h.update(np.array([1.0, np.nan, 2.0]))


def test_percentile_within_one_bin_of_numpy():
    rng = np.random.default_rng(4)
    x = rng.standard_t(3, size=50000)
    h = _feed(x, batches=5)
    w = h.view().width
    a = np.sort(np.abs(x))
    for p in (90.0, 99.0, 99.9):
        want = a[math.ceil(a.size * p / 100 - 1e-9) - 1]  # smallest |x| with cdf >= p
        assert percentile_amax(h, p) == pytest.approx(want, abs=1.01 * w)


def test_percentile_default_is_99_99():
    """The percentile method without an explicit value keeps 99.99% of |x| (TensorRT's and ModelOpt's default):
    0.05% of outliers at 100 lie inside a 99.99% range and outside a 99.9% one."""
    from nanoify.quant.calibrate import choose_ranges

    rng = np.random.default_rng(6)
    x = np.concatenate([rng.uniform(-1, 1, size=99_950), np.full(50, 100.0)])
    h = _feed(x)
    assert percentile_amax(h, 99.9) <= 1.1 and percentile_amax(h) == pytest.approx(100.0, rel=0.02)
    assert choose_ranges({"t": h}, "percentile")["t"].amax == pytest.approx(100.0, rel=0.02)


def test_mse_choice_is_close_to_brute_force_optimum_signed_and_unsigned():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=30000), rng.normal(size=30) * 40])
    relu = np.maximum(x, 0)
    for data, unsigned in ((x, False), (relu, True)):
        h = _feed(data)
        chosen = mse_amax(h, unsigned=unsigned)
        cands = np.linspace(0.5, np.abs(data).max(), 400)
        best = max(sqnr_db(data, c, unsigned=unsigned) for c in cands)
        assert sqnr_db(data, chosen, unsigned=unsigned) >= best - 0.1
        # the histogram's own estimate of the SQNR is close to the real one
        assert histogram_sqnr_db(h, chosen, unsigned=unsigned) == pytest.approx(
            sqnr_db(data, chosen, unsigned=unsigned), abs=0.3)


def _reference_entropy(counts, width, levels=128, start=128):
    """TensorRT's calibration as ModelOpt implements it, the slow obvious way: the zero-bin rule, then for each
    candidate i: P = bins[:i] with the tail folded into bin i-1; Q = bins grouped into `levels` by
    digitize(j, linspace(0, i, levels+1)) (level k starts at ceil(k*i/levels)), each level's count spread
    evenly over its non-empty bins; KL(P||Q) with both normalised; the last minimum wins."""
    bins = [float(c) for c in counts]
    bins[0] = bins[1]
    kls = []
    for i in range(start, len(bins) + 1):
        group = [max(g for g in range(levels + 1) if math.ceil(g * i / levels) <= j) for j in range(i)]
        sums, nonempty = Counter(), Counter()
        for j in range(i):
            if bins[j] > 0:
                sums[group[j]] += bins[j]
                nonempty[group[j]] += 1
        q = [sums[group[j]] / nonempty[group[j]] if bins[j] > 0 else 0.0 for j in range(i)]
        p = bins[:i]
        p[-1] += sum(bins[i:])
        ps, qs = sum(p), sum(q)
        kl = 0.0
        for pj, qj in zip(p, q, strict=True):
            if pj > 0:
                kl = math.inf if qj == 0 else kl + pj / ps * math.log((pj / ps) / (qj / qs))
        kls.append(kl)
    best = min(kls)
    i = start + max(k for k, v in enumerate(kls) if v == best)
    return i * width


@pytest.mark.parametrize("kind", ["relu_spike", "decay_with_outliers", "uneven_groups"])
def test_entropy_matches_the_reference_algorithm(kind):
    rng = np.random.default_rng(6)
    n = 300
    if kind == "relu_spike":  # half the values in bin 0: the zero-bin rule decides the answer
        counts = (5000 * np.exp(-np.arange(n) / 30)).astype(np.int64) + 1
        counts[0] = int(counts.sum())
    elif kind == "decay_with_outliers":
        counts = (1000 * np.exp(-np.arange(n) / 40)).astype(np.int64) + 1
        counts[n - 1] = 3
    else:  # i not a multiple of levels: floor and ceil group edges differ
        counts = rng.integers(0, 50, size=n) * (rng.random(n) > 0.3)
        counts[:5] = 400
    v = HistView(counts.astype(np.float64), 0.01, n * 0.01)
    assert entropy_amax(v, start=128) == pytest.approx(_reference_entropy(counts.tolist(), 0.01))
    vu = HistView(counts.astype(np.float64), 0.01, n * 0.01)
    assert entropy_amax(vu, unsigned=True, start=128) == pytest.approx(
        _reference_entropy(counts.tolist(), 0.01, levels=256))


def test_zero_bin_rule_keeps_post_relu_ranges_from_collapsing():
    rng = np.random.default_rng(8)
    x = np.maximum(rng.normal(size=1 << 18), 0).astype(np.float32)
    amax = entropy_amax(_feed(x))
    assert amax > 3.0  # without the rule the spike at 0 pulls the threshold to a fraction of this
    assert sqnr_db(x, amax) > 38.0


def test_unsigned_ranges_double_the_resolution_of_non_negative_tensors():
    rng = np.random.default_rng(9)
    x = np.maximum(rng.normal(size=1 << 16), 0).astype(np.float32)
    h = _feed(x)
    assert h.nonnegative and not _feed(x - 0.1).nonnegative
    signed = sqnr_db(x, mse_amax(h))
    unsigned = sqnr_db(x, mse_amax(h, unsigned=True), unsigned=True)
    assert unsigned - signed > 5.0  # one more bit of resolution is ~6 dB


def test_entropy_keeps_full_range_for_uniform_data():
    x = np.linspace(-1, 1, 100001)
    assert entropy_amax(_feed(x), stride=8) == pytest.approx(1.0, rel=0.01)


def test_observer_registry():
    h = _feed(np.random.default_rng(7).normal(size=5000))
    for name, fn in OBSERVERS.items():
        v = fn(h)
        assert 0 < v <= h.amax, name


def test_the_config_knows_every_observer():
    from nanoify.config import CALIBRATION_METHODS

    assert tuple(OBSERVERS) == CALIBRATION_METHODS
