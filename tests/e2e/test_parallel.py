"""Data-parallel training in several processes (torchrun's environment, the Gloo backend on this CPU): the same
step as one process, exact resume with every process's RNG, one writer, and the CLI under torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanoify.config import TrainConfig
from nanoify.distill.trainer import Stage, train
from nanoify.errors import ConfigError

ROWS, BATCH, STEPS = 37, 8, 10  # the last batch of each epoch has 5 rows: shards of 3 and 2, weighted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem(dropout: float):
    from transformers import BertConfig, BertForSequenceClassification

    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(5, 60, (int(torch.randint(3, 14, (1,), generator=g)),), generator=g).tolist()
           for _ in range(ROWS)]
    y = torch.randint(0, 2, (ROWS,), generator=g)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))

    def loss_fn(stage, batch, rows):
        logits = model(**batch).logits
        return {"ce": torch.nn.functional.cross_entropy(logits, y[rows])}

    return model, ids, loss_fn


class Killed(Exception):
    pass


def _run(out: Path, tag: str, dropout: float, resume: bool = False, kill_at: int | None = None) -> None:
    model, ids, loss_fn = _problem(dropout)
    cfg = TrainConfig(max_steps=STEPS, batch_size=BATCH, lr=1e-2, min_steps=0, checkpoint_every=3, log_every=2,
                      warmup_ratio=0.0)

    def on_step(s: int) -> None:
        if s == kill_at:
            raise Killed

    hist = train(model, torch.nn.ModuleDict(), ids, 0, [Stage("s", {"ce": 1.0}, STEPS)], cfg, loss_fn,
                 out / f"{tag}.ckpt", resume, "key", on_step=on_step, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / f"{tag}.pt")
        (out / f"{tag}.json").write_text(json.dumps(hist))


def _worker(rank: int, world: int, port: int, out: Path, tag: str, dropout: float, resume: bool,
            kill_at: int | None) -> None:
    import torch.distributed as dist

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        _run(out, tag, dropout, resume, kill_at)
    except Killed:
        (out / f"{tag}.killed{rank}").touch()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(out: Path, tag: str, dropout: float, resume: bool = False, kill_at: int | None = None) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), out, tag, dropout, resume, kill_at), nprocs=2, join=True)


def test_two_processes_take_the_single_process_step(tmp_path):
    """No dropout: two processes, each with part of every batch (3 + 2 rows of a 5-row batch too), end at one
    process's weights up to float summation order."""
    _spawn(tmp_path, "two", 0.0)
    _run(tmp_path, "one", 0.0)
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    moved = max(float((a[k] - _problem(0.0)[0].state_dict()[k]).abs().max()) for k in a)
    assert moved > 1e-2  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)
    h1, h2 = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert [r["step"] for r in h1] == [r["step"] for r in h2]
    for r1, r2 in zip(h1, h2, strict=True):  # the logged loss is the whole batch's, not process 0's share
        assert r2["ce"] == pytest.approx(r1["ce"], rel=1e-4)


def test_two_processes_resume_exactly_and_need_the_same_count(tmp_path):
    """Dropout on, so each process's RNG matters: a run killed after step 5 (checkpoint at 3) and resumed ends at
    the uninterrupted run's weights; the checkpoint holds both processes' RNG states."""
    _spawn(tmp_path, "full", 0.1)
    _spawn(tmp_path, "part", 0.1, kill_at=5)
    assert (tmp_path / "part.killed0").exists() and (tmp_path / "part.killed1").exists()
    assert not (tmp_path / "part.pt").exists()
    from nanoify.distill.checkpoint import load_state

    st = load_state(tmp_path / "part.ckpt" / "state.safetensors")
    assert st["processes"] == 2 and st["step"] == 3 and st["rng_ranks"].shape[0] == 2
    assert not torch.equal(st["rng_ranks"][0], st["rng_ranks"][1])  # each process draws its own masks
    _spawn(tmp_path, "part", 0.1, resume=True)
    a, b = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "part.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(ConfigError, match="written by 2 process"):
        _run(tmp_path, "part", 0.1, resume=True)  # one process cannot continue two's run exactly


def _torchrun(args: list[str], env: dict[str, str] | None = None, accelerate: bool = False
              ) -> subprocess.CompletedProcess:
    launcher = (["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"] if accelerate else
                ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"])
    cmd = [sys.executable, *launcher, str(_free_port()), "-m", "nanoify.cli", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_finetune_under_torchrun_or_accelerate_writes_once(tmp_path, tiny_encoder, tiny_data, launcher):
    """``accelerate launch --multi_gpu`` starts its processes through torch's launcher with the same environment
    (here on CPUs: Gloo); its ``--cpu`` mode is one process, or MPI."""
    out = tmp_path / "clf"
    r = _torchrun(["finetune", "--model", str(tiny_encoder), "--data", str(tiny_data), "--max-length", "32",
                   "--epochs", "2", "--batch-size", "32", "--lr", "3e-3", "--min-steps", "0", "--out", str(out)],
                  accelerate=launcher == "accelerate")
    assert r.stdout.count("classifier written to") == 1  # process 0 reports, process 1 only trains
    man = json.loads((out / "manifest.json").read_text())
    assert man["train"]["processes"] == 2 and man["train"]["steps"] == 40
    assert man["metrics"]["validation"]["accuracy"] > 0.6, man["metrics"]
    assert not list(tmp_path.glob("clf.tmp*")) and (out / "model.safetensors").is_file()


def test_one_gpu_for_several_processes_is_one_line():
    from nanoify.distill.parallel import Group, device_for

    assert device_for("cuda", Group(1, 2, 1)) == "cuda:1" and device_for("cpu", Group(1, 2, 1)) == "cpu"
    assert device_for("cuda:3", Group()) == "cuda:3"
    with pytest.raises(ConfigError, match="names one GPU, but 2 processes"):
        device_for("cuda:0", Group(0, 2, 0))


def test_distill_under_torchrun_shares_one_teacher_logit_cache(tmp_path, tiny_teacher, tiny_data):
    """Process 0 computes the teacher's logits and writes the cache; process 1 waits for it and reads it."""
    cache = tmp_path / "cache"
    out = tmp_path / "student"
    r = _torchrun(["distill", "--teacher", str(tiny_teacher), "--data", str(tiny_data), "--max-length", "32",
                   "--max-steps", "12", "--min-steps", "0", "--lr", "2e-3", "--out", str(out)],
                  env={"NANOIFY_CACHE": str(cache)})
    assert r.stdout.count("student written to") == 1
    man = json.loads((out / "manifest.json").read_text())
    assert man["teacher_logits_cached"] and man["train"]["processes"] == 2
    assert len(list((cache / "teacher_logits").glob("*.pt"))) == 1 and not list(cache.rglob("*.tmp*"))
