"""``nanoify quantize``: calibrate, try the INT8 formats, keep the best one for the job within the budget.

    quantize(model, out, calib="data/", eval_data="data/", config=QuantizeConfig(budget=0.5, target="cpu"))

One path for every target (:mod:`nanoify.quant.targets` says what varies with it): check the target can run
here, prepare the source, read the calibration and evaluation rows through the model's task, search (the
target's candidates, evaluated — and timed — by the target's engine), choose within the budget
(:mod:`nanoify.quant.choose`), write the chosen model and the target's files, the manifest and report.md. The
ONNX targets' steps are :mod:`nanoify.quant.steps`; ``cuda``'s, whose candidates are torch modules, are
:mod:`nanoify.quant.cuda`.

``target="cpu"`` measures every candidate on this machine — dynamic INT8 for transformer graphs (per-channel
weights with and without reduce_range, ONNX Runtime's stock settings), static Q/DQ INT8 with each calibration
method (weight GEMMs only, and for CNNs every op ONNX Runtime runs in INT8), with the weight width this CPU's
kernels need (:mod:`nanoify.runtime.cpu`). Among those whose drop in the task's primary metric is within the
budget, ``optimize`` decides: ``balanced`` (default: the geometric mean of the batch-1 latency, batch-32
throughput and file-size ratios to FP32), ``latency``, ``throughput`` or ``size``; scores within 5% are ties,
broken by the metric, then the file size.

``target="tensorrt"`` writes the explicit Q/DQ graph TensorRT wants (symmetric INT8, per-channel weights), its
calibration cache and a ``trtexec`` command with per-input shape profiles. Accuracy is measured by running that
Q/DQ graph in ONNX Runtime on the CPU (TensorRT's kernels round differently; treat it as an estimate); speed
cannot be measured without TensorRT and a GPU, and the report says so.

``target="cuda"``: PyTorch formats on a GPU (quantized linear layers for transformers, FP16/BF16 for CNNs and
detectors), measured by the torch engine on the GPU (:mod:`nanoify.quant.cuda`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..artifacts import MANIFEST, atomic_dir, manifest, write_json
from ..config import QuantizeConfig, to_dict
from ..errors import ConfigError, ModelError
from .choose import choose, not_int8_win, slower_than_reference
from .steps import DEFAULT_METHODS, load_data
from .targets import CudaTarget, Target, get_target


def _config(config: QuantizeConfig | None, overrides: dict[str, Any]) -> QuantizeConfig:
    cfg = config or QuantizeConfig()
    if overrides:
        known = {f.name for f in dataclasses.fields(QuantizeConfig)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ConfigError(f"unknown quantize option(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg


def quantize(model: str | Path, out: str | Path, calib: Any = None, eval_data: Any = None,
             config: QuantizeConfig | None = None, task: str | None = None, preprocess: str | Path | None = None,
             progress: bool = True, decoder: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Calibrate, quantize and choose (see module docstring); writes ``out`` atomically and returns its manifest.

    Args:
        model: export folder, ``.onnx`` file (text: tokenizer in ``hf/`` beside it; images: ``preprocess.json``
            beside it or ``preprocess``), a classifier folder or a torch-module folder (exported first).
        calib / eval_data: data specs (``DataConfig`` or a path) read through the model's task.
        config: everything else; keyword ``overrides`` replace its fields (``budget=0.5``, ``target="cpu"``).
    """
    cfg = _config(config, overrides)
    return run_target(get_target(cfg.target), model, out, calib, eval_data, cfg, task, preprocess, decoder,
                      progress)


def quantize_cuda(model: str | Path, out: str | Path, calib: Any = None, eval_data: Any = None,
                  config: QuantizeConfig | None = None, device: str = "cuda", formats: tuple[str, ...] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """``quantize`` with ``target="cuda"`` on ``device`` (``cpu``: the same ops' CPU kernels, for tests),
    measuring only ``formats`` when given (names from :data:`nanoify.models.quantized.FORMATS`)."""
    cfg = dataclasses.replace(config or QuantizeConfig(), target="cuda", device=device)
    return run_target(CudaTarget(formats), model, out, calib, eval_data, cfg, progress=progress)


def run_target(target: Target, model: str | Path, out: str | Path, calib: Any, eval_data: Any,
               cfg: QuantizeConfig, task: str | None = None, preprocess: str | Path | None = None,
               decoder: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The one path of every target: check, prepare, read the rows, search, choose, write (module docstring)."""
    target.check(cfg)  # one line before any work (e.g. cuda without a GPU)
    methods = cfg.methods if cfg.methods is not None else DEFAULT_METHODS
    t_start = time.time()
    with atomic_dir(Path(out)) as tmp:
        src = target.prepare(model, tmp, task, preprocess, decoder)
        calib_set, ev = load_data(src, calib, eval_data, cfg)
        work = tmp / "candidates"
        work.mkdir()
        found = target.search(src, calib_set, ev, cfg, methods, work, progress)
        records = [c.record() for c in found.cands]
        idx, why = choose(records, found.ref.metrics, cfg.optimize, found.ref.metric, target.timed,
                          src.task.agreement_key)
        failed = not_int8_win(records[idx], found.ref.metrics, cfg.optimize, target.timed) if cfg.require_int8 else None
        if failed:
            raise ModelError(f"--require-int8: {failed}; nothing written — allow a larger --budget, or drop "
                             "--require-int8 to get the model the chooser picked")
        extra = target.write_chosen(tmp, found.cands[idx], found, src, ev)
        extra.update(target.choose_engine(tmp, src, ev, found, cfg))
        shutil.rmtree(work, ignore_errors=True)
        warnings = (slower_than_reference(records[idx], found.ref.metrics) if target.timed else []) + extra.pop(
            "warnings", [])
        man = manifest("quantize", {**to_dict(cfg), "model": str(model), "methods": list(methods),
                                    "threads": cfg.threads or os.cpu_count()},
                       task=src.ref.task, model_file=extra.pop("model_file", target.model_file) or None,
                       chosen=found.cands[idx].name, why=why, warnings=warnings,
                       agreement_key=src.task.agreement_key, budget_met=bool(records[idx]["meets_budget"]),
                       metric=found.ref.metric,
                       data={"eval": ev.where, "eval_rows": len(ev), "calibration": getattr(calib_set, "where", None)},
                       reference={"name": found.ref_name, **found.ref.metrics}, candidates=records,
                       seconds=round(time.time() - t_start, 1), **found.extras, **extra)
        write_json(tmp / MANIFEST, man)
        (tmp / "report.md").write_text(format_report(man) + "\n")
    return man


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def format_report(man: dict[str, Any]) -> str:
    """Markdown: the FP32 reference and every candidate, the chosen one marked; columns follow the task."""
    ref = man["reference"]
    cfg = man["config"]
    metric = man["metric"]
    agree = man.get("agreement_key", "top1_agreement")
    batch = ref.get("throughput_batch", 32)
    ab = cfg.get("agreement_budget")
    lines = [f"# nanoify quantize — target {cfg['target']}, budget {cfg['budget']} points of {metric}"
             + (f" and {ab} points of agreement with FP32" if ab is not None else "") + f", optimize {cfg['optimize']}",
             "", f"Chosen: **{man['chosen']}** ({man['why']}).", ""]
    for w in man.get("warnings", []):
        lines += [f"**Warning:** {w}", ""]
    lines += [f"| model | {metric} | drop (pts) | {agree.replace('_', ' ')} | changed | b{batch} rows/s | b1 p50 ms "
              "| MB | FP32 nodes |", "|---|---|---|---|---|---|---|---|---|",
              f"| {ref['name']} | {_fmt(ref[metric])} | 0 | 1 | 0 | {_fmt(ref.get('throughput'), 1)} | "
              f"{_fmt(ref.get('latency_ms_p50'), 2)} | {_fmt(ref['file_mb'], 1)} | all |"]
    for c in man["candidates"]:
        mark = " **(chosen)**" if c["name"] == man["chosen"] else ""
        changed = c.get("predictions_changed")
        if changed is None and "reference_boxes" in c:
            changed = round((1 - c.get(agree, 1.0)) * c["reference_boxes"])
        lines.append(f"| {c['name']}{mark} | {_fmt(c[metric])} | {_fmt(c['drop_pts'], 2)} | "
                     f"{_fmt(c.get(agree))} | {_fmt(changed)} | {_fmt(c.get('throughput'), 1)} | "
                     f"{_fmt(c.get('latency_ms_p50'), 2)} | {_fmt(c['file_mb'], 1)} | {len(c['fp32_nodes'])} |")
    mp = man.get("mixed_precision")
    if mp:
        lines += ["", f"Mixed precision from {mp['base']}: {len(mp['kept_fp32'])} node(s) kept FP32 "
                      f"(sensitivity on {mp['sensitivity_rows']} rows): {', '.join(mp['kept_fp32']) or 'none'}."]
        if mp.get("quick_rows"):
            lines += ["", f"Mixed precision searched on {mp['quick_rows']} rows first (to fit --search-seconds; "
                          f"answer there: {mp['quick_answer'] if mp['quick_answer'] is not None else 'none'} "
                          "node(s)), then checked its answer on every row."]
    sp = man.get("speed_fallback")
    if sp and sp.get("nodes"):
        slow = ", ".join(f"{r['node']} ({r['int8_ms']:.3f} ms INT8 vs {r['float_ms']:.3f} float)" for r in sp["nodes"])
        lines += ["", f"INT8 kernels slower than float in {sp['base']} (ORT profiler, batch 1): {slow}; tried with "
                      f"them kept float as {sp['candidate']}."]
    elif sp:
        why = sp.get("skipped") or f"no INT8 kernel of {sp['base']} profiled slower than its float kernel"
        lines += ["", f"Speed fallback: {why}."]
    cpu = man.get("int8_cpu")
    if cpu:
        lines += ["", f"CPU: {', '.join(cpu.get('cpu_flags', [])) or 'flags unknown'}; u8×s8 INT8 GEMM probe: "
                      f"{'saturates → 7-bit weights' if cpu.get('u8s8_saturates') else 'exact → 8-bit weights'}."]
    for key, lr in (man.get("learned_rounding") or {}).items():
        used = [r for r in lr["layers"] if r["used"]]
        gain = sum(r["learned_error"] / max(r["nearest_error"], 1e-30) for r in used) / max(len(used), 1)
        lines += ["", f"Learned rounding ({key}, {lr['iterations']} iterations a layer, {lr['seconds']} s): "
                      f"{len(used)} of {len(lr['layers'])} layers reconstruct better than nearest rounding (output "
                      f"error {gain:.2f}× nearest's on average), {sum(r['changed'] for r in used)} weights rounded "
                      f"the other way" + (f"; nearest kept for {len(lr['skipped'])}" if lr["skipped"] else "") + "."]
    steps = {k: v for k, v in (man.get("step_seconds") or {}).items() if v >= 0.5}
    if steps:
        lines += ["", f"Search time ({man.get('seconds', sum(steps.values())):.0f} s in all): "
                      + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in steps.items()) + "."]
    tf = man.get("timing_fitted")
    if tf:
        held = ref.get("throughput_batch", tf["batch"])
        lines += ["", f"Timing fitted to --search-seconds: {tf['latency_rows']} rows at batch 1 and "
                      f"{tf['throughput_rows']} at batch {held}"
                      + (f" (of {tf['batch']}: the engines held side by side fit 256 MiB of inputs)"
                         if held != tf["batch"] else "")
                      + f", {tf['rounds']} rounds (`nanoify bench` measures the written model with its own rows)."]
    if man.get("not_timed"):
        lines += ["", "Not timed (outside the budget, so never chosen; timing every candidate would not fit "
                      f"--search-seconds): {', '.join(man['not_timed'])}."]
    look = man.get("screening")
    if look:
        n_all = len(look["kept"]) + len(look["dropped"])
        lines += ["", f"First look (to fit --search-seconds): all {n_all} candidates on {look['rows']} of "
                      f"{look['of']} rows; the float rows and the best INT8 ones went on to every row "
                      f"({', '.join(look['kept'])}); dropped: "
                      + ", ".join(f"{d['name']} ({metric} {_fmt(d.get(metric))}, {agree.replace('_', ' ')} "
                                  f"{_fmt(d.get(agree))})" for d in look["dropped"]) + "."]
    sq = man.get("smoothing") or {}
    for key, r in sq.items():
        tag = "-smooth" if r["alpha"] == "auto" else f"-smooth{r['alpha']}"
        by_name = {c["name"]: c for c in man["candidates"]}
        pairs = [(by_name[n.removesuffix(tag)], c) for n, c in by_name.items()
                 if n.endswith(tag) and n.removesuffix(tag) in by_name]
        alphas = ", ".join(f"{a} ×{n}" for a, n in r["alphas"].items())
        pred = r.get("predicted_error")
        lines += ["", f"SmoothQuant ({key}: α {r['alpha']}, {r['groups']} of {r['of_groups']} GEMM inputs smoothed, "
                      f"feeding {r['gemms']} GEMMs; α chosen {alphas or 'nowhere'}"
                      + (f"; predicted INT8 output error {pred[0]} → {pred[1]}" if pred else "")
                      + f"; {r['seconds']} s): the largest activation channel went from "
                      f"{r['channel_spread_before']}× to {r['channel_spread_after']}× the median channel (median over "
                      "the inputs) — what it bought:"]
        lines += [f"- {a['name']} → {b['name']}: {metric} {_fmt(a.get(metric))} → {_fmt(b.get(metric))}, "
                  f"{agree.replace('_', ' ')} {_fmt(a.get(agree))} → {_fmt(b.get(agree))}" for a, b in pairs]
    bc = man.get("bias_correction") or {}
    if bc:
        by_name = {c["name"]: c for c in man["candidates"]}
        pairs = [(by_name[n[:-3]], c) for n, c in by_name.items() if n.endswith("-bc") and n[:-3] in by_name]
        made = "; ".join(f"{k}: {len(r['layers'])} layers in {r['seconds']} s" + (
            f", {len(r['skipped'])} not corrected" if r["skipped"] else "") for k, r in bc.items()
            if isinstance(r, dict)) or "none made"
        lines += ["", f"Bias correction ({made}) — what it bought, on the best static candidate of each kind:"]
        lines += [f"- {a['name']} → {b['name']}: {metric} {_fmt(a.get(metric))} → {_fmt(b.get(metric))}, "
                  f"{agree.replace('_', ' ')} {_fmt(a.get(agree))} → {_fmt(b.get(agree))}" for a, b in pairs]
        if bc.get("skipped_for_time"):
            lines += [f"- not made, for --search-seconds: {', '.join(bc['skipped_for_time'])}"]
    ec = man.get("engine_choice")
    if ec:
        lines += ["", f"Engine: **{'OpenVINO' if ec['chosen'] == 'openvino' else 'ONNX Runtime'}** deploys the "
                      f"chosen graph ({ec['why']})."]
        if "openvino" in ec:
            o, r = ec["openvino"], ec["onnxruntime"]
            lines += ["", f"Same graph, both engines, interleaved: b1 p50 {r['latency_ms_p50']:.2f} ms (ONNX Runtime) "
                          f"vs {o['latency_ms_p50']:.2f} ms (OpenVINO); b{r['throughput_batch']} "
                          f"{r['throughput']:.1f} vs {o['throughput']:.1f} rows/s; OpenVINO {metric} "
                          f"{_fmt(o.get(metric))} (drop {o['drop_pts']:.2f} pts)."]
    own = man.get("own_formats") or {}
    if own.get("skipped") or own.get("nncf_failed"):
        lines += ["", f"Peer rows: {own.get('skipped') or '; '.join(own['nncf_failed'])}."]
    if own.get("skipped_for_time"):
        lines += ["", f"Peer rows not made, for --search-seconds: {', '.join(own['skipped_for_time'])}."]
    ov_info = man.get("openvino")
    if ov_info:
        lines += ["", f"OpenVINO {ov_info['version'].split('-')[0]} compiled the chosen model with "
                      f"{ov_info['int8_layers']} INT8 layer(s) ({ov_info.get('made_by', 'the graph nanoify wrote')}; "
                      f"float parts in {ov_info['precision']}); layer precisions: "
                      + ", ".join(f"{k} " + "/".join(f"{p}×{n}" for p, n in v.items())
                                   for k, v in ov_info["layer_precisions"].items()) + "."]
    if man.get("speed_note"):
        lines += ["", f"Speed: {man['speed_note']}."]
    if man.get("tensorrt"):
        lines += ["", "TensorRT speed is not measured here (no TensorRT/GPU); accuracy is ONNX Runtime CPU running "
                      "the same Q/DQ graph.", "", "```", man["tensorrt"]["trtexec"], "```"]
    return "\n".join(lines)
