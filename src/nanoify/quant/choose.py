"""Which candidate wins: within the budget, the best speed score for the ``optimize`` goal, ties broken by
fidelity to FP32, then the metric, then the smaller file (:func:`choose`); and the loud words when even the
winner runs slower than FP32 here (:func:`slower_than_reference`). Pure functions of measured records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# Scores closer than this are a tie: repeated interleaved runs here moved single measurements by ±15% and
# medians of 3 rounds by a few percent (benchmarks/RESULTS.md). Ties go to the better metric, then the smaller file.
SPEED_TIE = 0.05


def speed_score(m: dict[str, Any], ref: dict[str, Any], optimize: str) -> float:
    """Higher is better: what ``optimize`` asks for, as a ratio to the FP32 reference."""
    tput = "throughput" if "throughput" in m and "throughput" in ref else "throughput_b32"
    lat = ref["latency_ms_p50"] / m["latency_ms_p50"]
    thr = m[tput] / ref[tput]
    size = ref["file_mb"] / m["file_mb"]
    if optimize == "latency":
        return lat
    if optimize == "throughput":
        return thr
    if optimize == "size":
        return size
    return (lat * thr * size) ** (1 / 3)


def _changed(r: dict[str, Any], agree_key: str) -> float:
    """How many evaluation rows' predictions differ from FP32 (1 − agreement, times the rows)."""
    return (1.0 - float(r.get(agree_key, 1.0))) * float(r.get("n", 1))


def choose(records: Sequence[dict[str, Any]], ref: dict[str, Any], optimize: str, metric: str,
           timed: bool = True, agree_key: str = "top1_agreement") -> tuple[int, str]:
    """Index of the chosen candidate and why. Within the budget: the best ``optimize`` score; scores within
    ``SPEED_TIE`` of it tie, and of those the ones whose changed predictions are within noise of the fewest
    (two standard deviations, counts taken as Poisson) stay; then the best score, the better ``metric``, the
    smaller file. With no timing (TensorRT), the best metric. With none within the budget: the best metric,
    flagged."""
    ok = [i for i, r in enumerate(records) if r["meets_budget"]]
    if not ok:
        best = max(range(len(records)), key=lambda i: (records[i][metric], -records[i]["file_mb"]))
        return best, f"best {metric}; NO candidate met the budget"
    if not timed:
        best = max(ok, key=lambda i: (records[i][metric], -records[i]["file_mb"]))
        return best, f"within the budget, the best {metric} (speed is not measured for this target)"
    scores = {i: speed_score(records[i], ref, optimize) for i in ok}
    top = max(scores.values())
    band = [i for i in ok if scores[i] >= top * (1 - SPEED_TIE)]
    # among equals: those that follow FP32 as closely as the closest one (changed predictions are a less noisy
    # judge than a few rows of accuracy; counts within two standard deviations of each other are a tie), then
    # the best score, the metric, the smaller file
    changed = {i: _changed(records[i], agree_key) for i in band}
    fewest = min(changed.values())
    close = [i for i in band if changed[i] - fewest <= 2 * math.sqrt(changed[i] + fewest)]
    best = max(close, key=lambda i: (scores[i], records[i][metric], -records[i]["file_mb"]))
    what = {"balanced": "balanced score (geometric mean of batch-1 latency, batch-32 throughput and file-size "
                        "ratios to FP32)", "latency": "batch-1 latency", "throughput": "batch-32 throughput",
            "size": "file size"}[optimize]
    return best, (f"within the budget and within {SPEED_TIE:.0%} of the best {what} ({len(band)} such), those as "
                  f"close to FP32 as the closest ({len(close)}: changed predictions within noise), then the best "
                  "score")


def slower_than_reference(chosen: dict[str, Any], ref: dict[str, Any], tie: float = SPEED_TIE) -> list[str]:
    """Loud words when the chosen model runs slower than FP32 here (beyond the noise band)."""
    out = []
    if chosen.get("latency_ms_p50") and ref.get("latency_ms_p50"):
        ratio = ref["latency_ms_p50"] / chosen["latency_ms_p50"]
        if ratio < 1 - tie:
            out.append(f"the chosen model is SLOWER than FP32 at batch 1 on this machine ({ratio:.2f}× its speed)")
    batch1 = ref.get("throughput_batch", 32) == 1  # a fixed-batch model: its throughput is batch 1 again
    if chosen.get("throughput") and ref.get("throughput") and not (batch1 and out):
        ratio = chosen["throughput"] / ref["throughput"]
        if ratio < 1 - tie:
            out.append(f"the chosen model is SLOWER than FP32 at batch {ref.get('throughput_batch', 32)} on this "
                       f"machine ({ratio:.2f}× its throughput)")
    if out:
        out.append("INT8 does not pay here (layout changes around integer kernels can cost more than they save); "
                   "keep the FP32 model or try --optimize size if the smaller file is the point")
    return out
