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

import torch

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
    import numpy as np

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
    from tqdm.auto import tqdm

    group, device = parallel.setup(cfg.device)  # one process, or one of torchrun's / accelerate launch's N
    dev = require_device(device)
    model.to(dev)
    aux.to(dev)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    lengths = [len(x) for x in ids]
    params = [p for p in list(model.parameters()) + list(aux.parameters()) if p.requires_grad]
    start_stage, start_step, history = 0, 0, []
    state = None
    ckpt = ckpt_dir / CKPT_FILE if ckpt_dir else None
    if resume and ckpt is not None and ckpt.is_file():
        state = load_state(ckpt)
        if state.get("run_key") != run_key:
            if resume != "auto":
                raise ConfigError(f"checkpoint in {ckpt_dir} was made with other settings; "
                                  "rerun without --resume or with the original settings")
            log.info("ignoring the checkpoint in %s: it was made with other settings", ckpt_dir)
            state = None
    if state is not None and state.get("processes", 1) != group.world:
        raise ConfigError(f"the checkpoint in {ckpt_dir} was written by {state.get('processes', 1)} process(es); "
                          f"resume with the same number (now {group.world}), or rerun without --resume")
    if state is not None:
        model.load_state_dict(state["model"])
        aux.load_state_dict(state["aux"])
        start_stage, start_step, history = state["stage"], state["step"], state["history"]
        log.info("resuming from stage %d step %d", start_stage, start_step)
    elif ckpt is not None and group.main:
        assert ckpt_dir is not None
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    writes = ckpt is not None and group.main

    total = sum(s.steps for s in stages)
    done_before = sum(s.steps for s in stages[:start_stage]) + start_step
    bar = tqdm(total=total, initial=done_before, desc="train", unit="step", disable=not progress or not group.main,
               mininterval=2.0,
               dynamic_ncols=True)
    global_step = done_before
    model.train()
    for si, stage in enumerate(stages):
        if si < start_stage:
            continue
        bar.set_description(stage.name)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = int(cfg.warmup_ratio * stage.steps)

        def lr_lambda(step: int, warm: int = warm, n: int = stage.steps) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (n - step) / max(1, n - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        step = 0
        resuming = state is not None and si == start_stage and start_step > 0
        early = stage.early_stop and evaluate is not None
        every = max(10, stage.steps // 10)
        es: dict[str, Any] = {"best": None, "best_step": 0, "bad": 0}
        best_sd: dict[str, dict[str, torch.Tensor]] | None = None
        if resuming:
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            torch.set_rng_state(state["rng"] if not group.active else state["rng_ranks"][group.rank].clone())
            rng_cuda = state.get("rng_cuda") if not group.active else state.get("rng_cuda_ranks")
            if dev.type == "cuda" and rng_cuda is not None:
                torch.cuda.set_rng_state(rng_cuda if not group.active else rng_cuda[group.rank].clone(), dev)
            step = start_step
            es = state.get("early") or es
            if state.get("best_model"):
                best_sd = {"model": state["best_model"], "aux": state.get("best_aux", {})}
        else:
            # seeds CUDA's generators too; process r draws its own dropout masks (r = 0 alone: as ever)
            torch.manual_seed(cfg.seed * 1000 + si + 1 + 7919 * group.rank)
        per_epoch = math.ceil(len(ids) / cfg.batch_size)
        epoch = -1
        batches: list[list[int]] = []
        window: dict[str, list[float]] = state.get("window", {}) if resuming else {}
        while step < stage.steps:
            e, pos = divmod(step, per_epoch)
            if e != epoch:
                epoch = e
                batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, si * 100_000 + e)
            rows = parallel.shard(batches[pos], group)
            weight = len(rows) / len(batches[pos])  # this process's share of the batch (1 alone)
            if not rows:  # a last batch smaller than the group: a stand-in row whose gradient counts zero
                rows = list(batches[pos][:1])
            batch = {k: torch.from_numpy(v).to(dev) for k, v in collate([ids[i] for i in rows], pad_id).items()}
            with autocast:
                terms = loss_fn(stage, batch, rows)
            loss = sum(stage.weights[k] * v.float() for k, v in terms.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            parallel.average_gradients(params, weight, group)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            global_step += 1
            for k, v in parallel.reduce_terms({k: float(v.detach()) for k, v in terms.items()}, weight,
                                              group).items():
                window.setdefault(k, []).append(v)
            if step % cfg.log_every == 0 or step == stage.steps:
                rec = {"stage": stage.name, "step": step, "lr": sched.get_last_lr()[0]}
                rec.update({k: sum(v) / len(v) for k, v in window.items()})
                history.append(rec)
                log.debug("%s", rec)
                bar.set_postfix({k: f"{v[-1]:.4f}" for k, v in window.items()})
                window = {}
            bar.update(1)
            stop = False
            if early and (step % every == 0 or step == stage.steps):
                assert evaluate is not None
                loss_h = parallel.broadcast_float(evaluate() if group.main else None, group)  # one judge
                model.train()
                history.append({"stage": stage.name, "step": step, "holdout_loss": loss_h})
                if es["best"] is None or loss_h < es["best"] - 1e-6:
                    es = {"best": loss_h, "best_step": step, "bad": 0}
                    best_sd = {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                               "aux": {k: v.detach().clone() for k, v in aux.state_dict().items()}}
                else:
                    es = {**es, "bad": es["bad"] + 1}
                    stop = es["bad"] >= cfg.patience
                if stop:
                    log.info("%s: held-out loss has not improved for %d evaluations; stopping at step %d and "
                             "keeping step %d", stage.name, cfg.patience, step, es["best_step"])
                    history.append({"stage": stage.name, "step": step, "early_stop": True,
                                    "best_step": es["best_step"], "holdout_loss_best": es["best"]})
            if ckpt is not None and (stop or step % cfg.checkpoint_every == 0 or step == stage.steps):
                if stop or step == stage.steps:
                    _restore_best(model, aux, best_sd, es["best_step"], step)
                    best_sd = None  # restored
                nxt_stage, nxt_step = (si, step) if step < stage.steps and not stop else (si + 1, 0)
                rngs = parallel.gather_rng(torch.get_rng_state(), group)
                rngs_cuda = parallel.gather_rng(torch.cuda.get_rng_state(dev), group) if dev.type == "cuda" else None
                if writes:
                    save_state(ckpt, run_key=run_key, model=model.state_dict(), aux=aux.state_dict(),
                               opt=opt.state_dict(), sched=sched.state_dict(), rng=rngs[0],
                               rng_cuda=rngs_cuda[0] if rngs_cuda else None,
                               rng_ranks=torch.stack(rngs) if group.active else None,
                               rng_cuda_ranks=torch.stack(rngs_cuda) if group.active and rngs_cuda else None,
                               processes=group.world, stage=nxt_stage, step=nxt_step, history=history,
                               window=window, early=es,
                               best_model=best_sd["model"] if best_sd and nxt_stage == si else {},
                               best_aux=best_sd["aux"] if best_sd and nxt_stage == si else {})
                parallel.barrier()  # no process runs ahead of a checkpoint it could be resumed from
            if on_step is not None:
                on_step(global_step)
            if stop:
                break
        _restore_best(model, aux, best_sd, es["best_step"], step)
        global_step += stage.steps - step  # a stage stopped early counts as done
    bar.close()
    model.to("cpu")
    aux.to("cpu")
    model.eval()
    return history
