"""The GPU engine matrix of issue 11, on a BERT-base-shaped classifier (12×768, random weights, sequence 128).

Run by `benchmarks/gpu_check.sh` on a machine with one CUDA GPU (or alone: `python benchmarks/gpu_check.py --out
DIR`). Without CUDA it writes a report saying so and exits 0, so it can be checked anywhere. `--dry-run` runs every
row on the CPU with a 2-layer, 128-wide BERT, sequence 16 and a few calls (no CUDA graphs, streams without CUDA
streams): the script's own code paths checked before GPU minutes are spent on them; its numbers mean nothing.

Rows, each in the same process, timed with CUDA events after warm-up:
  eager FP32, eager FP16, SDPA FP16, SDPA FP16 + CUDA graphs (engines/static_shapes.py), the same with
  torch.compile (inductor's default mode, reduce-overhead with its own graphs instead of ours, and max-autotune
  without its graphs when half the --budget is left — its kernel search takes minutes; the compile rows come last,
  after the streams, and every row is written as it comes), and CUDA
  graphs with the quantized linear layers of models/quantized.py (INT8 dynamic, INT8 weight-only, FP8 where compute
  capability ≥ 8.9), and the same layers through torchao's configs where torchao is importable (gpu_check.sh
  installs the carried wheel).
Per row: batch-1 latency p50/p99 over 200 calls, batch-128 throughput over 20 calls, both at sequence 128;
average power (W) during the batch-128 pass from an NVML sampler, the idle baseline, and energy per row from
NVML's energy counter over ≥ 2 s of passes. Every quantized row's logits are compared with FP32's on the
same inputs (cosine), so a wrong small-M INT8 GEMM shows. Results: gpu_matrix.json and gpu_matrix.md in --out.
Targets (issue 11): b1 ≤ 1.0 ms with graphs in FP16 and ≥ 3× faster than eager; b128 ≥ 16,000 rows/s with FP8
or INT8.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SEQ, B1_CALLS, BIG, BIG_CALLS, MIN_SECONDS = 128, 200, 128, 20, 2.0
DEV = "cuda"  # "cpu" under --dry-run


class Power:
    """NVML power samples (every 20 ms) while ``with``; energy counter around it when the GPU has one."""

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.samples: list[float] = []

    def watts(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.h) / 1e3

    def energy_j(self) -> float | None:
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.h) / 1e3
        except Exception:  # noqa: BLE001 - no energy counter on this GPU
            return None

    def __enter__(self) -> Power:
        self.samples, self._stop = [], threading.Event()
        self.e0, self.t0 = self.energy_j(), time.perf_counter()

        def loop() -> None:
            while not self._stop.is_set():
                self.samples.append(self.watts())
                time.sleep(0.02)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self.t0
        e1 = self.energy_j()
        self.joules = None if self.e0 is None or e1 is None else e1 - self.e0


def _model(dtype, attention: str):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    small = {} if DEV == "cuda" else {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2,
                                      "intermediate_size": 256}
    cfg = BertConfig(num_labels=2, **small)
    cfg._attn_implementation = attention
    return BertForSequenceClassification(cfg).eval().to(DEV, dtype)


def _sync() -> None:
    import torch

    if DEV == "cuda":
        torch.cuda.synchronize()


def _timed(fn, feed, calls: int) -> list[float]:
    import torch

    times = []
    for _ in range(calls):
        if DEV != "cuda":
            t0 = time.perf_counter()
            fn(feed)
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(feed)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return times


def run_row(name: str, fn, feeds: dict, ref_logits, power: Power | None) -> dict:
    """One row of the matrix; a row that fails (a capture the installed transformers does not allow, say) is
    recorded with its error and the matrix goes on."""
    try:
        return _row(name, fn, feeds, ref_logits, power)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        print(f"{name}: FAILED {type(e).__name__}: {first}", flush=True)
        return {"name": name, "error": f"{type(e).__name__}: {first}"}


def _row(name: str, fn, feeds: dict, ref_logits, power: Power | None) -> dict:
    import numpy as np
    import torch

    for f in (feeds["b1"], feeds["big"]):
        for _ in range(3):
            fn(f)
    _sync()
    lat = _timed(fn, feeds["b1"], B1_CALLS)
    row = {"name": name, "b1_p50_ms": float(np.percentile(lat, 50)), "b1_p99_ms": float(np.percentile(lat, 99))}
    passes, t0 = 0, time.perf_counter()
    ctx = power if power is not None else _Null()
    with ctx:
        while passes < BIG_CALLS or time.perf_counter() - t0 < MIN_SECONDS:  # ≥ 2 s for the energy counter
            fn(feeds["big"])
            passes += 1
        _sync()
    wall = time.perf_counter() - t0
    row["b128_rows_s"] = passes * BIG / wall
    if power is not None:
        row["watts"] = float(np.mean(power.samples)) if power.samples else None
        row["mj_per_row"] = None if power.joules is None else power.joules * 1e3 / (passes * BIG)
    # the worse of batch 1 and batch 128 (a batch-1 classifier's logits are two numbers: too few alone)
    row["cosine_vs_fp32"] = min(
        float(torch.nn.functional.cosine_similarity(fn(feeds[k]).float().flatten(), ref_logits[k].flatten(), dim=0))
        for k in ("b1", "big"))
    return row


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def streams_row(model, feed: dict, n: int = 4, requests: int = 400) -> dict:
    """Batch-1 requests served by ``n`` threads, each with its own CUDA stream and captured graph (the torch
    engine's arrangement), against one: aggregate rows/s, per-request p50/p99 (dry run: threads alone)."""
    import contextlib

    import torch

    from nanoify.bench.run import serve_concurrently
    from nanoify.engines.static_shapes import StaticShapeRunner

    def serve(k: int) -> dict:
        runs = []
        for _ in range(k):
            stream = torch.cuda.Stream() if DEV == "cuda" else None
            with torch.cuda.stream(stream) if stream else contextlib.nullcontext():
                r = StaticShapeRunner(lambda **t: model(**t).logits, {"input_ids": 0}, (SEQ,), DEV,
                                      graphs=DEV == "cuda")
                r(feed)

            def run(f, r=r, stream=stream):
                with torch.cuda.stream(stream) if stream else contextlib.nullcontext():
                    r(f)
                    if stream:
                        stream.synchronize()
            runs.append(run)
        _sync()
        return serve_concurrently(runs, [feed] * requests)

    one, many = serve(1), serve(n)
    return {"streams": n, "one_stream_rows_s": one["throughput_rows_s"], "rows_s": many["throughput_rows_s"],
            "ratio": many["throughput_rows_s"] / one["throughput_rows_s"], "p50_ms": many["latency_ms_p50"],
            "p99_ms": many["latency_ms_p99"]}


def write_report(out: Path, report: dict, rows: list[dict], final: bool) -> str:
    """gpu_matrix.json and gpu_matrix.md from the rows so far, targets included; ``final=False`` marks both partial
    (a matrix cut short by its step's time cap still leaves a readable table)."""
    ok = [r for r in rows if "error" not in r]
    eager_b1 = next((r["b1_p50_ms"] for r in ok if r["name"] == "eager FP16"), float("nan"))
    best_b1 = min((r["b1_p50_ms"] for r in ok if "graphs" in r["name"] and "FP16" in r["name"]), default=float("nan"))
    best_q = max((r["b128_rows_s"] for r in ok if "INT8" in r["name"] or "FP8" in r["name"]), default=0.0)
    worst_cos = min((r["cosine_vs_fp32"] for r in ok), default=float("nan"))
    targets = {
        "b1 ≤ 1.0 ms with graphs in FP16": [best_b1, best_b1 <= 1.0],
        "graphs ≥ 3× faster than eager FP16 at b1": [eager_b1 / best_b1, eager_b1 / best_b1 >= 3.0],
        "b128 ≥ 16,000 rows/s with FP8 or INT8": [best_q, best_q >= 16000],
        "every row's logits cosine ≥ 0.99 vs FP32": [worst_cos, worst_cos >= 0.99],
    }
    st = report.get("streams")
    if st and "error" not in st:
        targets["four streams ≥ 3× one stream (b1, graphs)"] = [st["ratio"], st["ratio"] >= 3.0]
    full = {**report, "rows": list(rows), "targets": targets, **({} if final else {"partial": True})}
    (out / "gpu_matrix.json").write_text(json.dumps(full, indent=2) + "\n")
    lines = [f"GPU matrix{'' if final else ' (PARTIAL: cut short)'}: {report['gpu']} (capability "
             f"{report['capability']}), torch {report['torch']}, CUDA {report['cuda']}, torchao "
             f"{report.get('torchao') or 'not installed'}; BERT-base shape, random weights, sequence {SEQ}; idle "
             f"{report.get('idle_watts', float('nan')):.0f} W.", "",
             "| engine | b1 p50 ms | b1 p99 ms | b128 rows/s | W | mJ/row | cosine vs FP32 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:150]} | | | | | |")
            continue
        w, mj = r.get("watts"), r.get("mj_per_row")
        lines.append(f"| {r['name']} | {r['b1_p50_ms']:.3f} | {r['b1_p99_ms']:.3f} | {r['b128_rows_s']:.0f} | "
                     f"{'n/a' if w is None else f'{w:.0f}'} | {'n/a' if mj is None else f'{mj:.3f}'} | "
                     f"{r['cosine_vs_fp32']:.4f} |")
    if st:
        lines += ["", (f"Four streams (b1, FP16 SDPA + graphs, one graph per stream): {st['rows_s']:.0f} rows/s vs "
                       f"{st['one_stream_rows_s']:.0f} on one ({st['ratio']:.2f}×), p50 {st['p50_ms']:.2f} ms, p99 "
                       f"{st['p99_ms']:.2f} ms") if "error" not in st else f"Streams failed: {st['error']}"]
    lines += ["", "Targets: " + "; ".join(f"{k}: {v[0]:.3g} ({'met' if v[1] else 'MISSED'})"
                                         for k, v in targets.items())]
    text = "\n".join(lines) + "\n"
    (out / "gpu_matrix.md").write_text(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile row (minutes)")
    ap.add_argument("--dry-run", action="store_true", help="every row on the CPU, tiny model: numbers mean nothing")
    ap.add_argument("--budget", type=float, default=200.0,
                    help="seconds the matrix may take (gpu_check.sh caps its step at 220): max-autotune runs only when "
                         "half of it is left")
    a = ap.parse_args()
    t_start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    global DEV, SEQ, B1_CALLS, BIG, BIG_CALLS, MIN_SECONDS
    if a.dry_run:
        DEV, SEQ, B1_CALLS, BIG, BIG_CALLS, MIN_SECONDS = "cpu", 16, 5, 8, 2, 0.0
    report: dict = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if DEV == "cuda" and not torch.cuda.is_available():
        report["skipped"] = "no CUDA GPU: nothing measured"
        (out / "gpu_matrix.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "gpu_matrix.md").write_text("GPU matrix skipped: no CUDA GPU on this machine.\n")
        print(report["skipped"])
        return 0
    from nanoify.engines.static_shapes import StaticShapeRunner
    from nanoify.models.quantized import fp8_supported, quantizable_linears, quantize_model

    if DEV == "cuda":
        report.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)))
    else:
        report.update(gpu="CPU DRY RUN (2-layer, 128-wide, sequence 16: numbers mean nothing)", capability=[])
    power = None
    if DEV == "cuda":
        try:
            power = Power()
            time.sleep(1.0)
            report["idle_watts"] = float(sum(power.watts() for _ in range(10)) / 10)
        except Exception as e:  # noqa: BLE001 - no NVML
            power, report["power"] = None, f"NVML not readable: {e}"
    g = torch.Generator().manual_seed(0)
    feeds = {}
    for key, b in (("b1", 1), ("big", BIG)):
        ids = torch.randint(1000, 30000, (b, SEQ), generator=g).to(DEV)
        feeds[key] = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    fp32 = _model(torch.float32, "eager")
    with torch.inference_mode():
        ref = {k: fp32(**feeds[k]).logits.float() for k in ("b1", "big")}

    def eager(m):
        def f(feed):
            with torch.inference_mode():
                return m(**feed).logits
        return f

    def graphed(m, compile_mode=None):
        def call(**t):
            return m(**t).logits

        if compile_mode:
            call = torch.compile(call, mode=compile_mode, dynamic=False)
        # reduce-overhead captures CUDA graphs of its own: ours only pad then
        graphs = DEV == "cuda" and compile_mode != "reduce-overhead"
        r = StaticShapeRunner(call, {"input_ids": 0}, (SEQ,), DEV, graphs=graphs)
        return lambda feed: r(feed)

    class Rows(list):
        """The rows so far, written (JSON and Markdown, marked partial) after each one: a step cut short by its
        time cap still leaves what it measured."""

        def append(self, row: dict) -> None:
            super().append(row)
            write_report(out, report, self, final=False)

        def finish(self) -> None:
            print(write_report(out, report, self, final=True))

    rows = Rows()
    rows.append(run_row("eager FP32", eager(fp32), feeds, ref, power))
    del fp32
    fp16 = _model(torch.float16, "eager")
    rows.append(run_row("eager FP16", eager(fp16), feeds, ref, power))
    sdpa = _model(torch.float16, "sdpa")
    rows.append(run_row("SDPA FP16", eager(sdpa), feeds, ref, power))
    rows.append(run_row("SDPA FP16 + CUDA graphs", graphed(sdpa), feeds, ref, power))
    for fmt in ("int8", "int8-weight-only", *(("fp8",) if fp8_supported(DEV) else ())):
        q = copy.deepcopy(sdpa)
        quantize_model(q, fmt, quantizable_linears(q))
        rows.append(run_row(f"SDPA + CUDA graphs, {fmt.upper()} linear layers", graphed(q), feeds, ref, power))
        del q
    # the same layers through torchao's inference configs (carried as a wheel): which is faster decides
    from nanoify.models.quantized import torchao_available, torchao_quantize

    report["torchao"] = None
    if torchao_available():
        import torchao

        report["torchao"] = torchao.__version__
        for fmt in ("int8", "int8-weight-only", *(("fp8",) if fp8_supported(DEV) else ())):
            q = copy.deepcopy(sdpa)

            def ao(q=q, fmt=fmt):
                torchao_quantize(q, fmt, quantizable_linears(q))
                return graphed(q)

            try:
                fn = ao()
            except Exception as e:  # noqa: BLE001 - recorded, the matrix goes on
                rows.append({"name": f"torchao {fmt.upper()}", "error": f"{type(e).__name__}: {str(e)[:300]}"})
                continue
            rows.append(run_row(f"SDPA + CUDA graphs, torchao {fmt.upper()}", fn, feeds, ref, power))
            del q, fn
    try:
        report["streams"] = streams_row(sdpa, feeds["b1"])
    except Exception as e:  # noqa: BLE001
        report["streams"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    if not a.skip_compile:  # last: its compilation is the slowest and least predictable part of the matrix
        # inductor's default mode first, then reduce-overhead, then (time allowing) max-autotune
        rows.append(run_row("SDPA FP16 + torch.compile + CUDA graphs", graphed(sdpa, "default"), feeds, ref, power))
        torch._dynamo.reset()
        rows.append(run_row("SDPA FP16 + torch.compile reduce-overhead (its own graphs)",
                            graphed(sdpa, "reduce-overhead"), feeds, ref, power))
        # max-autotune's kernel search (without its own graphs: ours capture) only with half the budget left: the
        # step's time cap may kill it, and every row above is written already
        if DEV == "cuda" and time.perf_counter() - t_start < a.budget / 2:
            torch._dynamo.reset()
            rows.append(run_row("SDPA FP16 + torch.compile max-autotune + CUDA graphs",
                                graphed(sdpa, "max-autotune-no-cudagraphs"), feeds, ref, power))
    rows.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
