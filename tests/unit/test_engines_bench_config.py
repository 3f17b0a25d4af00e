"""Unit tests of the engine contract, the bench helpers and the configs (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from nanoify.bench.run import _median_of_runs, format_table, noise_reasons
from nanoify.config import BenchConfig, QuantizeConfig, TimingConfig, from_dict
from nanoify.engines.base import EngineUnavailable, check_feed
from nanoify.errors import ConfigError, DataError
from nanoify.pipeline import CompressConfig, ModelSource
from nanoify.tasks import synthetic_feed

TEXT = {"input_ids": ("int64", ["batch", "sequence"]), "attention_mask": ("int64", ["batch", "sequence"])}
IMAGE = {"input": ("float", ["batch", 3, 32, 32])}


def test_feeds_are_checked_against_the_engine_spec():
    ids = np.ones((2, 10), dtype=np.int64)
    out = check_feed(TEXT, {"input_ids": ids, "attention_mask": ids, "token_type_ids": ids})
    assert set(out) == {"input_ids", "attention_mask"}  # inputs the model does not take are dropped
    with pytest.raises(EngineUnavailable, match="needs input"):
        check_feed(TEXT, {"input_ids": ids})
    with pytest.raises(DataError, match="truncate the inputs to 8 tokens"):
        check_feed(TEXT, {"input_ids": ids, "attention_mask": ids}, {"sequence": 8})
    with pytest.raises(DataError, match="is float32 but the model takes int64"):
        check_feed(TEXT, {"input_ids": ids.astype(np.float32), "attention_mask": ids})
    img = np.zeros((1, 3, 32, 32), dtype=np.float32)
    assert check_feed(IMAGE, {"input": img})["input"] is img
    with pytest.raises(DataError, match="axis 2 is 33 but the model was built for 32"):
        check_feed(IMAGE, {"input": np.zeros((1, 3, 33, 32), dtype=np.float32)})
    with pytest.raises(DataError, match="rank 3"):
        check_feed(IMAGE, {"input": np.zeros((3, 32, 32), dtype=np.float32)})
    half = {"input": ("float16", ["batch", 3, 32, 32])}
    assert check_feed(half, {"input": img})["input"].dtype == np.float16  # a float16 model gets float16


def test_synthetic_feeds_come_from_the_spec():
    f = synthetic_feed(TEXT, {"batch": 4, "sequence": 16}, {"input_ids": (5, 9), "attention_mask": (1, 2)})
    assert f["input_ids"].shape == (4, 16) and f["input_ids"].dtype == np.int64
    assert f["input_ids"].min() >= 5 and f["input_ids"].max() < 9 and (f["attention_mask"] == 1).all()
    g = synthetic_feed(IMAGE, {"batch": 2})
    assert g["input"].shape == (2, 3, 32, 32) and g["input"].dtype == np.float32
    with pytest.raises(DataError, match="dynamic axis 'height'"):
        synthetic_feed({"x": ("float32", ["batch", 3, "height", "width"])}, {"batch": 1})
    ir = {"input_ids": ("int64", ["batch", "?"])}  # an OpenVINO IR names no axes (NNCF's text output)
    assert synthetic_feed(ir, {"batch": 4, "sequence": 16})["input_ids"].shape == (4, 16)
    with pytest.raises(DataError, match=r"dynamic axis '\?'"):  # two candidates for it: no guess
        synthetic_feed({"x": ("float32", ["batch", 3, "?", "?"])}, {"batch": 1, "height": 8, "width": 8})


def test_noise_is_noticed_and_named():
    quiet = {"round_spread": 0.02, "latency_ms_p50": 1.0, "latency_ms_p99": 1.5}
    assert noise_reasons(quiet, 0.1, 2) == []
    loud = noise_reasons({"round_spread": 0.3, "latency_ms_p50": 1.0, "latency_ms_p99": 9.0}, 1.5, 2)
    assert len(loud) == 3 and "1.5 of 2 cores" in loud[0] and "30%" in loud[1] and "9.0×" in loud[2]


def test_busy_cores_sees_another_process_spinning():
    import subprocess
    import sys

    from nanoify.bench.run import busy_cores

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert busy_cores(0.5) > 0.6  # one spinning process ≈ one core
    finally:
        spin.kill()
        spin.wait()


def test_repeated_runs_are_medians_and_the_table_speaks_images():
    runs = [{"throughput_b32": t, "throughput": t, "latency_ms_p50": 1.0 + t / 100, "noise": n, "name": "m",
             "streams": {"throughput_rows_s": t}} for t, n in ((10.0, []), (30.0, ["x"]), (20.0, []))]
    m = _median_of_runs(runs)
    assert m["throughput_b32"] == 20.0 and m["streams"]["throughput_rows_s"] == 20.0
    assert m["throughput_runs"] == [10.0, 30.0, 20.0] and m["noise"] == ["x"]
    rep = {"task": "image-classification", "models": [dict(m, accuracy=0.9, peak_rss_mb=100.0, file_mb=1.0)],
           "machine": {"cpu": "c", "cores": 2}, "data": "d", "split": "test", "created": "now", "timing": {}}
    assert "throughput b32 (images/s)" in format_table(rep) and "Noisy machine" in format_table(rep)


def test_configs_validate_and_travel_whole():
    with pytest.raises(ConfigError, match="--optimize"):
        QuantizeConfig(optimize="speed")
    with pytest.raises(ConfigError, match="unknown calibration method 'kl'"):
        QuantizeConfig(methods=("kl",))
    with pytest.raises(ConfigError, match="rounds"):
        TimingConfig(rounds=0)
    with pytest.raises(ConfigError, match="--streams"):
        BenchConfig(streams=-1)
    q = from_dict(QuantizeConfig, {"budget": 1.0, "methods": ["mse"], "timing": {"rounds": 2}})
    assert q.methods == ("mse",) and q.timing == TimingConfig(rounds=2)
    c = from_dict(CompressConfig, {"task": "image-classification", "model": {
        "module": "m:f", "weights": "w", "input_shape": [3, 8, 8]}, "data": {"data": "d"}})
    assert isinstance(c.model, ModelSource) and c.model.input_shape == (3, 8, 8) and c.distill is None
    assert c.stages == ["export", "quantized", "bench"]
    with pytest.raises(ConfigError, match="unknown ModelSource key"):
        from_dict(CompressConfig, {"task": "image-classification", "model": {"module": "m:f", "weight": "w"}})
    with pytest.raises(ConfigError, match="needs a teacher"):
        CompressConfig()
