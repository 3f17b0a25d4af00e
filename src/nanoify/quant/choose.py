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


def speed_vs_fp32(m: dict[str, Any], ref: dict[str, Any], optimize: str) -> float:
    """How much faster than FP32 a candidate runs for the goal, ignoring file size (``balanced``: batch-1 latency
    and throughput together)."""
    tput = "throughput" if "throughput" in m and "throughput" in ref else "throughput_b32"
    lat = ref["latency_ms_p50"] / m["latency_ms_p50"]
    thr = m[tput] / ref[tput]
    return lat if optimize == "latency" else thr if optimize == "throughput" else math.sqrt(lat * thr)


def _is_float(r: dict[str, Any]) -> bool:
    scheme = r.get("scheme")
    return isinstance(scheme, dict) and scheme.get("type") == "Float"


def _changed(r: dict[str, Any], agree_key: str) -> float:
    """How many predictions differ from FP32: the count where the task gives it, else 1 − agreement times what the
    agreement is over — a detector's FP32 boxes (``reference_boxes``), not its images (counted in images, 397 of
    14,000 boxes changed on 128 images read as 3.6 and tied with FP32's 0), else the rows."""
    if r.get("predictions_changed") is not None:
        return float(r["predictions_changed"])
    return (1.0 - float(r.get(agree_key, 1.0))) * float(r.get("reference_boxes", r.get("n", 1)))


def choose(records: Sequence[dict[str, Any]], ref: dict[str, Any], optimize: str, metric: str,
           timed: bool = True, agree_key: str = "top1_agreement") -> tuple[int, str]:
    """Index of the chosen candidate and why. Within the budget: the best ``optimize`` score; scores within
    ``SPEED_TIE`` of it tie, and of those the ones whose changed predictions are within noise of the fewest
    (two standard deviations, counts taken as Poisson) stay; then the best score, the better ``metric``, the
    smaller file. A candidate slower than FP32 for the goal (beyond the tie band; float rows excepted) is not
    eligible unless nothing else is (``optimize="size"`` may trade speed). With no timing (TensorRT), the best
    metric. With none within the budget: the best metric, flagged."""
    ok = [i for i, r in enumerate(records) if r["meets_budget"]]
    if not ok:
        best = max(range(len(records)), key=lambda i: (records[i][metric], -records[i]["file_mb"]))
        return best, f"best {metric}; NO candidate met the budget"
    if not timed:
        best = max(ok, key=lambda i: (records[i][metric], -records[i]["file_mb"]))
        return best, f"within the budget, the best {metric} (speed is not measured for this target)"
    slow = []
    if optimize != "size":  # never a model slower than FP32 here (size is the one goal that may trade speed)
        fast = [i for i in ok if _is_float(records[i]) or speed_vs_fp32(records[i], ref, optimize) >= 1 - SPEED_TIE]
        slow = [i for i in ok if i not in fast]
        if fast:
            ok = fast
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
    why = (f"within the budget and within {SPEED_TIE:.0%} of the best {what} ({len(band)} such), those as close to "
           f"FP32 as the closest ({len(close)}: changed predictions within noise), then the best score")
    if _is_float(records[best]) and slow:
        why = (f"no INT8 candidate within the budget runs faster than FP32 here ({len(slow)} slower): the FP32 "
               "model; " + why)
    elif slow:
        why += f"; {len(slow)} candidate(s) within the budget but slower than FP32 here were not eligible"
    return best, why


def not_int8_win(chosen: dict[str, Any], ref: dict[str, Any], optimize: str, timed: bool) -> str | None:
    """Why the chosen record is not a quantized model that meets the budget and runs at least as fast as FP32
    (within noise) for the goal, or None when it is — what ``--require-int8`` turns into an error."""
    if _is_float(chosen):
        return "the chooser kept the float model (no INT8 candidate within the budget runs faster than FP32 here)"
    if not chosen.get("meets_budget"):
        return f"no candidate met the budget (the best one: {chosen.get('name')})"
    if timed and optimize != "size" and "latency_ms_p50" in chosen and (
            speed_vs_fp32(chosen, ref, optimize) < 1 - SPEED_TIE):
        return (f"the best candidate within the budget ({chosen.get('name')}) runs at "
                f"{speed_vs_fp32(chosen, ref, optimize):.2f}× FP32's speed here")
    return None


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
