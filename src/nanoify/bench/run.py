"""``nanoify bench``: the same measurements for every model, through the one Engine contract.

Each model is measured in its own fresh process, so peak RSS is that model's (plus the Python runtime and
the engine's libraries, which the baseline pays too) and no model's caches warm another's. The first model
is the baseline: the others get a change column and agreement with it, computed by the model's task (top-1
agreement, predictions changed, logit cosine, SQNR for classifiers). Bench measures time and memory; the
task scores.

Timing is :func:`nanoify.bench.latency.measure_speed`, the routine ``quantize`` uses, with the same rows,
batches and rounds (:class:`~nanoify.config.TimingConfig`). A noisy machine is noticed — other processes
keeping more than half a core busy just before measuring, throughput varying more than 10% between rounds, or
a p99 more than 3× the p50 — said in the
report, and the timing is repeated with twice the rounds when the rounds disagree.

Energy is read from RAPL (``/sys/class/powercap``) for CPU engines or NVML for CUDA ones, and only when
readable; otherwise it is "n/a" — never an estimate shown as a reading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import errors
from ..artifacts import MANIFEST, atomic_dir, machine, manifest, versions, write_json
from ..config import BenchConfig, DataConfig, TimingConfig, to_dict
from ..engines import open_engine, parse_engine_spec
from ..errors import ConfigError, NanoifyError
from ..tasks import TASK_KINDS, TaskKind, make_task, register_task, registered_kinds, synthetic_feed
from ..tasks.resolve import resolve
from .latency import measure_speed, rows_in, time_batches

log = logging.getLogger(__name__)

RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
NOISY_SPREAD = 0.10  # throughput range between rounds, relative to the median
NOISY_TAIL = 3.0  # p99 / p50 of batch-1 latency


def energy_meter(engine_device: str = "cpu") -> Any:
    """A function returning cumulative joules, or None when no sensor is readable here."""
    if engine_device.startswith("cuda"):
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)  # raises where the GPU has no energy counter
            return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3  # mJ → J
        except Exception:  # noqa: BLE001 - no NVML or no GPU
            return None
    try:
        int(RAPL.read_text())
        return lambda: int(RAPL.read_text()) / 1e6
    except (OSError, ValueError):
        return None


def _energy_per_row(run: Any, batches: list[dict[str, np.ndarray]], device: str,
                    min_seconds: float = 2.0) -> dict[str, float | None]:
    """Millijoules per row and the average power in watts over batch passes lasting at least ``min_seconds``
    (energy counters tick coarsely — NVML's about every 100 ms: a pass of a few milliseconds reads as zero); None
    without a readable sensor or a tick. The sensor counts the whole device (GPU) or package (RAPL), idle draw
    included."""

    meter = energy_meter(device)
    if meter is None or not batches:
        return {"energy_mj_per_row": None, "power_w": None}
    rows, t0, e0 = 0, time.perf_counter(), meter()
    while time.perf_counter() - t0 < min_seconds:
        for b in batches:
            run(b)
        rows += rows_in(batches)
    joules, seconds = meter() - e0, time.perf_counter() - t0
    if joules <= 0 or not rows:
        return {"energy_mj_per_row": None, "power_w": None}
    return {"energy_mj_per_row": joules / rows * 1e3, "power_w": joules / seconds}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that over from the parent
    across fork+exec, so a fresh child would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def torch_threads(n: int | None) -> Any:
    """Set torch's intra-op threads for the block and restore the caller's setting after it."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def serve_concurrently(runs: list[Any], requests: list[Any]) -> dict[str, Any]:
    """One thread per callable in ``runs``, all taking requests from one queue: aggregate requests/s and
    per-request p50/p99 latency (ms). Each callable must be warm and used by its thread alone."""
    lat: list[float] = []
    lock = threading.Lock()
    nxt = iter(range(len(requests)))

    def work(run: Any) -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            t0 = time.perf_counter()
            run(requests[i])
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt * 1e3)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=work, args=(r,)) for r in runs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return {"requests": len(requests), "throughput_rows_s": len(requests) / wall,
            "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p99": float(np.percentile(lat, 99))}


def _streams(ref: Any, feeds: list[dict[str, np.ndarray]], n: int, engine_opts: dict[str, Any]) -> dict[str, Any]:
    """``n`` workers, each with its own engine, serving batch-1 requests from one queue concurrently — or, for an
    engine that serves concurrent requests itself (``serve``: OpenVINO's AsyncInferQueue), that engine with
    ``n`` streams over every core."""
    whole = open_engine(ref.engine, str(ref.path), **engine_opts)  # not loaded until entered
    if hasattr(whole, "serve"):
        with whole:
            return {"streams": n, "threads_per_stream": None, **whole.serve(feeds, n)}
    threads = max(1, (os.cpu_count() or 1) // n)
    guard = torch_threads(threads) if ref.engine == "torch" else contextlib.nullcontext()
    with guard, contextlib.ExitStack() as stack:  # torch's intra-op pool is global: n streams share the cores
        engines = [stack.enter_context(open_engine(ref.engine, str(ref.path), **{**engine_opts, "threads": threads}))
                   for _ in range(n)]
        for e in engines:
            e.infer(feeds[0])
        res = serve_concurrently([e.infer for e in engines], feeds)
    return {"streams": n, "threads_per_stream": threads, **res}


def busy_cores(window: float = 0.5) -> float:
    """How many cores other processes kept busy during ``window`` seconds while this one slept (from
    /proc/stat; 0.0 where it is not readable). The load average is no use here: it still counts the work
    this very command did a minute ago."""
    def sample() -> tuple[float, float] | None:
        try:
            vals = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
        return sum(vals) - idle, sum(vals)

    a = sample()
    time.sleep(window)
    b = sample()
    if a is None or b is None or b[1] <= a[1]:
        return 0.0
    return (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1)


def noise_reasons(speed: dict[str, Any], busy_before: float, cores: int) -> list[str]:
    """Why a measurement may mislead (empty when the machine looked quiet)."""
    out = []
    if busy_before > 0.5:
        out.append(f"other processes kept {busy_before:.1f} of {cores} cores busy before measuring")
    if speed.get("round_spread", 0.0) > NOISY_SPREAD:
        out.append(f"batch throughput varied {speed['round_spread']:.0%} between rounds")
    p50, p99 = speed.get("latency_ms_p50"), speed.get("latency_ms_p99")
    if p50 and p99 and p99 / p50 > NOISY_TAIL:
        out.append(f"batch-1 p99 is {p99 / p50:.1f}× the p50")
    return out


def measure_model(model: str, data: Any, engine: str | None = None, streams: int = 0,
                  timing: TimingConfig | None = None, device: str = "cpu", split: str | None = None,
                  task: str | None = None, preprocess: str | None = None,
                  decoder: str | None = None) -> tuple[dict[str, Any], Any]:
    """Every measurement of one model, in the calling process (see ``benchmark`` for isolation). Returns the
    results and the predictions (for agreement with the baseline)."""

    t = timing or TimingConfig()
    name, spec_opts = parse_engine_spec(engine) if engine else (None, {})
    ref = resolve(model, name, task, preprocess, decoder)
    tk = make_task(ref)
    device = spec_opts.get("device", device if ref.engine == "torch" else "cpu")
    busy_before = busy_cores()
    es = tk.eval_set(data, split)
    rss_before = peak_rss_mb()
    opts: dict[str, Any] = {**spec_opts}
    if ref.max_sequence:
        opts["max_dims"] = {"sequence": ref.max_sequence}
    if ref.engine == "torch":
        opts["device"] = device
    # torch's default pool size, restored on the way out: importing torch only for torch engines (~250 MB RSS)
    guard = torch_threads(os.cpu_count()) if ref.engine == "torch" else contextlib.nullcontext()
    res: dict[str, Any] = {"model": str(model), "name": f"{ref.name} ({engine})" if engine else ref.name,
                           "engine": engine or ref.engine, "device": device, "task": ref.task, "split": es.split,
                           "metric": tk.primary_metric(es), "agreement_key": tk.agreement_key,
                           "file_mb": ref.size_bytes() / 1e6, **ref.info}
    with guard:
        t_load = time.perf_counter()
        with open_engine(ref.engine, str(ref.path), **opts) as eng:
            res["load_s"] = time.perf_counter() - t_load
            res.update(_shape(ref, eng))
            b1, big = _time(res, eng, tk, es, t, device)
            # serving memory: the runtime, the model and the timing batches, before any scoring machinery
            # (COCOeval alone holds ~90 MB for 128 images) joins the process
            res["peak_rss_mb"] = peak_rss_mb()
            preds = tk.predict(eng.infer, es)
            res.update(tk.score(preds, es))
        if streams > 1:
            res["streams"] = _streams(ref, b1, streams, opts)
    res["peak_rss_total_mb"] = peak_rss_mb()
    res["rss_before_load_mb"] = rss_before
    if device.startswith("cuda") and ref.engine == "torch":
        import torch

        res["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    res["busy_cores_before"] = busy_before
    res["noise"] = noise_reasons(res, busy_before, os.cpu_count() or 1)
    return res, preds


def _time(res: dict[str, Any], eng: Any, tk: Any, es: Any, t: TimingConfig, device: str) -> tuple[list, list]:
    """Batch-1 latency and batch throughput (twice the rounds when they disagree), batch 8, energy and the
    fixed-shape throughput, into ``res``; returns the batch-1 and big-batch feeds (streams reuse them)."""
    batch = tk.batch_for(t.batch)  # a model exported with a fixed batch of 1 is timed at batch 1
    b1 = tk.feeds(es, 1, t.latency_rows)
    big = tk.feeds(es, batch, t.throughput_rows)
    speed = measure_speed([eng.infer], b1, big, t.rounds, batch)[0]
    if speed["round_spread"] > NOISY_SPREAD:  # rounds disagree: twice the rounds, medians of all
        more = measure_speed([eng.infer], b1, big, t.rounds, batch)[0]
        rounds = speed[f"throughput_b{batch}_rounds"] + more[f"throughput_b{batch}_rounds"]
        speed = {k: float(np.median([speed[k], more[k]])) if isinstance(speed[k], float) else speed[k]
                 for k in speed}
        speed[f"throughput_b{batch}"] = speed["throughput"] = float(np.median(rounds))
        speed[f"throughput_b{batch}_rounds"] = rounds
        res["extra_rounds"] = t.rounds
    res.update(speed)
    res["timing"] = to_dict(t)
    if tk.batch_for(8) == 8:
        b8 = tk.feeds(es, 8, t.throughput_rows)
        res["throughput_b8"] = float(sum(len(next(iter(f.values()))) for f in b8)
                                     / time_batches(eng.infer, b8, warmup=1).sum())
    res.update(_energy_per_row(eng.infer, big, device))
    dims = tk.synthetic_dims()
    if dims and batch == t.batch:  # fixed-shape throughput (text: batch 32 × length 128), from the spec
        fixed = [synthetic_feed(eng.input_spec(), {"batch": t.batch, **dims}, tk.input_ranges(), seed=s)
                 for s in range(4)]
        res["fixed_shape"] = dims
        res[f"throughput_b{t.batch}_fixed"] = float(t.batch * len(fixed)
                                                    / time_batches(eng.infer, fixed, warmup=1).sum())
    return b1, big


def _shape(ref: Any, eng: Any) -> dict[str, Any]:
    """Parameter count (torch module or ONNX weights); for an engine that reports what it compiled (OpenVINO),
    how many compute layers run in INT8 — read, not assumed."""
    out: dict[str, Any] = {}
    if hasattr(eng, "int8_counts"):
        out["int8_layers"], out["compute_layers"] = eng.int8_counts()
        out["precision"] = eng.dtype  # what its float parts ran in (a BF16 folder runs in BF16)
    if hasattr(eng, "model") and ref.path.suffix != ".onnx":
        out["parameters_m"] = sum(p.numel() for p in eng.model.parameters()) / 1e6
    elif ref.path.suffix == ".onnx":  # ONNX Runtime, or torch running the graph (its weights are buffers)
        import onnx

        g = onnx.load(str(ref.path), load_external_data=False).graph
        out["parameters_m"] = sum(int(np.prod(t.dims)) for t in g.initializer if len(t.dims) >= 1
                                  and int(np.prod(t.dims)) > 16) / 1e6
    return out


def _child(args: tuple, kinds: Sequence[TaskKind] = ()) -> tuple[dict[str, Any], Any]:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    for kind in kinds:  # kinds registered in the parent at run time (a fresh process knows the built-in ones)
        register_task(kind)
    try:
        return measure_model(*args)
    except NanoifyError as e:
        return {"_error": str(e), "_type": type(e).__name__}, None


def _run_isolated(args: tuple) -> tuple[dict[str, Any], Any]:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        res, preds = pool.submit(_child, args, registered_kinds()).result()
    if "_error" in res:
        raise getattr(errors, res["_type"], errors.NanoifyError)(res["_error"])
    return res, preds


def _data(data: Any, first_model: str, task: str | None, preprocess: str | None, decoder: str | None) -> Any:
    """The data bench reads: as given, or the default text data for text models."""
    if isinstance(data, DataConfig) and data.data is not None:
        return data
    if data is not None and not isinstance(data, DataConfig):
        return data

    ref = resolve(first_model, task=task, preprocess=preprocess, decoder=decoder)
    spec = ref.kind.default_data()  # a one-line error for kinds with no default data
    base = data if isinstance(data, DataConfig) else DataConfig()
    return dataclasses.replace(base, data=spec)


def benchmark(models: Sequence[str], data: Any = None, out: str | Path | None = None,
              config: BenchConfig | None = None, names: Sequence[str] | None = None, progress: bool = True,
              task: str | None = None, preprocess: str | None = None, decoder: str | None = None,
              **overrides: Any) -> dict[str, Any]:
    """Measure ``models`` (the first is the baseline); write report.md/report.json/report.png to ``out``.

    With ``config.repeats`` > 1 the models are measured in interleaved runs (m1, m2, …, m1, m2, …), each in a
    fresh process, and every number is the median over runs. Returns the report dict (what ``--json`` prints).
    ``overrides`` replace fields of ``config`` (``streams=2``, ``repeats=3``, ``isolate=False``).
    """

    cfg = dataclasses.replace(config or BenchConfig(), **overrides)
    if not models:
        raise ConfigError("give at least one model to benchmark")
    engines = list(cfg.engines or [None] * len(models))
    if len(engines) != len(models):
        raise ConfigError(f"--engine lists {len(engines)} engines for {len(models)} models; give one per model")
    data = _data(data, str(models[0]), task, preprocess, decoder)
    runs: list[list[tuple[dict[str, Any], Any]]] = [[] for _ in models]
    jobs = [(i, m, e) for _ in range(cfg.repeats) for i, (m, e) in enumerate(zip(models, engines, strict=True))]
    for i, m, e in tqdm(jobs, desc="bench", unit="run", disable=not progress or None):
        args = (str(m), data, e, cfg.streams, cfg.timing, cfg.device, cfg.split, task, preprocess, decoder)
        runs[i].append(_run_isolated(args) if cfg.isolate else measure_model(*args))
    results = [_median_of_runs([r for r, _ in rs]) for rs in runs]
    preds = [rs[0][1] for rs in runs]
    for r, n in zip(results, names or [], strict=False):
        r["name"] = n
    base_task = make_task(resolve(models[0], task=task, preprocess=preprocess, decoder=decoder))
    for r, p in zip(results, preds, strict=True):  # the baseline agrees with itself: its column reads 1.0
        r.update(base_task.agreement(preds[0], p))
    report = {"kind": "bench", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
              "versions": versions(), "data": str(getattr(data, "data", data)), "task": results[0].get("task"),
              "metric": results[0].get("metric"), "agreement_key": results[0].get("agreement_key"),
              "split": results[0].get("split", cfg.split), "max_length": getattr(data, "max_length", None),
              "repeats": cfg.repeats, "timing": to_dict(cfg.timing), "models": results,
              "noisy": any(r.get("noise") for r in results)}
    if out is not None:
        with atomic_dir(out) as tmp:
            write_json(tmp / "report.json", report)
            (tmp / "report.md").write_text(format_table(report) + "\n")
            plot(report, tmp / "report.png")
            write_json(tmp / MANIFEST, manifest("bench", {"models": [str(m) for m in models], **to_dict(cfg)},
                                                report="report.json"))
    return report


def _median_of_runs(runs: list[dict[str, Any]], top: bool = True) -> dict[str, Any]:
    """One result from repeated runs of a model: numbers are medians (nested dicts too), the rest from run 1."""
    first = runs[0]
    if len(runs) == 1:
        return first
    out: dict[str, Any] = {}
    for k, v in first.items():
        if isinstance(v, bool):
            out[k] = v
        elif isinstance(v, int | float) and all(isinstance(r.get(k), int | float) for r in runs):
            same = all(r[k] == v for r in runs)  # sizes, counts, settings: keep them as they are
            out[k] = v if same else float(np.median([r[k] for r in runs]))
        elif isinstance(v, dict) and all(isinstance(r.get(k), dict) for r in runs):
            out[k] = _median_of_runs([r[k] for r in runs], top=False)
        elif k == "noise":
            out[k] = sorted({n for r in runs for n in r.get("noise", [])})
        else:
            out[k] = v
    if top:
        out["throughput_runs"] = [r["throughput"] for r in runs]
    return out


ROWS: list[tuple[str, str, int]] = [
    # key, label, decimals
    ("engine", "engine", 0),
    ("layers", "layers", 0),
    ("parameters_m", "parameters (M)", 2),
    ("file_mb", "file (MB)", 2),
    ("int8_layers", "INT8 layers, as compiled (OpenVINO)", 0),
    ("<task>", "", 0),  # the task kind's own score rows (TaskKind.table_rows) go here
    ("latency_ms_p50", "latency b1 p50 (ms)", 3),
    ("latency_ms_p90", "latency b1 p90 (ms)", 3),
    ("latency_ms_p99", "latency b1 p99 (ms)", 3),
    ("throughput_b8", "throughput b8 (rows/s)", 1),
    ("throughput_b32", "throughput b32 (rows/s)", 1),
    ("throughput_b1", "throughput b1, fixed-batch model (rows/s)", 1),
    ("throughput_b32_fixed", "throughput b32 fixed shape (rows/s)", 1),
    ("streams_throughput", "streams: rows/s", 1),
    ("streams_p99", "streams: latency p99 (ms)", 2),
    ("peak_rss_mb", "peak RSS (MB)", 0),
    ("gpu_peak_mb", "GPU peak (MB)", 0),
    ("energy_mj_per_row", "energy (mJ/row)", 2),
    ("power_w", "average power under load (W)", 0),
]


def _value(r: dict[str, Any], key: str) -> Any:
    if key == "streams_throughput":
        return r.get("streams", {}).get("throughput_rows_s")
    if key == "streams_p99":
        return r.get("streams", {}).get("latency_ms_p99")
    return r.get(key)


def _change(a: Any, b: Any, key: str) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or isinstance(a, bool):
        return ""
    if key in ("accuracy", "macro_f1", "map50_95", "map50"):
        return f"{(b - a) * 100:+.2f} pt"
    if key in ("top1_agreement", "logit_cosine", "sqnr_db", "predictions_changed", "box_agreement", "mean_iou",
               "map50_95_vs_reference") or a == 0:
        return ""
    ratio = b / a
    if key.startswith("latency") or key.startswith("streams_p"):
        return f"{a / b:.2f}× faster" if b else ""
    return f"{ratio:.2f}×"


def _rows(kind: TaskKind | None) -> list[tuple[str, str, int]]:
    """The table's rows: the shared ones, with the task kind's score rows in their place."""
    out: list[tuple[str, str, int]] = []
    for row in ROWS:
        out.extend((kind.table_rows if kind is not None else ()) if row[0] == "<task>" else (row,))
    return out


def format_table(report: dict[str, Any]) -> str:
    """Markdown: metric | baseline | others… | change (last against baseline); then machine, noise notes."""
    ms = report["models"]
    kind = TASK_KINDS.get(report.get("task", ""))
    unit = kind.row_word if kind is not None else "row"
    head = ["metric"] + [m["name"] for m in ms] + (["change"] if len(ms) > 1 else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, nd in _rows(kind):
        vals = [_value(m, key) for m in ms]
        if all(v is None for v in vals) and key not in ("energy_mj_per_row",):
            continue
        if unit != "row":
            label = label.replace("rows/s", f"{unit}s/s").replace("(mJ/row)", f"(mJ/{unit})")
        cells = []
        for v in vals:
            if v is None:
                cells.append("n/a")
            elif isinstance(v, float):
                cells.append(f"{v:.{nd}f}")
            else:
                cells.append(str(v))
        row = [label] + cells
        if len(ms) > 1:
            row.append(_change(vals[0], vals[-1], key))
        lines.append("| " + " | ".join(row) + " |")
    mach = report["machine"]
    t = report.get("timing", {})
    text = kind is not None and kind.reads_data_config  # its rows are truncated to a max length
    ml = f", max length {report['max_length']}" if report.get("max_length") and text else ""
    note = (f"{report['data']} ({report['split']}{ml}); {mach['cpu']}, {mach['cores']} cores"
            f"{', ' + ' '.join(mach['cpu_flags']) if mach.get('cpu_flags') else ''}; {report['created']}. "
            f"Latency over the first {t.get('latency_rows')} rows at batch 1, throughput over the first "
            f"{t.get('throughput_rows')} at batch {ms[0].get('throughput_batch', t.get('batch'))}, medians of "
            f"{t.get('rounds')} rounds. "
            "Peak RSS is the measuring process while serving (runtime, model, timing batches), before scoring.")
    if report.get("repeats", 1) > 1:
        note += f" Every number is the median of {report['repeats']} interleaved runs per model (fresh processes)."
    fixed = next((m["fixed_shape"] for m in ms if m.get("fixed_shape")), None)
    if fixed:
        note += " Fixed shape: batch 32 × " + ", ".join(f"{k} {v}" for k, v in fixed.items()) + " (random inputs)."
    if all(m.get("energy_mj_per_row") is None for m in ms):
        note += " Energy n/a: no RAPL or NVML sensor is readable here."
    lines += ["", note]
    guessed = [m["name"] for m in ms if m.get("preprocess_source") == "defaults"]
    if guessed:
        lines += ["", "**Preprocessing guessed** (no preprocess.json beside the model; the defaults were used) for: "
                  + ", ".join(guessed) + ". Its numbers mean little unless the model was trained that way."]
    noisy = [(m["name"], m.get("noise")) for m in ms if m.get("noise")]
    if noisy:
        lines += ["", "**Noisy machine — read these numbers with care:** " + "; ".join(
            f"{n}: {', '.join(r)}" for n, r in noisy) + ". Timings whose rounds disagreed were measured with twice "
            "the rounds; rerun with --repeats 3 on a quieter machine to confirm."]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """The primary metric against batch-1 p50 latency, one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = report["models"]
    key = "accuracy" if all("accuracy" in m for m in ms) else "top1_agreement"
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for m in ms:
        y = m.get(key, 1.0) * 100
        ax.scatter(m["latency_ms_p50"], y, s=40)
        ax.annotate(m["name"], (m["latency_ms_p50"], y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    lat = [m["latency_ms_p50"] for m in ms]
    if max(lat) > 5 * min(lat):
        ax.set_xscale("log")  # a 10-20x speed-up squeezes the fast models against the axis otherwise
    ax.margins(x=0.3, y=0.15)  # room for the labels
    ax.set_xlabel("latency, batch 1, p50 (ms)")
    ax.set_ylabel(f"{key.replace('_', ' ')} (%)")
    ax.set_title(f"{key.replace('_', ' ')} vs latency — {report['split']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
