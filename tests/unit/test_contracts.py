"""Contracts that fail when the product breaks: the budget check, the compress allowance, stage hashes, atomic
folders, per-process peak memory, a CLI call that leaves its caller's process as it was."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import pytest

from nanoify.artifacts import atomic_dir
from nanoify.config import DataConfig, DistillConfig, QuantizeConfig, TrainConfig
from nanoify.pipeline import CompressConfig, quantize_allowance, stage_plan
from nanoify.tasks import check_budget


def test_budget_check_binds_on_the_metric_and_on_agreement():
    ref = {"accuracy": 0.900, "top1_agreement": 1.0}
    ok = {"accuracy": 0.897, "top1_agreement": 0.985}
    assert check_budget(ref, ok, 0.5, "accuracy").met  # 0.3 points lost
    chk = check_budget(ref, ok, 0.2, "accuracy")
    assert not chk.met and chk.drop_pts == pytest.approx(0.3)
    assert check_budget(ref, {"accuracy": 0.90}, 0.0, "accuracy").met  # exactly at the budget
    assert not check_budget(ref, ok, 0.5, "accuracy", agreement_budget_pts=1.0).met  # 1.5% of predictions changed
    assert check_budget(ref, ok, 0.5, "accuracy", agreement_budget_pts=1.5).met
    with pytest.raises(Exception, match="metric 'map50_95' is missing"):
        check_budget(ref, ok, 1.0, "map50_95")


def test_compress_gives_quantization_what_distillation_left():
    assert quantize_allowance(3.0, 0.5, 0.90, 0.88) == pytest.approx(1.0)  # 2 points spent by the student
    assert quantize_allowance(3.0, 0.5, 0.90, 0.86) == pytest.approx(0.5)  # beyond the budget: the floor
    assert quantize_allowance(3.0, 0.5, 0.90, 0.91) == pytest.approx(4.0)  # the student beat its teacher
    assert quantize_allowance(3.0, 0.5, None, None) == pytest.approx(3.0)


def test_stage_hashes_follow_every_input():
    base = CompressConfig(teacher="t", data=DataConfig(data="d"), distill=DistillConfig(student="half"))
    keys = stage_plan(base)
    changed = stage_plan(dataclasses.replace(base, distill=DistillConfig(student="half", temperature=4.0)))
    assert all(changed[s] != keys[s] for s in ("student", "export", "quantized", "bench"))
    trained = stage_plan(dataclasses.replace(base, distill=DistillConfig(train=TrainConfig(epochs=2))))
    assert trained["student"] != keys["student"]
    q = stage_plan(dataclasses.replace(base, quantize=QuantizeConfig(budget=2.0)))
    assert q["student"] == keys["student"] and q["export"] == keys["export"] and q["quantized"] != keys["quantized"]
    assert stage_plan(dataclasses.replace(base, data=DataConfig(data="other")))["student"] != keys["student"]
    # other calibration data: a new quantized model (reusing the old one would silently keep the old ranges)
    calib = stage_plan(dataclasses.replace(base, calib="other_calib"))
    assert calib["export"] == keys["export"] and calib["quantized"] != keys["quantized"]
    assert calib["bench"] != keys["bench"]
    bench = stage_plan(dataclasses.replace(base, bench=dataclasses.replace(base.bench, streams=2)))
    assert bench["quantized"] == keys["quantized"] and bench["bench"] != keys["bench"]


def test_atomic_dir_keeps_the_old_folder_and_leaves_no_temp_behind(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (dest / "old.txt").read_text() == "old"
    with atomic_dir(dest) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _child_peak(mb: int) -> float:
    import numpy as np

    from nanoify.bench.run import peak_rss_mb

    block = np.ones(mb * 2**20, dtype=np.uint8)  # touched, so resident
    assert block.sum() == mb * 2**20
    return peak_rss_mb()


def test_peak_rss_is_the_measuring_process_own():
    """A child's peak is its own, below and above its parent's: Linux carries ``ru_maxrss`` over fork+exec, so a
    small child would report the parent's peak (and a large child would hide that)."""
    from nanoify.bench.run import peak_rss_mb
    from tests.conftest import raise_peak_rss

    parent = raise_peak_rss(1200)
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        small = pool.submit(_child_peak, 40).result()
        assert 40 <= small < parent / 2, (small, parent)
        grow = int(parent) + 300  # more than the parent ever held: only the child's own peak can reach it
        big = pool.submit(_child_peak, grow).result()  # the same child, later
    assert big >= grow and peak_rss_mb() < grow


def test_slower_than_fp32_is_said_once_per_batch_size():
    from nanoify.quant.choose import slower_than_reference

    ref = {"latency_ms_p50": 1.0, "throughput": 1000.0, "throughput_batch": 32}
    slow = {"latency_ms_p50": 1.2, "throughput": 800.0}
    assert len(slower_than_reference(slow, ref)) == 3  # batch 1, batch 32, what to do
    assert slower_than_reference({"latency_ms_p50": 1.02, "throughput": 990.0}, ref) == []  # within the noise band
    fixed = {**ref, "throughput_batch": 1}  # a batch-1 model: its throughput is batch 1 again, said once
    words = slower_than_reference(slow, fixed)
    assert len(words) == 2 and "batch 1" in words[0]


def test_small_data_trains_at_least_min_steps_within_max_epochs():
    from nanoify.distill.trainer import steps_for

    cfg = TrainConfig(epochs=1, batch_size=32)  # defaults: at least 500 steps, at most 10 epochs
    assert steps_for(67_349, cfg) == 2105  # big data: its epochs decide
    assert steps_for(2_000, cfg) == 500  # 63 steps per epoch: 500 steps (8 epochs)
    assert steps_for(640, cfg) == 200  # 20 steps per epoch: 10 epochs at most
    assert steps_for(2_000, dataclasses.replace(cfg, min_steps=0)) == 63
    assert steps_for(2_000, dataclasses.replace(cfg, max_steps=100)) == 100  # the cap wins


def test_cli_call_sets_logging_and_threads_for_itself_and_restores_them(monkeypatch, capsys):
    """``-v`` takes effect in-process even when the root logger already has handlers (logging.basicConfig would
    do nothing), and the call leaves the root logger, the environment and torch's threads as it found them."""
    import logging
    import os

    import torch

    from nanoify import cli

    seen = {}

    def fake_finetune(args):
        logging.getLogger("nanoify.test").info("progress detail")
        seen.update(threads=torch.get_num_threads(), env=os.environ.get("TOKENIZERS_PARALLELISM"))
        return 0

    monkeypatch.setattr(cli, "cmd_finetune", fake_finetune)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    root = logging.getLogger()
    before = (root.level, list(root.handlers), torch.get_num_threads())
    assert cli.main(["-v", "finetune", "--out", "x", "--threads", "3"]) == 0
    assert seen == {"threads": 3, "env": "false"}
    assert "INFO nanoify.test: progress detail" in capsys.readouterr().err
    assert (root.level, list(root.handlers), torch.get_num_threads()) == before
    assert "TOKENIZERS_PARALLELISM" not in os.environ
    assert cli.main(["finetune", "--out", "x"]) == 0  # without -v: no INFO line
    assert "progress detail" not in capsys.readouterr().err
