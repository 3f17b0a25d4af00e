"""Training checkpoints without pickle: every tensor in one safetensors file, everything else as JSON in its
metadata — so resuming a run never executes code from the checkpoint folder.

The file holds the model's and the projections' weights, the optimiser's per-parameter state, the torch RNG state
(dropout) and, as JSON, the optimiser's parameter groups, the scheduler's state, the run key, the position
(stage, step) and the loss history. One file, replaced atomically: a kill mid-write leaves the previous one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ConfigError

CKPT_FILE = "state.safetensors"
_META = "nanoify_state"


def _jsonable(obj: Any, where: str) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"checkpoint field {where} is a {type(obj).__name__}, which JSON cannot hold")


STATE_DICTS = ("model", "aux", "best_model", "best_aux")  # tensors saved under these prefixes


def save_state(path: Path, *, run_key: str, model: dict[str, torch.Tensor], aux: dict[str, torch.Tensor],
               opt: dict[str, Any], sched: dict[str, Any], rng: torch.Tensor, rng_cuda: torch.Tensor | None = None,
               rng_ranks: torch.Tensor | None = None, rng_cuda_ranks: torch.Tensor | None = None,
               best_model: dict[str, torch.Tensor] | None = None, best_aux: dict[str, torch.Tensor] | None = None,
               **position: Any) -> None:
    """Write a checkpoint to ``path`` atomically (``position``: stage, step, history, window, early-stopping
    counters — JSON values; ``best_*``: the best held-out weights of the current stage; ``rng*_ranks``: every
    process's RNG state, one row each, when several trained together)."""

    tensors: dict[str, torch.Tensor] = {}
    for prefix, sd in (("model", model), ("aux", aux), ("best_model", best_model or {}),
                       ("best_aux", best_aux or {})):
        for k, v in sd.items():
            tensors[f"{prefix}/{k}"] = v.detach().cpu().clone().contiguous()  # clone: tied weights share storage
    opt_tensors: dict[str, dict[str, Any]] = {}  # param index → {key: JSON value}; tensors go to the file
    for idx, st in opt["state"].items():
        plain = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt/{idx}/{k}"] = v.detach().cpu().clone().contiguous()
            else:
                plain[k] = v
        opt_tensors[str(idx)] = plain
    tensors["rng"] = rng.clone()
    for key, t in (("rng_cuda", rng_cuda), ("rng_ranks", rng_ranks), ("rng_cuda_ranks", rng_cuda_ranks)):
        if t is not None:
            tensors[key] = t.detach().cpu().clone().contiguous()
    meta = {"run_key": run_key, "opt_groups": opt["param_groups"], "opt_plain": opt_tensors, "sched": sched,
            **position}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={_META: json.dumps(_jsonable(meta, "state"))})
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` as the dict ``save_state`` was given (state dicts rebuilt), or a ConfigError
    when the file is not a nanoify checkpoint."""

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})[_META])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file is one line
        raise ConfigError(f"{path} is not a readable nanoify checkpoint ({type(e).__name__}); delete its folder "
                          "or rerun without --resume") from None
    out: dict[str, Any] = {k: {} for k in STATE_DICTS}
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta.pop("opt_plain").items()}
    for k, v in tensors.items():
        head, _, rest = k.partition("/")
        if head in STATE_DICTS:
            out[head][rest] = v
        elif head == "opt":
            idx, _, key = rest.partition("/")
            state.setdefault(int(idx), {})[key] = v
    groups = meta.pop("opt_groups")
    for g in groups:  # JSON has no tuples; torch's optimisers unpack betas either way, kept exact here
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    out["opt"] = {"state": state, "param_groups": groups}
    out["rng"] = tensors["rng"]
    for key in ("rng_cuda", "rng_ranks", "rng_cuda_ranks"):
        out[key] = tensors.get(key)
    out.update(meta)
    return out
