"""Wall-clock latency and throughput of a classifier over real token batches (dynamic padding)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..data.text import collate


def time_batches(run: Callable[[dict[str, np.ndarray]], Any], batches: Sequence[dict[str, np.ndarray]],
                 warmup: int = 3) -> np.ndarray:
    """Seconds per call of ``run`` on each batch, after ``warmup`` untimed calls."""
    for b in batches[:warmup]:
        run(b)
    out = np.empty(len(batches))
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        run(b)
        out[i] = time.perf_counter() - t0
    return out


def make_batches(ids: Sequence[Sequence[int]], batch_size: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    """Consecutive batches in data order (not sorted by length: real traffic is not sorted)."""
    return [collate(ids[i:i + batch_size], pad_id) for i in range(0, len(ids), batch_size)]


def torch_runner(model: Any) -> Callable[[dict[str, np.ndarray]], Any]:
    """A closure running a torch classifier in inference mode on a numpy feed."""
    import torch

    model.eval()

    def run(feed: dict[str, np.ndarray]) -> Any:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits

    return run


def latency_throughput(run: Callable[[dict[str, np.ndarray]], Any], ids: Sequence[Sequence[int]], pad_id: int,
                       n_latency: int = 200, throughput_batch: int = 32) -> dict[str, float]:
    """Batch-1 latency percentiles (ms) over the first ``n_latency`` rows; throughput (rows/s) at a batch size."""
    lat = time_batches(run, make_batches(ids[:n_latency], 1, pad_id)) * 1e3
    big = make_batches(ids, throughput_batch, pad_id)
    secs = time_batches(run, big, warmup=1)
    return {"latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p90": float(np.percentile(lat, 90)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            f"throughput_b{throughput_batch}": float(len(ids) / secs.sum())}
