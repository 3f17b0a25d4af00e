"""Where a quantized graph spends its time, node by node, against the float graph (ONNX Runtime's profiler).

INT8 is not faster for every node. Measured with ONNX Runtime 1.32 on FastestDet (AVX-512 VNNI machine, batch 1):
QLinearSoftmax took 0.32 ms where the float Softmax took 0.02, QLinearAveragePool 0.14 against 0.03, and the
first QLinearConv (3 input channels) 0.51 against 0.38. Which kernels lose depends on the ORT build and the CPU,
so nothing here is a list of op types: the quantized and the float graph are both profiled on the machine, nodes
whose INT8 kernel costs clearly more than their float one become candidates for float, and the whole-model timing
of ``quantize`` decides whether keeping them float pays (Q/DQ moves to their edges and costs something too).

The float graph is profiled at ORT's "extended" level (fusions, no NCHWc layout) so its nodes keep the names the
quantized graph's nodes derive from (ORT appends ``_token_N`` when it rewrites layouts). Its convolutions are
then somewhat slower than in the fully optimised graph, so the comparison errs towards keeping INT8.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..runtime.ort import ort_session

_SUFFIX = re.compile(r"(_token_\d+|_nchwc)+$")
# a node is a candidate for float when its INT8 kernel costs this share of the quantized graph's time more than
# its float kernel: smaller differences are within the profiler's noise and the Q/DQ a float node needs
SLOW_SHARE = 0.01


def node_name(profiled: str) -> str:
    """The graph node a profiler entry belongs to (layout rewrites append ``_token_N`` / ``_nchwc``)."""
    return _SUFFIX.sub("", profiled)


def node_times(path: Path, feeds: Sequence[dict[str, np.ndarray]], threads: int | None, level: str,
               work: Path, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per run of each node of ``path`` (kernel time) over ``feeds`` (after ``warmup``)."""
    work.mkdir(parents=True, exist_ok=True)
    sess = ort_session(path, threads, level=level, profile_prefix=str(work / f"{path.stem}.{level}"))
    for f in feeds[:warmup]:
        sess.run(None, f)
    for f in feeds:
        sess.run(None, f)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            runs[node_name(e["name"][: -len("_kernel_time")])].append(float(e["dur"]) / 1e3)
    out = {}
    for name, ds in runs.items():
        per_run = len(ds) // (len(feeds) + min(warmup, len(feeds))) or 1  # a name may cover several kernels
        timed = ds[per_run * min(warmup, len(feeds)):]
        out[name] = float(np.median(timed)) * per_run if timed else 0.0
    return out


def slow_int8_nodes(quantized: Path, plain: Path, units: Sequence[str], feeds: Sequence[dict[str, np.ndarray]],
                    threads: int | None, work: Path, share: float = SLOW_SHARE) -> list[dict[str, float | str]]:
    """Quantized nodes (among ``units``) whose INT8 kernel is slower than their float kernel by more than
    ``share`` of the quantized graph's total node time, the largest loss first."""
    q = node_times(quantized, feeds, threads, "all", work)
    f = node_times(plain, feeds, threads, "extended", work)
    total = sum(q.values())
    rows = [{"node": n, "int8_ms": q[n], "float_ms": f[n]} for n in units
            if n in q and n in f and q[n] - f[n] > share * total]
    return sorted(rows, key=lambda r: float(r["float_ms"]) - float(r["int8_ms"]))
