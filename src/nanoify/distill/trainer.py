"""The training loop shared by fine-tuning and distillation: staged, checkpointed, exactly resumable.

A run is a list of stages (TinyBERT's schedule is ``intermediate`` then ``prediction``); each stage has
its own loss weights, step count and optimiser. Batches come from :func:`epoch_batches`, a pure function
of (seed, stage, epoch), and the checkpoint stores model, projections, optimiser, scheduler and the torch
RNG state (dropout), so a run resumed after a kill ends at the same weights as an uninterrupted one. The
checkpoint is safetensors plus JSON (``checkpoint.py``): resuming never unpickles.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.text import collate, epoch_batches
from ..errors import ConfigError
from . import parallel
from .checkpoint import CKPT_FILE, load_state, save_state

log = logging.getLogger(__name__)

# loss_fn(stage, batch, row_indices) -> {term name: unweighted loss tensor}
LossFn = Callable[["Stage", dict[str, torch.Tensor], list[int]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Stage:
    """One phase of training: its name, the weight of each loss term, and its length in steps."""

    name: str
    weights: dict[str, float]
    steps: int
    early_stop: bool = False  # evaluate the held-out loss and stop when it no longer falls


def extended(n_rows: int, cfg: TrainConfig) -> bool:
    """True when the min-steps rule lengthens the schedule (small data): then a held-out slice stops training."""
    return cfg.min_steps > _epoch_steps(n_rows, cfg, cfg.epochs) and not cfg.max_steps


def holdout_split(n_rows: int, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """(training rows, held-out rows): a seeded ``cfg.holdout`` share held out when the data is small (see
    :func:`extended`) and at least 20 rows would be held out; else every row trains."""
    n_hold = int(n_rows * cfg.holdout)
    if not extended(n_rows, cfg) or n_hold < 20:
        return list(range(n_rows)), []
    hold = set(np.random.default_rng(cfg.seed + 7919).choice(n_rows, size=n_hold, replace=False).tolist())
    return [i for i in range(n_rows) if i not in hold], sorted(hold)


def _epoch_steps(n_rows: int, cfg: TrainConfig, epochs: float) -> int:
    return max(1, int(math.ceil(math.ceil(n_rows / cfg.batch_size) * epochs)))


def steps_for(n_rows: int, cfg: TrainConfig) -> int:
    """Optimiser steps for ``cfg.epochs`` over ``n_rows`` rows; small data gets at least ``min_steps`` (but no
    more than ``max_epochs`` epochs); ``max_steps`` caps everything."""
    steps = _epoch_steps(n_rows, cfg, cfg.epochs)
    if cfg.min_steps > steps:
        steps = max(steps, min(cfg.min_steps, _epoch_steps(n_rows, cfg, cfg.max_epochs)))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def _restore_best(model: torch.nn.Module, aux: torch.nn.Module, best: dict[str, Any] | None, best_step: int,
                  step: int) -> None:
    """End a stage with its best held-out weights (when early stopping kept another step than this one)."""
    if best is not None and best_step != step:
        model.load_state_dict(best["model"])
        aux.load_state_dict(best["aux"])


def require_device(device: str) -> torch.device:
    """The training device, or one line saying why it cannot be used."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no CUDA GPU here (torch.cuda.is_available() is False)")
    return dev


def _resume_state(ckpt: Path | None, resume: bool | str, run_key: str,
                  group: parallel.Group) -> dict[str, Any] | None:
    """The checkpoint to resume from, None to start afresh, or one line saying why it cannot be used."""
    if not resume or ckpt is None or not ckpt.is_file():
        return None
    state = load_state(ckpt)
    if state.get("run_key") != run_key:
        if resume != "auto":
            raise ConfigError(f"checkpoint in {ckpt.parent} was made with other settings; "
                              "rerun without --resume or with the original settings")
        log.info("ignoring the checkpoint in %s: it was made with other settings", ckpt.parent)
        return None
    if state.get("processes", 1) != group.world:
        raise ConfigError(f"the checkpoint in {ckpt.parent} was written by {state.get('processes', 1)} process(es); "
                          f"resume with the same number (now {group.world}), or rerun without --resume")
    return state


def _warmup_then_linear(warm: int, n: int) -> Callable[[int], float]:
    """The learning-rate factor: linear warm-up over ``warm`` steps, then linear decay to 0 at step ``n``."""
    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (n - step) / max(1, n - warm))
    return factor


def _copy_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@dataclass
class _Loop:
    """What every stage of one :func:`train` call shares: model, data, settings, process group, progress."""

    model: torch.nn.Module
    aux: torch.nn.Module
    ids: Sequence[Sequence[int]]
    pad_id: int
    cfg: TrainConfig
    loss_fn: LossFn
    group: parallel.Group
    dev: torch.device
    ckpt: Path | None
    run_key: str
    history: list[dict[str, Any]]
    global_step: int
    bar: Any
    evaluate: Callable[[], float] | None
    on_step: Callable[[int], None] | None

    def __post_init__(self) -> None:
        self.lengths = [len(x) for x in self.ids]
        self.params = [p for p in list(self.model.parameters()) + list(self.aux.parameters()) if p.requires_grad]
        self.autocast = torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16,
                                       enabled=self.cfg.precision == "bf16")
        self.writes = self.ckpt is not None and self.group.main


class _StageRun:
    """One stage: its optimiser, schedule, loss window and early-stopping state, fresh or from a checkpoint."""

    def __init__(self, loop: _Loop, si: int, stage: Stage, state: dict[str, Any] | None) -> None:
        cfg, group = loop.cfg, loop.group
        self.loop, self.si, self.stage = loop, si, stage
        self.opt = torch.optim.AdamW(loop.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, _warmup_then_linear(int(cfg.warmup_ratio * stage.steps), stage.steps))
        self.step = 0
        self.early = stage.early_stop and loop.evaluate is not None
        self.every = max(10, stage.steps // 10)
        self.es: dict[str, Any] = {"best": None, "best_step": 0, "bad": 0}
        self.best_sd: dict[str, dict[str, torch.Tensor]] | None = None
        self.window: dict[str, list[float]] = {}
        if state is None:
            # seeds CUDA's generators too; process r draws its own dropout masks (r = 0 alone: as ever)
            torch.manual_seed(cfg.seed * 1000 + si + 1 + 7919 * group.rank)
            return
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"] if not group.active else state["rng_ranks"][group.rank].clone())
        rng_cuda = state.get("rng_cuda") if not group.active else state.get("rng_cuda_ranks")
        if loop.dev.type == "cuda" and rng_cuda is not None:
            torch.cuda.set_rng_state(rng_cuda if not group.active else rng_cuda[group.rank].clone(), loop.dev)
        self.step = state["step"]
        self.es = state.get("early") or self.es
        if state.get("best_model"):
            self.best_sd = {"model": state["best_model"], "aux": state.get("best_aux", {})}
        self.window = state.get("window", {})

    def run(self) -> None:
        """Optimise until the stage's last step (or its early stop); end with its best held-out weights."""
        loop, stage = self.loop, self.stage
        per_epoch = math.ceil(len(loop.ids) / loop.cfg.batch_size)
        epoch, batches = -1, []
        while self.step < stage.steps:
            e, pos = divmod(self.step, per_epoch)
            if e != epoch:
                epoch = e
                batches = epoch_batches(loop.lengths, loop.cfg.batch_size, loop.cfg.seed, self.si * 100_000 + e)
            self._optimise(batches[pos])
            loop.bar.update(1)
            stop = self._judge()
            if loop.ckpt is not None and (stop or self.step % loop.cfg.checkpoint_every == 0
                                          or self.step == stage.steps):
                self._checkpoint(stop)
            if loop.on_step is not None:
                loop.on_step(loop.global_step)
            if stop:
                break
        _restore_best(loop.model, loop.aux, self.best_sd, self.es["best_step"], self.step)
        loop.global_step += stage.steps - self.step  # a stage stopped early counts as done

    def _optimise(self, batch_rows: list[int]) -> None:
        """One optimiser step on this process's share of a batch; the loss terms go to the log window."""
        loop, group = self.loop, self.loop.group
        rows = parallel.shard(batch_rows, group)
        weight = len(rows) / len(batch_rows)  # this process's share of the batch (1 alone)
        if not rows:  # a last batch smaller than the group: a stand-in row whose gradient counts zero
            rows = list(batch_rows[:1])
        batch = {k: torch.from_numpy(v).to(loop.dev)
                 for k, v in collate([loop.ids[i] for i in rows], loop.pad_id).items()}
        with loop.autocast:
            terms = loop.loss_fn(self.stage, batch, rows)
        loss = sum(self.stage.weights[k] * v.float() for k, v in terms.items())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        parallel.average_gradients(loop.params, weight, group)
        torch.nn.utils.clip_grad_norm_(loop.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.step += 1
        loop.global_step += 1
        for k, v in parallel.reduce_terms({k: float(v.detach()) for k, v in terms.items()}, weight,
                                          group).items():
            self.window.setdefault(k, []).append(v)
        if self.step % loop.cfg.log_every == 0 or self.step == self.stage.steps:
            rec = {"stage": self.stage.name, "step": self.step, "lr": self.sched.get_last_lr()[0]}
            rec.update({k: sum(v) / len(v) for k, v in self.window.items()})
            loop.history.append(rec)
            log.debug("%s", rec)
            loop.bar.set_postfix({k: f"{v[-1]:.4f}" for k, v in self.window.items()})
            self.window = {}

    def _judge(self) -> bool:
        """On evaluation steps of an early-stopping stage: measure the held-out loss, keep the best weights;
        True when ``cfg.patience`` measurements in a row brought no new best."""
        loop, step = self.loop, self.step
        if not self.early or not (step % self.every == 0 or step == self.stage.steps):
            return False
        assert loop.evaluate is not None
        loss_h = parallel.broadcast_float(loop.evaluate() if loop.group.main else None, loop.group)  # one judge
        loop.model.train()
        loop.history.append({"stage": self.stage.name, "step": step, "holdout_loss": loss_h})
        es = self.es
        if es["best"] is None or loss_h < es["best"] - 1e-6:
            self.es = {"best": loss_h, "best_step": step, "bad": 0}
            self.best_sd = {"model": _copy_weights(loop.model), "aux": _copy_weights(loop.aux)}
            return False
        self.es = es = {**es, "bad": es["bad"] + 1}
        stop = es["bad"] >= loop.cfg.patience
        if stop:
            log.info("%s: held-out loss has not improved for %d evaluations; stopping at step %d and "
                     "keeping step %d", self.stage.name, loop.cfg.patience, step, es["best_step"])
            loop.history.append({"stage": self.stage.name, "step": step, "early_stop": True,
                                 "best_step": es["best_step"], "holdout_loss_best": es["best"]})
        return stop

    def _checkpoint(self, stop: bool) -> None:
        """Write the resumable state (the stage's end restores its best weights first)."""
        loop, group, step, si = self.loop, self.loop.group, self.step, self.si
        if stop or step == self.stage.steps:
            _restore_best(loop.model, loop.aux, self.best_sd, self.es["best_step"], step)
            self.best_sd = None  # restored
        nxt_stage, nxt_step = (si, step) if step < self.stage.steps and not stop else (si + 1, 0)
        rngs = parallel.gather_rng(torch.get_rng_state(), group)
        rngs_cuda = parallel.gather_rng(torch.cuda.get_rng_state(loop.dev), group) if loop.dev.type == "cuda" else None
        best = self.best_sd if self.best_sd and nxt_stage == si else None
        if loop.writes:
            assert loop.ckpt is not None
            save_state(loop.ckpt, run_key=loop.run_key, model=loop.model.state_dict(), aux=loop.aux.state_dict(),
                       opt=self.opt.state_dict(), sched=self.sched.state_dict(), rng=rngs[0],
                       rng_cuda=rngs_cuda[0] if rngs_cuda else None,
                       rng_ranks=torch.stack(rngs) if group.active else None,
                       rng_cuda_ranks=torch.stack(rngs_cuda) if group.active and rngs_cuda else None,
                       processes=group.world, stage=nxt_stage, step=nxt_step, history=loop.history,
                       window=self.window, early=self.es,
                       best_model=best["model"] if best else {}, best_aux=best["aux"] if best else {})
        parallel.barrier()  # no process runs ahead of a checkpoint it could be resumed from


def train(model: torch.nn.Module, aux: torch.nn.Module, ids: Sequence[Sequence[int]], pad_id: int,
          stages: Sequence[Stage], cfg: TrainConfig, loss_fn: LossFn, ckpt_dir: Path | None = None,
          resume: bool | str = False, run_key: str = "", on_step: Callable[[int], None] | None = None,
          progress: bool = True, evaluate: Callable[[], float] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` (and the auxiliary projections ``aux``) through ``stages``.

    Args:
        ids: token ids of every training row (the loss function maps row indices to labels/targets).
        ckpt_dir: where ``state.safetensors`` is written every ``cfg.checkpoint_every`` steps (None: never).
        resume: continue from ``ckpt_dir/state.safetensors`` when present; it must carry the same ``run_key``.
            ``"auto"``: a checkpoint of other settings is stale and is ignored (pipelines whose stage
            hashes already decide what reruns).
        on_step: called with the global step after each optimiser step (for tests and callers that stop).
        evaluate: the held-out loss (lower is better) for stages with ``early_stop``: measured every tenth of
            the stage (at least every 10 steps); after ``cfg.patience`` measurements without a new best the
            stage stops, and it ends with its best weights.

    Returns:
        The loss history: one dict per ``cfg.log_every`` steps with the mean of every unweighted term.
    """
    group, device = parallel.setup(cfg.device)  # one process, or one of torchrun's / accelerate launch's N
    dev = require_device(device)
    model.to(dev)
    aux.to(dev)
    ckpt = ckpt_dir / CKPT_FILE if ckpt_dir else None
    state = _resume_state(ckpt, resume, run_key, group)
    start_stage, start_step, history = (state["stage"], state["step"], state["history"]) if state else (0, 0, [])
    if state is not None:
        model.load_state_dict(state["model"])
        aux.load_state_dict(state["aux"])
        log.info("resuming from stage %d step %d", start_stage, start_step)
    elif ckpt is not None and group.main:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
    done_before = sum(s.steps for s in stages[:start_stage]) + start_step
    bar = tqdm(total=sum(s.steps for s in stages), initial=done_before, desc="train", unit="step",
               disable=not progress or not group.main, mininterval=2.0, dynamic_ncols=True)
    loop = _Loop(model, aux, ids, pad_id, cfg, loss_fn, group, dev, ckpt, run_key, history, done_before, bar,
                 evaluate, on_step)
    model.train()
    for si, stage in enumerate(stages):
        if si < start_stage:
            continue
        bar.set_description(stage.name)
        resuming = state is not None and si == start_stage and start_step > 0
        _StageRun(loop, si, stage, state if resuming else None).run()
    bar.close()
    model.to("cpu")
    aux.to("cpu")
    model.eval()
    return history
