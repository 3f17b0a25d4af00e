"""Several processes training one model: data parallel under ``torchrun`` or ``accelerate launch``.

Both launchers start N copies of the command and describe the group in the environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); :func:`setup` joins it (NCCL on GPUs, Gloo on CPUs)
and gives each process its own GPU (``--device cuda`` → ``cuda:LOCAL_RANK``). Every process builds the same
model from the same seed and walks the same seeded batches; each step, process r takes rows r, r+N, … of the
step's batch, and :func:`average_gradients` all-reduces the gradients (one flat buffer), each weighted by its
share of the batch's rows, so every process takes the same optimiser step on the gradient of the whole batch's
mean loss — the single-process step, up to the order of float sums.

Why not DDP's module wrapper: the loss functions close over the unwrapped student, teacher and projections, and
DDP only syncs gradients for passes through its wrapper; one all-reduce after ``backward`` keeps one training
loop for 1 and N processes (DDP overlaps the reduction with the backward pass; at these model sizes the one
collective per step is a small share of the step — unmeasured on several GPUs, none lent so far).

Only process 0 writes: checkpoints (with every process's RNG state, so ``--resume`` with the same N is exact),
the teacher-logit cache (the others wait, then read it) and the output folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env() -> Group:
    """The process group the launcher described (a single process when none did)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ConfigError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers ({e}); start several processes with "
                          "torchrun or accelerate launch") from None
    return Group(rank, world, local) if world > 1 else Group()


def current() -> Group:
    """The group this process has joined (``setup`` ran), else a single process."""

    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size(), from_env().local_rank)
    return Group()


def device_for(device: str, group: Group) -> str:
    """The device this process trains on: with several processes, ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    if not group.active or not device.startswith("cuda"):
        return device
    if device != "cuda":
        raise ConfigError(f"--device {device} names one GPU, but {group.world} processes were started: pass "
                          "--device cuda and each process takes the GPU of its LOCAL_RANK")
    return f"cuda:{group.local_rank}"


def setup(device: str) -> tuple[Group, str]:
    """Join the launcher's process group (once) and return it with this process's device."""

    group = from_env()
    if not group.active:
        return group, device
    dev = device_for(device, group)
    if not dist.is_initialized():
        if dev.startswith("cuda"):
            if not torch.cuda.is_available() or torch.cuda.device_count() <= group.local_rank:
                raise ConfigError(f"process {group.rank} wants cuda:{group.local_rank}, but torch sees "
                                  f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} GPU(s) here; "
                                  "start at most one process per GPU")
            torch.cuda.set_device(group.local_rank)
        dist.init_process_group("nccl" if dev.startswith("cuda") else "gloo")
    return group, dev


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(rows: Sequence[int], group: Group) -> list[int]:
    """This process's rows of a batch: every N-th, starting at its rank."""
    return list(rows[group.rank::group.world]) if group.active else list(rows)


def average_gradients(params: Sequence[torch.nn.Parameter], weight: float, group: Group) -> None:
    """Replace each gradient by the batch-weighted sum over processes: Σ_r weight_r · grad_r, with weight_r this
    process's share of the batch's rows (its loss is a mean over its own rows). A parameter no process used keeps
    ``grad=None`` (the optimiser skips it, as in one process); one some process used gets zeros elsewhere."""

    if not group.active:
        return
    dev = params[0].device
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
    dist.all_reduce(used)
    live = [p for p, u in zip(params, used.tolist(), strict=True) if u > 0]
    if not live:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() * weight
                      for p in live])
    dist.all_reduce(flat)
    at = 0
    for p in live:
        n = p.numel()
        g = flat[at:at + n].view_as(p).to(p.dtype)
        at += n
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)


def reduce_terms(terms: dict[str, float], weight: float, group: Group) -> dict[str, float]:
    """The batch's loss terms: the processes' values weighted by their share of the rows (for the log)."""

    if not group.active or not terms:
        return terms
    keys = sorted(terms)
    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([terms[k] * weight for k in keys], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def broadcast_float(x: float | None, group: Group) -> float:
    """Process 0's value on every process (held-out losses: one process judges, all stop together)."""

    if not group.active:
        assert x is not None
        return float(x)
    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([x if x is not None else 0.0], dtype=torch.float64, device=dev)
    dist.broadcast(t, 0)
    return float(t.item())


def gather_rng(state: torch.Tensor, group: Group) -> list[torch.Tensor]:
    """Every process's RNG state (a byte tensor), on every process."""

    if not group.active:
        return [state]
    out: list[object] = [None] * group.world
    dist.all_gather_object(out, state.cpu())
    return out  # type: ignore[return-value]
