"""A search that scales (issue 20: a 640² detector quantized in minutes on 2 cores): when every candidate on every
evaluation row would not fit a share of ``--search-seconds``, all candidates get a first look on fewer rows and
only the best go on; the manifest says which were dropped, on how many rows, and how long each step took."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from nanoify.config import QuantizeConfig, TimingConfig
from nanoify.errors import ConfigError
from nanoify.quant import steps
from nanoify.quant.run import quantize
from nanoify.quant.steps import MIN_HELD_BATCH, MIN_SCREEN_ROWS, SCREEN_KEEP, fit_timing, held_batch, screen_rows

FAST = TimingConfig(latency_rows=8, throughput_rows=32, rounds=1)


def test_first_look_rows_fit_the_time_share():
    # 20 candidates × 0.1 s × 49 rows + 4 going on × 0.1 s × 128 rows = 149 s ≤ 150 s
    assert screen_rows(20, 0.1, 128, 150.0) == 49
    assert screen_rows(20, 0.1, 128, 1e6) == 128  # everything fits: no first look
    assert screen_rows(SCREEN_KEEP, 10.0, 128, 1.0) == 128  # nothing would be dropped: no first look
    assert screen_rows(20, 10.0, 128, 1.0) == MIN_SCREEN_ROWS  # never fewer rows than the floor
    assert screen_rows(20, 10.0, 8, 1.0) == 8  # nor more than there are


def test_first_look_counts_what_each_model_costs_besides_its_rows():
    # 20 × (2 s + 0.1 s × r) + 4 × (2 s + 0.1 s × 128) ≤ 250 s → r = 75 (99 when models cost nothing more)
    assert screen_rows(20, 0.1, 128, 250.0, per_model=2.0) == 75 < screen_rows(20, 0.1, 128, 250.0) == 99
    assert screen_rows(20, 0.1, 128, 100.0, per_model=2.0) == MIN_SCREEN_ROWS  # no row left: the floor


def test_the_timing_batch_halves_until_the_engines_held_together_fit():
    row = 3 * 640 * 640 * 4  # a 640² frame in float32: 4.9 MB
    assert held_batch(32, row, 7) == 4  # 7 engines × 8 rows × 4.9 MB = 275 MB > 256 MiB; × 4 rows = 138 MB
    assert held_batch(32, 3 * 32 * 32 * 4, 20) == 32  # CIFAR-10 frames: nothing to shrink
    assert held_batch(32, row, 100) == MIN_HELD_BATCH  # never below the floor (then one engine at a time)
    assert held_batch(1, row, 7) == 1  # nor above what the task allows


def test_timing_rows_fit_their_time_share():
    t = TimingConfig()  # 200 rows at batch 1, 512 at batch 32, 3 rounds
    assert fit_timing(t, 10, 0.001, 150.0, 32) is t  # 10 models × 3 rounds × 712 rows × 1 ms = 21 s: fits
    # a 640² detector at 0.1 s a row: 2136 s → rows shrink by one factor, to the floors here
    small = fit_timing(t, 10, 0.1, 150.0, 32)
    assert (small.latency_rows, small.throughput_rows, small.rounds) == (20, 64, 3)
    mid = fit_timing(t, 10, 0.01, 150.0, 32)  # 213.6 s → × 0.70
    assert (mid.latency_rows, mid.throughput_rows) == (140, 352)
    assert 10 * 0.01 * 3 * (mid.latency_rows + mid.throughput_rows) <= 150.0


def test_a_short_search_looks_at_all_candidates_first_and_goes_on_with_the_best(tmp_path, tiny_cnn_export,
                                                                                  tiny_images):
    """Forced: a search time no full evaluation fits."""
    man = quantize(tiny_cnn_export, tmp_path / "q", calib=str(tiny_images), progress=False,
                   config=QuantizeConfig(budget=5.0, methods=("minmax", "mse", "percentile"), timing=FAST,
                                         cpu_engine="onnxruntime", rounding=("nearest",), bias_correction=False,
                                         search_seconds=1e-3))
    look = man["screening"]
    assert look["rows"] == MIN_SCREEN_ROWS < look["of"] == man["data"]["eval_rows"]
    dropped = {d["name"] for d in look["dropped"]}
    full = [c for c in man["candidates"] if c["name"] in look["kept"]]
    int8 = [c for c in full if c["scheme"]["type"] != "Float"]
    assert len(int8) == SCREEN_KEEP and dropped and not dropped & {c["name"] for c in man["candidates"]}
    assert {c["scheme"]["scope"] for c in int8} == {"weights", "all"}  # each kind's best goes on to be timed
    assert all(c["n"] == look["of"] for c in full)  # the survivors were measured on every row
    assert all(d["rows"] == MIN_SCREEN_ROWS for d in look["dropped"])
    assert man["chosen"] not in dropped
    assert {"reference", "calibration", "screening", "candidates", "timing"} <= set(man["step_seconds"])
    assert "Search time" in (tmp_path / "q" / "report.md").read_text()


def test_a_bad_search_time_is_refused():
    with pytest.raises(ConfigError, match="--search-seconds must be positive"):
        QuantizeConfig(search_seconds=0)


def test_a_short_search_makes_no_bias_corrected_twin_and_says_so(tmp_path, tiny_cnn_export, tiny_images):
    """Forced: a search time nothing fits; the twins are optional, so none is made (the report says which)."""
    man = quantize(tiny_cnn_export, tmp_path / "q", calib=str(tiny_images), progress=False,
                   config=QuantizeConfig(budget=5.0, methods=("minmax",), timing=FAST, cpu_engine="onnxruntime",
                                         rounding=("nearest",), bias_correction=True, search_seconds=1e-3))
    skipped = man["bias_correction"]["skipped_for_time"]
    assert skipped and all(n.endswith("-bc") for n in skipped)
    assert not [c for c in man["candidates"] if c["name"].endswith("-bc")]
    assert "not made, for --search-seconds: " + skipped[0] in (tmp_path / "q" / "report.md").read_text()


def test_large_inputs_are_timed_with_one_engine_open_at_a_time(tmp_path, tiny_cnn_export, tiny_images, monkeypatch):
    """Forced: a hold limit every batch passes. The final timing then opens each model alone in each round
    (a 640² detector's engines held together at batch 32 took 18 GB); without it they are held side by side."""
    def most_open(hold: int, out: str) -> int:
        state = {"open": 0, "most": 0}
        real = steps._engine

        @contextmanager
        def counting(*a, **k):
            with real(*a, **k) as eng:
                state["open"] += 1
                state["most"] = max(state["most"], state["open"])
                try:
                    yield eng
                finally:
                    state["open"] -= 1

        monkeypatch.setattr(steps, "_engine", counting)
        monkeypatch.setattr(steps, "HOLD_BYTES", hold)
        man = quantize(tiny_cnn_export, tmp_path / out, calib=str(tiny_images), progress=False,
                       config=QuantizeConfig(budget=5.0, methods=("minmax",), timing=FAST, cpu_engine="onnxruntime",
                                             rounding=("nearest",), bias_correction=False))
        assert all(c.get("throughput", 0) > 0 for c in man["candidates"])
        return state["most"]

    assert most_open(0, "one") == 1
    assert most_open(2**40, "all") > 1


def test_when_even_the_fewest_timing_rows_overrun_only_what_can_be_chosen_is_timed(tmp_path, tiny_cnn_export,
                                                                                    tiny_images, monkeypatch):
    """Forced: a search time nothing fits, and every model much smaller than FP32 (the INT8 ones) outside the
    budget. Candidates outside the budget are never chosen, so they are not timed; the report names them."""
    real = steps.check_budget

    def int8_misses(ref, got, *a, **k):
        chk = real(ref, got, *a, **k)
        return SimpleNamespace(drop_pts=chk.drop_pts, met=False) if got["file_mb"] < 0.9 * ref["file_mb"] else chk

    monkeypatch.setattr(steps, "check_budget", int8_misses)
    man = quantize(tiny_cnn_export, tmp_path / "q", calib=str(tiny_images), progress=False,
                   config=QuantizeConfig(budget=5.0, methods=("minmax",), timing=FAST,
                                         cpu_engine="onnxruntime", rounding=("nearest",), bias_correction=False,
                                         search_seconds=1e-3))
    missed = [c["name"] for c in man["candidates"] if not c["meets_budget"]]
    assert missed and man["not_timed"] == missed
    for c in man["candidates"]:
        assert ("throughput" in c) == c["meets_budget"], c["name"]
    assert "latency_ms_p50" in man["reference"]
    assert "Not timed (outside the budget" in (tmp_path / "q" / "report.md").read_text()
