"""Wall-clock latency and throughput over prepared feeds — the one timing routine ``quantize`` (to choose) and
``bench`` (to report) share, so their numbers agree: the same rows, batch sizes and number of rounds."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Feed = dict[str, np.ndarray]


def time_batches(run: Callable[[Feed], Any], batches: Sequence[Feed], warmup: int = 3) -> np.ndarray:
    """Seconds per call of ``run`` on each batch, after ``warmup`` untimed calls."""
    for b in batches[:warmup]:
        run(b)
    out = np.empty(len(batches))
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        run(b)
        out[i] = time.perf_counter() - t0
    return out


def rows_in(feeds: Sequence[Feed]) -> int:
    """Rows across feeds (the leading axis of their first input)."""
    return int(sum(len(next(iter(f.values()))) for f in feeds))


def measure_speed(runs: Sequence[Callable[[Feed], Any]], b1: Sequence[Feed], big: Sequence[Feed], rounds: int = 3,
                  batch: int = 32) -> list[dict[str, Any]]:
    """Batch-1 latency percentiles (ms) and batch-``batch`` throughput (rows/s; also under ``throughput``) of each
    run, in ``rounds`` interleaved rounds (each round times every run once, so a slow spell of a shared machine
    touches all of them), reported as medians over rounds; the per-round throughputs and their spread stay in
    the result."""
    rows = rows_in(big)
    for run in runs:  # warm every session before any timing
        time_batches(run, list(big[:1]) + list(b1[:3]), warmup=0)
    lat: list[list[np.ndarray]] = [[] for _ in runs]
    tput: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            lat[i].append(time_batches(run, b1, warmup=0) * 1e3)
            tput[i].append(rows / time_batches(run, big, warmup=0).sum())
    out = []
    for ls, ts in zip(lat, tput, strict=True):
        med = float(np.median(ts))
        out.append({
            "latency_ms_p50": float(np.median([np.percentile(x, 50) for x in ls])),
            "latency_ms_p90": float(np.median([np.percentile(x, 90) for x in ls])),
            "latency_ms_p99": float(np.median([np.percentile(x, 99) for x in ls])),
            "throughput": med,
            "throughput_batch": batch,
            f"throughput_b{batch}": med,
            f"throughput_b{batch}_rounds": [float(t) for t in ts],
            "round_spread": float((max(ts) - min(ts)) / med) if med else 0.0,
        })
    return out
