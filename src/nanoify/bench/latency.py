"""Wall-clock latency and throughput over prepared feeds — the one timing routine ``quantize`` (to choose) and
``bench`` (to report) share, so their numbers agree: the same rows, batch sizes and number of rounds."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
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
    for run in runs:  # warm every session before any timing
        time_batches(run, list(big[:1]) + list(b1[:3]), warmup=0)
    lat: list[list[np.ndarray]] = [[] for _ in runs]
    tput: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            _time_round(run, b1, big, lat[i], tput[i])
    return _summary(lat, tput, batch)


def measure_speed_opening(openers: Sequence[Callable[[], AbstractContextManager[Callable[[Feed], Any]]]],
                          b1: Sequence[Feed], big: Sequence[Feed], rounds: int = 3,
                          batch: int = 32) -> list[dict[str, Any]]:
    """:func:`measure_speed` with one model open at a time: each round opens each model (``openers[i]()`` yields its
    run), warms it and times it, then closes it — for models whose engines together would not fit in memory (a
    640² detector's engines at batch 32 held side by side took 18 GB, issue 20). Opening is not timed; rounds stay
    interleaved."""
    lat: list[list[np.ndarray]] = [[] for _ in openers]
    tput: list[list[float]] = [[] for _ in openers]
    for _ in range(rounds):
        for i, opener in enumerate(openers):
            with opener() as run:
                time_batches(run, list(big[:1]) + list(b1[:3]), warmup=0)
                _time_round(run, b1, big, lat[i], tput[i])
    return _summary(lat, tput, batch)


def feed_bytes(feeds: Sequence[Feed]) -> int:
    """Bytes of the largest feed (every input together)."""
    return max((sum(np.asarray(v).nbytes for v in f.values()) for f in feeds), default=0)


def _time_round(run: Callable[[Feed], Any], b1: Sequence[Feed], big: Sequence[Feed], lat: list[np.ndarray],
                tput: list[float]) -> None:
    lat.append(time_batches(run, b1, warmup=0) * 1e3)
    tput.append(rows_in(big) / time_batches(run, big, warmup=0).sum())


def _summary(lat: list[list[np.ndarray]], tput: list[list[float]], batch: int) -> list[dict[str, Any]]:
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
