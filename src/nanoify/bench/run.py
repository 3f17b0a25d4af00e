"""``nanoify bench``: the same measurements for every model, through the one Engine contract.

Each model is measured in its own fresh process, so peak RSS is that model's (plus the Python runtime and
the engine's libraries, which the baseline pays too) and no model's caches warm another's. The first model
is the baseline: the others get a change column and agreement with it (top-1, logit cosine, SQNR).

Energy is read from RAPL (``/sys/class/powercap``) for CPU engines or NVML for CUDA ones, and only when
readable; otherwise it is "n/a" — never an estimate shown as a reading.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import MANIFEST, atomic_dir, machine, manifest, versions, write_json
from ..config import DataConfig
from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
FIXED_LEN = 128


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
                    min_seconds: float = 2.0) -> float | None:
    """Millijoules per row over batch-32 passes lasting at least ``min_seconds`` (energy counters tick
    coarsely: a pass of a few milliseconds reads as zero); None without a readable sensor or a tick."""
    meter = energy_meter(device)
    if meter is None:
        return None
    rows, t0, e0 = 0, time.perf_counter(), meter()
    while time.perf_counter() - t0 < min_seconds:
        for b in batches:
            run(b)
            rows += len(b["input_ids"])
    joules = meter() - e0
    return joules / rows * 1e3 if joules > 0 and rows else None


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


def _streams(ref: Any, ids: list[list[int]], pad: int, n: int, engine_opts: dict[str, Any]) -> dict[str, Any]:
    """``n`` workers, each with its own engine, serving batch-1 requests from one queue concurrently."""
    from ..data.text import collate
    from ..engines import open_engine

    threads = max(1, (os.cpu_count() or 1) // n)
    if ref.engine == "torch":  # torch's intra-op pool is global: n streams × all cores would oversubscribe
        import torch

        torch.set_num_threads(threads)
    engines = [open_engine(ref.engine, str(ref.path), **{**engine_opts, "threads": threads}).__enter__()
               for _ in range(n)]
    feeds = [collate([x], pad) for x in ids]
    for e in engines:
        e.infer(feeds[0])
    lat: list[float] = []
    lock = threading.Lock()
    nxt = iter(range(len(feeds)))

    def work(e: Any) -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            t0 = time.perf_counter()
            e.infer(feeds[i])
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt * 1e3)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=work, args=(e,)) for e in engines]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    for e in engines:
        e.close()
    if ref.engine == "torch":
        torch.set_num_threads(os.cpu_count() or 1)
    return {"streams": n, "threads_per_stream": threads, "requests": len(feeds),
            "throughput_rows_s": len(feeds) / wall, "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p99": float(np.percentile(lat, 99))}


def measure_model(model: str, data: dict[str, Any], engine: str | None = None, streams: int = 0,
                  latency_rows: int = 200, throughput_rows: int = 512, device: str = "cpu") -> dict[str, Any]:
    """Every measurement of one model (runs in the calling process; see ``benchmark`` for isolation)."""
    from ..bench.accuracy import classification_metrics, predict_with
    from ..bench.latency import latency_throughput, make_batches, time_batches
    from ..data.text import LabelMap, encode_texts, load_text_data
    from ..engines import open_engine, parse_engine_spec
    from ..models.load import load_tokenizer
    from ..models.resolve import light_tokenizer, resolve

    name, spec_opts = parse_engine_spec(engine) if engine else (None, {})
    ref = resolve(model, name)
    device = spec_opts.get("device", device if ref.engine == "torch" else "cpu")
    if ref.engine == "torch":  # only then: importing torch costs ~250 MB of RSS the other engines must not pay
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    data = dict(data)
    split = data.pop("split", None) or "validation"
    cfg = DataConfig(**data)
    if cfg.max_length > ref.max_sequence:
        raise ConfigError(f"--max-length {cfg.max_length} is longer than {ref.name} allows ({ref.max_sequence} "
                          f"positions); use --max-length {ref.max_sequence} or less")
    ds = load_text_data(cfg, splits=(split,))
    sp = ds.split(split)
    if not sp.texts:
        raise DataError(f"the evaluation split of {ds.spec} is empty")
    light = light_tokenizer(ref.tokenizer_dir) if ref.engine != "torch" else None
    if light is not None:
        pad, vocab, ids = light.pad_token_id, light.vocab_size, light.encode(sp.texts, cfg.max_length)
    else:
        tok = load_tokenizer(str(ref.tokenizer_dir))
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        vocab, ids = int(tok.vocab_size), encode_texts(tok, sp.texts, cfg.max_length)
    gold = np.array(ref.label_map.encode(sp.labels, f"evaluation split of {ds.spec}"))
    rss_before = peak_rss_mb()
    opts: dict[str, Any] = {"max_sequence": ref.max_sequence, **spec_opts}
    if ref.engine == "torch":
        opts["device"] = device
    t_load = time.perf_counter()
    eng = open_engine(ref.engine, str(ref.path), **opts).__enter__()
    load_s = time.perf_counter() - t_load
    run = (lambda feed: eng.infer(feed)["logits"])  # noqa: E731
    res: dict[str, Any] = {"model": str(model), "name": f"{ref.name} ({engine})" if engine else ref.name,
                           "engine": engine or ref.engine, "device": device,
                           "file_mb": ref.size_bytes() / 1e6, "load_s": load_s, **_shape(ref, eng)}
    logits = predict_with(run, ids, pad, 32)
    res.update(classification_metrics(logits.argmax(-1), gold, len(LabelMap(ref.label_map.names))))
    rows = ids[:throughput_rows]
    res.update(latency_throughput(run, rows, pad, n_latency=latency_rows, throughput_batch=32))
    res["throughput_b8"] = float(len(rows) / time_batches(run, make_batches(rows, 8, pad), warmup=1).sum())
    res["energy_mj_per_row"] = _energy_per_row(run, make_batches(ids[:throughput_rows], 32, pad), device)
    rng = np.random.default_rng(0)
    fixed = []
    fixed_len = min(FIXED_LEN, ref.max_sequence)  # the tiny test models have 64 positions
    res["fixed_length"] = fixed_len
    for _ in range(4):
        x = rng.integers(1000 if vocab > 2000 else 1, vocab, size=(32, fixed_len)).astype(np.int64)
        fixed.append({"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)})
    secs = time_batches(run, fixed, warmup=1).sum()
    res[f"throughput_b32_len{FIXED_LEN}"] = float(32 * len(fixed) / secs)
    eng.close()
    if streams > 1:
        res["streams"] = _streams(ref, ids[:latency_rows], pad, streams, opts)
    res["peak_rss_mb"] = peak_rss_mb()
    res["rss_before_load_mb"] = rss_before
    if device.startswith("cuda") and ref.engine == "torch":
        res["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    res["_logits"] = logits.tolist()
    return res


def _shape(ref: Any, eng: Any) -> dict[str, Any]:
    """Encoder layers (from the config beside the model) and parameter count (torch module or ONNX weights)."""
    import json

    out: dict[str, Any] = {}
    cfg = ref.tokenizer_dir / "config.json"
    if cfg.is_file():
        out["layers"] = json.loads(cfg.read_text()).get("num_hidden_layers")
    if hasattr(eng, "model"):
        out["parameters_m"] = sum(p.numel() for p in eng.model.parameters()) / 1e6
    elif ref.path.suffix == ".onnx":
        import onnx

        g = onnx.load(str(ref.path), load_external_data=False).graph
        out["parameters_m"] = sum(int(np.prod(t.dims)) for t in g.initializer if len(t.dims) >= 1
                                  and int(np.prod(t.dims)) > 16) / 1e6
    return out


def _child(args: tuple) -> dict[str, Any]:
    from ..errors import NanoifyError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        return measure_model(*args)
    except NanoifyError as e:
        return {"_error": str(e), "_type": type(e).__name__}


def _run_isolated(args: tuple) -> dict[str, Any]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from .. import errors

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        res = pool.submit(_child, args).result()
    if "_error" in res:
        raise getattr(errors, res["_type"], errors.NanoifyError)(res["_error"])
    return res


def benchmark(models: Sequence[str], data: DataConfig | str | None = None, out: str | Path | None = None,
              split: str = "validation", engines: Sequence[str | None] | None = None, streams: int = 0,
              latency_rows: int = 200, throughput_rows: int = 512, device: str = "cpu", isolate: bool = True,
              progress: bool = True, names: Sequence[str] | None = None, repeats: int = 1) -> dict[str, Any]:
    """Measure ``models`` (the first is the baseline); write report.md/report.json/report.png to ``out``.

    With ``repeats`` > 1 the models are measured in interleaved rounds (m1, m2, …, m1, m2, …), each run in
    a fresh process, and every timing is the median over rounds: a slow spell of a shared machine then
    touches every model instead of whichever ran during it. Per-round throughputs stay in the JSON.
    Returns the report dict (also what ``--json`` prints).
    """
    from tqdm.auto import tqdm

    from .accuracy import cosine, sqnr_db

    if not models:
        raise ConfigError("give at least one model to benchmark")
    if streams < 0:
        raise ConfigError("--streams must be ≥ 0")
    cfg = data if isinstance(data, DataConfig) else DataConfig(data=data)
    if cfg.data is None:
        from ..data.text import default_data_spec

        cfg = DataConfig(data=default_data_spec(), text_column=cfg.text_column, label_column=cfg.label_column,
                         max_length=cfg.max_length)
    dd = {"data": cfg.data, "text_column": cfg.text_column, "label_column": cfg.label_column,
          "max_length": cfg.max_length}
    engines = list(engines or [None] * len(models))
    if repeats < 1:
        raise ConfigError("--repeats must be ≥ 1")
    runs: list[list[dict[str, Any]]] = [[] for _ in models]
    jobs = [(i, m, e) for _ in range(repeats) for i, (m, e) in enumerate(zip(models, engines, strict=True))]
    for i, m, e in tqdm(jobs, desc="bench", unit="run", disable=not progress or None):
        args = (str(m), {**dd, "split": split}, e, streams, latency_rows, throughput_rows, device)
        runs[i].append(_run_isolated(args) if isolate else measure_model(*args))
    results = [_median_of_runs(r) for r in runs]
    for r, n in zip(results, names or [], strict=False):
        r["name"] = n
    base = np.array(results[0].pop("_logits"))
    for r in results[1:]:
        lg = np.array(r.pop("_logits"))
        r["top1_agreement"] = float((lg.argmax(-1) == base.argmax(-1)).mean())
        r["logit_cosine"] = cosine(base, lg)
        r["sqnr_db"] = sqnr_db(base, lg)
    report = {"kind": "bench", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
              "versions": versions(), "data": cfg.data, "split": split, "max_length": cfg.max_length,
              "repeats": repeats, "models": results}
    if out is not None:
        with atomic_dir(out) as tmp:
            write_json(tmp / "report.json", report)
            (tmp / "report.md").write_text(format_table(report) + "\n")
            plot(report, tmp / "report.png")
            write_json(tmp / MANIFEST, manifest("bench", {"models": [str(m) for m in models], "split": split,
                                                          "streams": streams}, report="report.json"))
    return report


def _median_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from repeated runs of a model: numbers are medians (nested dicts too), the rest from run 1."""
    first = runs[0]
    if len(runs) == 1:
        return first
    out: dict[str, Any] = {}
    for k, v in first.items():
        if isinstance(v, bool) or k == "_logits":
            out[k] = v
        elif isinstance(v, int | float) and all(isinstance(r.get(k), int | float) for r in runs):
            out[k] = float(np.median([r[k] for r in runs]))
        elif isinstance(v, dict):
            out[k] = _median_of_runs([r[k] for r in runs])
        else:
            out[k] = v
    out["throughput_b32_runs"] = [r["throughput_b32"] for r in runs]
    return out


ROWS: list[tuple[str, str, int]] = [
    # key, label, decimals
    ("engine", "engine", 0),
    ("layers", "layers", 0),
    ("parameters_m", "parameters (M)", 1),
    ("file_mb", "file (MB)", 1),
    ("accuracy", "accuracy", 4),
    ("top1_agreement", "top-1 agreement with baseline", 4),
    ("logit_cosine", "logit cosine to baseline", 4),
    ("sqnr_db", "logit SQNR vs baseline (dB)", 1),
    ("latency_ms_p50", "latency b1 p50 (ms)", 2),
    ("latency_ms_p90", "latency b1 p90 (ms)", 2),
    ("latency_ms_p99", "latency b1 p99 (ms)", 2),
    ("throughput_b8", "throughput b8 (rows/s)", 1),
    ("throughput_b32", "throughput b32 (rows/s)", 1),
    (f"throughput_b32_len{FIXED_LEN}", f"throughput b32 len {FIXED_LEN} (rows/s)", 1),
    ("streams_throughput", "streams: rows/s", 1),
    ("streams_p99", "streams: latency p99 (ms)", 2),
    ("peak_rss_mb", "peak RSS (MB)", 0),
    ("gpu_peak_mb", "GPU peak (MB)", 0),
    ("energy_mj_per_row", "energy (mJ/row)", 2),
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
    if key == "accuracy":
        return f"{(b - a) * 100:+.2f} pt"
    if key in ("top1_agreement", "logit_cosine", "sqnr_db") or a == 0:
        return ""
    ratio = b / a
    if key.startswith("latency") or key.startswith("streams_p"):
        return f"{a / b:.2f}× faster" if b else ""
    return f"{ratio:.2f}×"


def format_table(report: dict[str, Any]) -> str:
    """Markdown: metric | baseline | others… | change (last against baseline)."""
    ms = report["models"]
    head = ["metric"] + [m["name"] for m in ms] + (["change"] if len(ms) > 1 else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, nd in ROWS:
        vals = [_value(m, key) for m in ms]
        if all(v is None for v in vals) and key not in ("energy_mj_per_row",):
            continue
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
    note = (f"{report['data']} ({report['split']}, max length {report['max_length']}); {mach['cpu']}, "
            f"{mach['cores']} cores; {report['created']}. Peak RSS is the whole measuring process.")
    if report.get("repeats", 1) > 1:
        note += f" Timings and memory are medians of {report['repeats']} interleaved runs per model."
    if all(m.get("energy_mj_per_row") is None for m in ms):
        note += " Energy n/a: no RAPL or NVML sensor is readable here."
    lines += ["", note]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Accuracy against batch-1 p50 latency, one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for m in report["models"]:
        ax.scatter(m["latency_ms_p50"], m["accuracy"] * 100, s=40)
        ax.annotate(m["name"], (m["latency_ms_p50"], m["accuracy"] * 100), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    lat = [m["latency_ms_p50"] for m in report["models"]]
    if max(lat) > 5 * min(lat):
        ax.set_xscale("log")  # a 10-20x speed-up squeezes the fast models against the axis otherwise
    ax.margins(x=0.3, y=0.15)  # room for the labels
    ax.set_xlabel("latency, batch 1, p50 (ms)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy vs latency — {report['split']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
