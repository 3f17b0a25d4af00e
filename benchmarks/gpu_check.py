"""The GPU engine matrix of issues 11 and 23, on a BERT-base-shaped classifier (12×768, random weights, sequence 128).

Run by `benchmarks/gpu_check.sh` on a machine with one CUDA GPU (or alone: `python benchmarks/gpu_check.py --out
DIR`). Without CUDA it writes a report saying so and exits 0, so it can be checked anywhere. `--dry-run` runs every
row on the CPU with a 2-layer, 128-wide BERT, sequence 16 and a few calls (no CUDA graphs, streams without CUDA
streams): the script's own code paths checked before GPU minutes are spent on them; its numbers mean nothing.

Which rows run where (issue 23: one failed CUDA-graph capture poisons every later capture of the process in
torch 2.11, and torchao's eager INT8 path reads a tensor to the host, which a capture forbids):
  this process, target rows first — eager FP16; SDPA FP16 + CUDA graphs (engines/static_shapes.py); CUDA graphs
  with nanoify's INT8 linear layers (FP16 model) and FP8 layers (bfloat16 model, compute capability ≥ 8.9); four
  streams against one; then INT8 weight-only, SDPA FP16 eager, eager FP32. None of these reads a tensor to the host
  inside a capture.
  a child process each (ISOLATED, in this order, each started only when its worst case fits what is left of
  --budget, killed at it), all with torch.compile (default mode, dynamic=None) and our graphs: torchao INT8 (as
  torchao is meant to run: compiled, its eager host read never runs); nanoify's INT8 layers the same way (like
  with like; Inductor fuses their activation quantization, the one-pass form of issue 23's item 7); torchao FP8
  (bfloat16 model); SDPA FP16; torchao INT8 weight-only; then reduce-overhead (its own graphs) and max-autotune.
  With this process at its worst case (PARENT_WORST) the default --budget still runs the torchao INT8 row
  (worst_case_plan; tests/unit/test_gpu_check_script.py checks the arithmetic); typically two to four run.
  A child that fails or is killed leaves a row saying so; nothing it did reaches this process.
Per row: batch-1 latency p50/p99 over 200 calls, batch-128 throughput over 20 calls, both at sequence 128;
average power (W) during the batch-128 pass from an NVML sampler, the idle baseline, and energy per row from
NVML's energy counter over ≥ 2 s of passes. Every row is checked against FP32 on the same inputs by the [CLS]
hidden state's error relative to its spread over the 128 rows (centred: random weights give every row nearly the
same logits, so a permuted GEMM output still kept logits cosine 0.99; on this BERT-base shape the check puts one
wrong value or FFN-output layer at 0.75–1.08 and INT8/FP8 at 0.05/0.15, RESULTS.md) — at most CHECK_MAX — beside
the logits cosine. (On the dry run's 2-layer model a wrong layer moves it only 0.07: random initialisation keeps
each layer's branch small against the residual stream, so the check is for the real shape, the dry run for code.)
Results: gpu_matrix.json and gpu_matrix.md in --out. Targets (issue 11): b1 ≤ 1.0 ms with graphs in FP16 and ≥ 3× faster
than eager; b128 ≥ 16,000 rows/s with FP8 or INT8; four streams ≥ 3× one.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from nanoify.bench.run import serve_concurrently  # noqa: E402
from nanoify.engines.static_shapes import StaticShapeRunner, compile_call  # noqa: E402
from nanoify.models.quantized import (  # noqa: E402
    fp8_supported,
    quantizable_linears,
    quantize_model,
    torchao_available,
    torchao_quantize,
)

SEQ, B1_CALLS, BIG, BIG_CALLS, MIN_SECONDS = 128, 200, 128, 20, 2.0
DEV = "cuda"  # "cpu" under --dry-run
CHECK_MAX = 0.4  # the [CLS] hidden state's centred relative error vs FP32 a row may have (module docstring)
# rows run in a child process each, in this order: (key, worst case in seconds — CUDA start, the FP32 reference,
# the model, compiling, the row's timing); one starts only when its worst case fits what is left of --budget
ISOLATED = (("torchao-int8", 75.0), ("compile-int8", 75.0), ("torchao-fp8", 75.0), ("compile-default", 75.0),
            ("torchao-int8-weight-only", 75.0), ("compile-reduce-overhead", 75.0), ("compile-max-autotune", 150.0))
PARENT_WORST = 75.0  # this process's rows and streams, CUDA start and the three models included


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


def _model(dtype, attention: str, small: bool | None = None):
    """The matrix's BERT-base-shaped classifier, random weights (seed 0); ``small`` (default: off CUDA, the dry run)
    a 2-layer, 128-wide one."""
    torch.manual_seed(0)
    tiny = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 256}
    small = {} if not (DEV != "cuda" if small is None else small) else tiny
    cfg = BertConfig(num_labels=2, **small)
    cfg._attn_implementation = attention
    return BertForSequenceClassification(cfg).eval().to(DEV, dtype)


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def _timed(fn, feed, calls: int) -> list[float]:
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


def run_row(name: str, fn, feeds: dict, ref: dict, power: Power | None) -> dict:
    """One row of the matrix; a row that fails (a capture the installed transformers does not allow, say) is
    recorded with its error and the matrix goes on."""
    try:
        return _row(name, fn, feeds, ref, power)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        print(f"{name}: FAILED {type(e).__name__}: {first}", flush=True)
        return {"name": name, "error": f"{type(e).__name__}: {first}"}


def probe(m):
    """The model call every row times: logits and the [CLS] hidden state side by side (one tensor, batch first),
    the classifier's own computation (pooler, dropout, head) written out so that the hidden state comes along."""
    def call(**t):
        out = m.bert(**t)
        logits = m.classifier(m.dropout(out.pooler_output))
        return torch.cat([logits, out.last_hidden_state[:, 0]], dim=-1)
    return call


def check_error(got, ref, labels: int = 2) -> float:
    """The [CLS] hidden state's error relative to its spread over the rows: ‖got − ref‖ / ‖ref − mean(ref)‖ (columns
    after the ``labels`` logits). A wrong GEMM anywhere in the encoder moves it by about its own spread."""
    g, r = got.float()[:, labels:], ref.float()[:, labels:]
    return float((g - r).norm() / (r - r.mean(0)).norm().clamp_min(1e-30))


def _row(name: str, fn, feeds: dict, ref: dict, power: Power | None) -> dict:
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
    got = {k: fn(feeds[k]).float() for k in ("b1", "big")}
    # the worse of batch 1 and batch 128 (a batch-1 classifier's logits are two numbers: too few alone)
    row["cosine_vs_fp32"] = min(
        float(torch.nn.functional.cosine_similarity(got[k][:, :2].flatten(), ref[k][:, :2].flatten(), dim=0))
        for k in ("b1", "big"))
    row["check_error"] = check_error(got["big"], ref["big"])
    row["check_ok"] = row["check_error"] <= CHECK_MAX
    return row


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def streams_row(model, feed: dict, n: int = 4, requests: int = 400) -> dict:
    """Batch-1 requests served by ``n`` threads, each with its own CUDA stream and captured graph (the torch
    engine's arrangement), against one: aggregate rows/s, per-request p50/p99 (dry run: threads alone)."""
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
    ok = [r for r in rows if "error" not in r and "skipped" not in r]
    eager_b1 = next((r["b1_p50_ms"] for r in ok if r["name"] == "eager FP16"), float("nan"))
    best_b1 = min((r["b1_p50_ms"] for r in ok if "graphs" in r["name"] and "FP16" in r["name"]), default=float("nan"))
    best_q = max((r["b128_rows_s"] for r in ok if ("INT8" in r["name"] or "FP8" in r["name"]) and r["check_ok"]),
                 default=0.0)
    worst = max((r["check_error"] for r in ok), default=float("nan"))
    targets = {
        "b1 ≤ 1.0 ms with graphs in FP16": [best_b1, best_b1 <= 1.0],
        "graphs ≥ 3× faster than eager FP16 at b1": [eager_b1 / best_b1, eager_b1 / best_b1 >= 3.0],
        "b128 ≥ 16,000 rows/s with FP8 or INT8 (check passed)": [best_q, best_q >= 16000],
        f"every row's [CLS] check ≤ {CHECK_MAX} vs FP32": [worst, worst <= CHECK_MAX],
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
             "| engine | process | b1 p50 ms | b1 p99 ms | b128 rows/s | W | mJ/row | logits cosine | [CLS] check |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        where = "own" if r.get("isolated") else "main"
        if "error" in r or "skipped" in r:
            why = f"failed: {r['error'][:150]}" if "error" in r else f"not run: {r['skipped']}"
            lines.append(f"| {r['name']} | {where} | {why} | | | | | | |")
            continue
        w, mj = r.get("watts"), r.get("mj_per_row")
        lines.append(f"| {r['name']} | {where} | {r['b1_p50_ms']:.3f} | {r['b1_p99_ms']:.3f} | "
                     f"{r['b128_rows_s']:.0f} | {'n/a' if w is None else f'{w:.0f}'} | "
                     f"{'n/a' if mj is None else f'{mj:.3f}'} | {r['cosine_vs_fp32']:.4f} | "
                     f"{r['check_error']:.3f} {'ok' if r['check_ok'] else 'WRONG'} |")
    if st:
        lines += ["", (f"Four streams (b1, FP16 SDPA + graphs, one graph per stream): {st['rows_s']:.0f} rows/s vs "
                       f"{st['one_stream_rows_s']:.0f} on one ({st['ratio']:.2f}×), p50 {st['p50_ms']:.2f} ms, p99 "
                       f"{st['p99_ms']:.2f} ms") if "error" not in st else f"Streams failed: {st['error']}"]
    lines += ["", "Targets: " + "; ".join(f"{k}: {v[0]:.3g} ({'met' if v[1] else 'MISSED'})"
                                         for k, v in targets.items())]
    text = "\n".join(lines) + "\n"
    (out / "gpu_matrix.md").write_text(text)
    return text


def _setup(small: bool | None = None):
    """Feeds (batch 1 and batch BIG, fixed seed), the FP32 reference outputs of :func:`probe` on them, the FP32
    model."""
    g = torch.Generator().manual_seed(0)
    feeds = {}
    for key, b in (("b1", 1), ("big", BIG)):
        ids = torch.randint(1000, 30000, (b, SEQ), generator=g).to(DEV)
        feeds[key] = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    fp32 = _model(torch.float32, "eager", small)
    with torch.inference_mode():
        ref = {k: probe(fp32)(**feeds[k]).float() for k in ("b1", "big")}
    return feeds, ref, fp32


def eager(m):
    call = probe(m)

    def f(feed):
        with torch.inference_mode():
            return call(**feed)
    return f


def graphed(m, compile_mode=None):

    call = probe(m)
    if compile_mode:
        call = compile_call(call, compile_mode)
    # reduce-overhead captures CUDA graphs of its own: ours only pad then
    graphs = DEV == "cuda" and compile_mode != "reduce-overhead"
    r = StaticShapeRunner(call, {"input_ids": 0}, (SEQ,), DEV, graphs=graphs)
    return lambda feed: r(feed)


ISOLATED_NAMES = {
    "compile-default": "SDPA FP16 + torch.compile + CUDA graphs",
    "compile-int8": "SDPA + torch.compile + CUDA graphs, INT8 linear layers",
    "torchao-int8": "SDPA + torch.compile + CUDA graphs, torchao INT8",
    "torchao-fp8": "SDPA BF16 + torch.compile + CUDA graphs, torchao FP8",
    "torchao-int8-weight-only": "SDPA + torch.compile + CUDA graphs, torchao INT8-WEIGHT-ONLY",
    "compile-reduce-overhead": "SDPA FP16 + torch.compile reduce-overhead (its own graphs)",
    "compile-max-autotune": "SDPA FP16 + torch.compile max-autotune + CUDA graphs",
}


def isolated_keys(skip_compile: bool) -> list[tuple[str, float]]:
    """The child-process rows this machine can run, in order, with their worst cases."""

    keys = []
    for key, cap in ISOLATED:
        if key.startswith("compile") and skip_compile:
            continue
        if key.startswith("torchao") and not torchao_available():
            continue
        if key == "torchao-fp8" and not (DEV == "cuda" and fp8_supported(DEV)):  # torchao's FP8 needs CUDA ≥ 8.9
            continue
        if key == "compile-max-autotune" and DEV != "cuda":
            continue
        keys.append((key, cap))
    return keys


def fits(spent: float, cap: float, budget: float) -> bool:
    """An isolated row starts only when ``spent`` seconds plus its worst case stay within ``budget``: killed at its
    worst case, it cannot carry the matrix past its budget."""
    return spent + cap <= budget


def worst_case_plan(keys: list[tuple[str, float]], parent: float, budget: float) -> tuple[list[str], float]:
    """The isolated rows sure to run when this process and every child take their worst case, and the seconds that
    takes in all (at most ``budget``; faster rows leave room for the later ones at run time)."""
    spent, sure = parent, []
    for key, cap in keys:
        if fits(spent, cap, budget):
            sure.append(key)
            spent += cap
    return sure, spent


def isolated_row(key: str, out: Path) -> dict:
    """One isolated row in this (child) process: its model, the FP32 reference, the row; written to
    ``out/rows/<key>.json`` for the parent."""

    feeds, ref, fp32 = _setup()
    del fp32
    name = ISOLATED_NAMES[key]
    power = _power({})
    if key == "compile-int8":  # nanoify's INT8 layers with Inductor fusing the activations' quantization
        model = _model(torch.float16, "sdpa")
        quantize_model(model, "int8", quantizable_linears(model))
        fn = graphed(model, "default")
    elif key.startswith("compile"):
        mode = key.split("-", 1)[1]
        mode = "max-autotune-no-cudagraphs" if mode == "max-autotune" else mode
        fn = graphed(_model(torch.float16, "sdpa"), mode)
    else:
        fmt = key.split("-", 1)[1]
        model = _model(torch.bfloat16 if fmt == "fp8" else torch.float16, "sdpa")
        torchao_quantize(model, fmt, quantizable_linears(model))
        # compiled, as torchao is meant to run: its eager INT8 path reads a tensor to the host (the FakeTensor
        # test in safe_int_mm), which a CUDA-graph capture forbids; compiled, that test never runs
        fn = graphed(model, "default")
    row = {**run_row(name, fn, feeds, ref, power), "isolated": True}
    (out / "rows").mkdir(parents=True, exist_ok=True)
    (out / "rows" / f"{key}.json").write_text(json.dumps(row) + "\n")
    return row


def run_isolated(key: str, cap: float, out: Path, dry_run: bool) -> dict:
    """Start :func:`isolated_row` for ``key`` in a child process, killed after ``cap`` seconds; its row, or one
    saying why there is none."""
    name = ISOLATED_NAMES[key]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--row", key] + (
        ["--dry-run"] if dry_run else [])
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return {"name": name, "isolated": True, "error": f"killed at its worst case, {cap:.0f} s"}
    took = round(time.perf_counter() - t0, 1)
    row_file = out / "rows" / f"{key}.json"
    if r.returncode != 0 or not row_file.is_file():
        last = (r.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"name": name, "isolated": True, "error": f"child exit {r.returncode} after {took} s: {last}"}
    return {**json.loads(row_file.read_text()), "seconds": took}


def _power(report: dict) -> Power | None:
    if DEV != "cuda":
        return None
    try:
        return Power()
    except Exception as e:  # noqa: BLE001 - no NVML
        report["power"] = f"NVML not readable: {e}"
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile rows (minutes)")
    ap.add_argument("--dry-run", action="store_true", help="every row on the CPU, tiny model: numbers mean nothing")
    ap.add_argument("--budget", type=float, default=195.0,
                    help="seconds the matrix may take (gpu_check.sh caps its step at 200): isolated rows start only "
                         "when their worst case fits what is left")
    ap.add_argument("--row", choices=sorted(ISOLATED_NAMES), help=argparse.SUPPRESS)  # a child: one isolated row
    a = ap.parse_args()
    t_start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    global DEV, SEQ, B1_CALLS, BIG, BIG_CALLS, MIN_SECONDS
    if a.dry_run:
        DEV, SEQ, B1_CALLS, BIG, BIG_CALLS, MIN_SECONDS = "cpu", 16, 5, 32, 2, 0.0
    if a.row:
        isolated_row(a.row, out)
        return 0
    report: dict = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if DEV == "cuda" and not torch.cuda.is_available():
        report["skipped"] = "no CUDA GPU: nothing measured"
        (out / "gpu_matrix.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "gpu_matrix.md").write_text("GPU matrix skipped: no CUDA GPU on this machine.\n")
        print(report["skipped"])
        return 0

    if DEV == "cuda":
        report.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)))
    else:
        report.update(gpu="CPU DRY RUN (2-layer, 128-wide, sequence 16: numbers mean nothing)", capability=[])
    power = _power(report)
    if power is not None:
        time.sleep(1.0)
        report["idle_watts"] = float(sum(power.watts() for _ in range(10)) / 10)
    report["torchao"] = None
    if torchao_available():
        from importlib.metadata import version

        report["torchao"] = version("torchao")
    feeds, ref, fp32 = _setup()

    class Rows(list):
        """The rows so far, written (JSON and Markdown, marked partial) after each one: a step cut short by its
        time cap still leaves what it measured."""

        def append(self, row: dict) -> None:
            super().append(row)
            write_report(out, report, self, final=False)

        def finish(self) -> None:
            print(write_report(out, report, self, final=True))

    rows = Rows()
    # the target rows first
    fp16 = _model(torch.float16, "eager")
    rows.append(run_row("eager FP16", eager(fp16), feeds, ref, power))
    del fp16
    sdpa = _model(torch.float16, "sdpa")
    rows.append(run_row("SDPA FP16 + CUDA graphs", graphed(sdpa), feeds, ref, power))
    formats = [("int8", torch.float16, "SDPA + CUDA graphs, INT8 linear layers")]
    if fp8_supported(DEV):  # FP8 on the bfloat16 model, as torchao's FP8 row needs (like with like)
        formats.append(("fp8", torch.bfloat16, "SDPA BF16 + CUDA graphs, FP8 linear layers"))
    formats.append(("int8-weight-only", torch.float16, "SDPA + CUDA graphs, INT8-WEIGHT-ONLY linear layers"))
    for i, (fmt, dtype, name) in enumerate(formats):
        q = copy.deepcopy(sdpa).to(dtype)
        quantize_model(q, fmt, quantizable_linears(q))
        rows.append(run_row(name, graphed(q), feeds, ref, power))
        del q
        if i == len(formats) - 2:  # the streams after the INT8 and FP8 rows, before the rest
            try:
                report["streams"] = streams_row(sdpa, feeds["b1"])
            except Exception as e:  # noqa: BLE001
                report["streams"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    rows.append(run_row("SDPA FP16", eager(sdpa), feeds, ref, power))
    rows.append(run_row("eager FP32", eager(fp32), feeds, ref, power))
    del sdpa, fp32
    if DEV == "cuda":
        torch.cuda.empty_cache()
    for key, cap in isolated_keys(a.skip_compile):
        spent = time.perf_counter() - t_start
        if not fits(spent, cap, a.budget):
            rows.append({"name": ISOLATED_NAMES[key], "isolated": True,
                         "skipped": f"{spent:.0f} s gone; its worst case ({cap:.0f} s) would pass --budget "
                                    f"{a.budget:.0f} s"})
            continue
        rows.append(run_isolated(key, cap, out, a.dry_run))
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    rows.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
