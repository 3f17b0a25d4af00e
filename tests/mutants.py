"""Behaviours a user relies on, each broken on purpose, and the tests that must then fail (a hand-written
mutation run: the next audit starts here).

    .venv/bin/python tests/mutants.py                  # every mutant (about 10 minutes on 2 cores)
    .venv/bin/python tests/mutants.py augment-seed     # some, by id
    .venv/bin/python tests/mutants.py --list           # the catalogue as the Markdown table of tests/README.md

Each mutant is one exact text replacement in one source file. The project (``src/``, ``tests/``,
``pyproject.toml``) is copied into a temporary folder with no ``../shared`` beside it, so the tests that read the
shared data skip: every behaviour here must be caught without it. The mutant is applied to the copy, its tests
run there (``python -m pytest -x``), and it is *caught* when they fail. A replacement whose text no longer occurs
exactly once is *stale* (the code moved on: update the entry). Exit status 1 when any mutant is missed or stale.

``tests/unit/test_mutants_catalogue.py`` keeps this list honest in CI without running it: every ``old`` text occurs
once, every named test exists, and tests/README.md lists every mutant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    behaviour: str
    file: str  # relative to the project root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids, relative to the project root


MUTANTS = (
    Mutant("early-stop-patience", "early stopping stops after `patience` evaluations without a new best",
           "src/nanoify/distill/trainer.py", 'stop = es["bad"] >= loop.cfg.patience',
           'stop = es["bad"] > loop.cfg.patience',
           ("tests/e2e/test_distill.py::test_small_data_holds_out_a_slice_and_stops_early_resumably",)),
    Mutant("early-stop-keeps-last", "an early-stopped stage ends with its best held-out weights, not its last",
           "src/nanoify/distill/trainer.py", "if best is not None and best_step != step:", "if False:",
           ("tests/e2e/test_distill.py::test_small_data_holds_out_a_slice_and_stops_early_resumably",)),
    Mutant("letterbox-pad-x", "boxes map back to the frame through the horizontal letterbox pad (portrait frames)",
           "src/nanoify/tasks/detect.py", '(boxes[:, [0, 2]] - g["pad_x"]) / g["scale_x"]',
           'boxes[:, [0, 2]] / g["scale_x"]', ("tests/unit/test_detection.py",)),
    Mutant("letterbox-scale-map", "boxes map back to the frame dividing by the letterbox scale",
           "src/nanoify/tasks/detect.py", '(boxes[:, [1, 3]] - g["pad_y"]) / g["scale_y"]',
           '(boxes[:, [1, 3]] - g["pad_y"]) * g["scale_y"]', ("tests/unit/test_detection.py",)),
    Mutant("letterbox-scale-resize", "the letterboxed content is the frame resized by the letterbox scale",
           "src/nanoify/data/images.py", 'nh, nw = round(h * info["scale_y"]), round(w * info["scale_x"])',
           'nh, nw = min(th, round(h / info["scale_y"])), min(tw, round(w / info["scale_x"]))',
           ("tests/unit/test_detection.py",)),
    Mutant("mean-std-reversed", "mean and std apply per channel, in the model's channel order",
           "src/nanoify/data/images.py", "mean = np.asarray(self.mean, dtype=np.float32)\n"
           "        std = np.asarray(self.std, dtype=np.float32)",
           "mean = np.asarray(self.mean[::-1], dtype=np.float32)\n"
           "        std = np.asarray(self.std[::-1], dtype=np.float32)",
           ("tests/unit/test_images.py", "tests/unit/test_detection.py")),
    Mutant("chooser-band-from-slowest", "the speed tie band hangs from the fastest candidate",
           "src/nanoify/quant/choose.py", "top = max(scores.values())", "top = min(scores.values())",
           ("tests/e2e/test_quantize.py::test_choice_follows_the_optimize_goal",)),
    Mutant("peak-rss-ru-maxrss", "peak memory is the measuring process's own (VmHWM, not ru_maxrss)",
           "src/nanoify/bench/run.py", 'if line.startswith("VmHWM:"):', 'if line.startswith("VmHWM-gone:"):',
           ("tests/unit/test_contracts.py::test_peak_rss_is_the_measuring_process_own",)),
    Mutant("bench-in-process", "bench measures each model in a fresh process of its own",
           "src/nanoify/bench/run.py", "_run_isolated(args) if cfg.isolate else measure_model(*args)",
           "measure_model(*args)",
           ("tests/e2e/test_vision.py::test_bench_and_json_contract_for_images",)),
    Mutant("bench-child-loads-torch", "a process measuring an ONNX Runtime model carries no torch (RSS: the model's)",
           "src/nanoify/tasks/image.py", "from __future__ import annotations\n",
           "from __future__ import annotations\n\nimport torch  # noqa: F401\n",
           ("tests/e2e/test_vision.py::test_an_onnx_runtime_measurement_does_not_load_torch",)),
    Mutant("stage-hash-without-calib", "the quantize stage reruns when the calibration data changes",
           "src/nanoify/pipeline.py", '"calib": cfg.calib,', "",
           ("tests/unit/test_contracts.py::test_stage_hashes_follow_every_input",)),
    Mutant("headline-speedup-inverted", "the report's headline speed-up is baseline p50 / compressed p50",
           "src/nanoify/pipeline.py", 'base["latency_ms_p50"] / comp["latency_ms_p50"]',
           'comp["latency_ms_p50"] / base["latency_ms_p50"]',
           ("tests/e2e/test_compress.py::test_headline_ratios_say_how_many_times_better",)),
    Mutant("tensorrt-unsigned-ranges", "--target tensorrt ranges are chosen for signed ±127 levels",
           "src/nanoify/quant/targets.py", "    timed = False\n    free_zero_point = False",
           "    timed = False\n    free_zero_point = True",
           ("tests/e2e/test_vision.py::test_quantize_cnn_for_tensorrt_has_nchw_profiles",)),
    Mutant("percentile-default", "the percentile method's default is 99.99",
           "src/nanoify/quant/observers.py", "percentile: float = 99.99", "percentile: float = 99.9",
           ("tests/numerical/test_observers.py",)),
    Mutant("augment-same-variants", "each of the N variants of a sentence draws its own replacements",
           "src/nanoify/distill/augment.py", "np.random.default_rng([seed, j, r])", "np.random.default_rng([seed, r])",
           ("tests/unit/test_augment.py",)),
    Mutant("detector-conf-0.25", "the detector's default score threshold is 0.001 (mAP needs the low tail)",
           "src/nanoify/tasks/detect.py", "conf: float = 0.001", "conf: float = 0.25",
           ("tests/unit/test_detection.py",)),
    Mutant("relation-loss-over-padding", "the relation loss is a mean over real queries, not padded positions",
           "src/nanoify/distill/relations.py", "queries = m.sum().clamp_min(1.0) * heads",
           "queries = m.numel() * heads", ("tests/unit/test_relations.py",)),
    Mutant("fastestdet-no-tanh", "FastestDet's centre offset goes through tanh",
           "src/nanoify/tasks/decoders.py", "cx = (gx + np.tanh(y[1])) / gw * w", "cx = (gx + y[1]) / gw * w",
           ("tests/unit/test_detection.py",)),
    Mutant("cli-leaks-log-level", "a CLI call in-process restores the root logger's level",
           "src/nanoify/cli.py", "root.setLevel(before[0])", "pass",
           ("tests/unit/test_contracts.py::test_cli_call_sets_logging_and_threads_for_itself_and_restores_them",)),
    Mutant("cli-verbose-lost", "-v shows INFO lines even when the root logger already has handlers",
           "src/nanoify/cli.py", "root.addHandler(handler)", "logging.basicConfig()",
           ("tests/unit/test_contracts.py::test_cli_call_sets_logging_and_threads_for_itself_and_restores_them",)),
    Mutant("bench-child-forgets-kinds", "bench's fresh processes know the task kinds registered at run time",
           "src/nanoify/bench/run.py", "        register_task(kind)", "        pass",
           ("tests/e2e/test_seams.py::test_a_kind_registered_from_outside_runs_through_quantize_and_bench",)),
    Mutant("target-engine-ignored", "quantize evaluates and times every graph on the target's own engine",
           "src/nanoify/quant/steps.py", "return src.target.engine(path, threads)",
           "return CpuTarget().engine(path, threads)",
           ("tests/e2e/test_seams.py::test_a_target_registered_from_outside_quantizes_on_its_own_engine",)),
    Mutant("kd-without-t-squared", "the soft-target loss is scaled by T²",
           "src/nanoify/distill/losses.py", "return kl.mean() * t * t", "return kl.mean()",
           ("tests/unit/test_losses.py",)),
    Mutant("nncf-ignored-names", "NNCF's ignored scope keeps float exactly the ONNX nodes nanoify names",
           "src/nanoify/quant/nncf_int8.py",
           'return [n for node in onnx_nodes for n in (node, f"{node}/WithoutBiases")]',
           "return list(onnx_nodes)",
           ("tests/e2e/test_openvino.py::test_nncf_ignored_scope_takes_onnx_node_names",)),
    Mutant("float-row-blocks-mixed", "a float row meeting the budget does not stop the mixed-precision search",
           "src/nanoify/quant/steps.py", "    int8 = [c for c in cands if not isinstance(c.plan.scheme, Float)]",
           "    int8 = cands",
           ("tests/e2e/test_openvino.py::"
            "test_mixed_precision_runs_on_the_openvino_target_and_feeds_nncf_ignored_scope",)),
    Mutant("engine-choice-ignores-budget", "--target cpu deploys on OpenVINO only when OpenVINO's run meets the budget",
           "src/nanoify/quant/engine_choice.py", "use_ov = met and (forced or gain >= 1 + SPEED_TIE)",
           "use_ov = forced or gain >= 1 + SPEED_TIE",
           ("tests/e2e/test_openvino.py::"
            "test_the_cpu_target_deploys_on_openvino_only_when_it_is_faster_within_the_budget",)),
    Mutant("learned-float-weights-kept", "a node kept float in a learned-rounding plan gets its FP32 weights back",
           "src/nanoify/quant/schemes.py",
           '        restore_weights(Path(dst), Path(sources["plain"]), plan.float_nodes)',
           "        pass",
           ("tests/numerical/test_rounding.py::test_a_node_kept_float_gets_its_fp32_weights_back",)),
    Mutant("chooser-takes-slower", "the chooser never returns a model slower than FP32 (size excepted)",
           "src/nanoify/quant/choose.py", "        if fast:\n            ok = fast",
           "        if False:\n            ok = fast",
           ("tests/e2e/test_quantize.py::test_choice_follows_the_optimize_goal",)),
    Mutant("bias-correction-sign", "bias correction subtracts the rounded weights' mean output shift",
           "src/nanoify/quant/bias_correction.py", "(b - d).reshape(b.shape)", "(b + d).reshape(b.shape)",
           ("tests/numerical/test_bias_correction.py::"
            "test_corrected_biases_cancel_the_mean_output_shift_of_rounded_weights",)),
    Mutant("float-node-keeps-added-bias", "a node kept float loses the bias that bias correction added to it",
           "src/nanoify/quant/schemes.py", "            del n.input[arity[n.name]:]", "            pass",
           ("tests/numerical/test_bias_correction.py::"
            "test_a_node_kept_float_gets_its_fp32_bias_back_and_loses_an_added_one",)),
    Mutant("captures-overlap", "CUDA-graph captures run one at a time across threads",
           "src/nanoify/engines/static_shapes.py", "    with CAPTURE_LOCK:", "    with threading.RLock():",
           ("tests/unit/test_static_shapes.py::test_captures_run_one_at_a_time_across_threads",)),
    Mutant("compile-per-shape", "torch.compile covers every batch and bucket without falling back to eager",
           "src/nanoify/engines/static_shapes.py", "dynamic=None, backend=backend", "dynamic=False, backend=backend",
           ("tests/unit/test_static_shapes.py::"
            "test_compiled_calls_cover_every_batch_and_bucket_without_falling_back",)),
    Mutant("qkv-quantize-thrice", "query, key and value quantize their shared input once",
           "src/nanoify/models/quantized.py", "        if entry is not None and entry[0] is x:",
           "        if entry is not None and entry[0] is not x:",
           ("tests/numerical/test_gpu_quant.py::test_query_key_and_value_quantize_their_shared_input_once",)),
    Mutant("timing-holds-large-engines", "the final timing shrinks its batch so that the engines held together fit",
           "src/nanoify/quant/steps.py", "    while batch > MIN_HELD_BATCH and batch * row_bytes * models > limit:",
           "    while False:",
           ("tests/e2e/test_search_time.py::test_the_timing_batch_halves_until_the_engines_held_together_fit",)),
    Mutant("fp32-row-runs-twice", "the FP32 float row of the reference's graph takes the reference's predictions",
           "src/nanoify/quant/steps.py", "    if _is_reference(c, src, ref, ev):", "    if False:",
           ("tests/e2e/test_quantize.py::test_the_fp32_float_row_reuses_the_reference_pass_on_the_same_rows",)),
    Mutant("smooth-weights-unscaled", "SmoothQuant scales the GEMM weights' rows by the s the inputs are divided by",
           "src/nanoify/quant/smooth.py",
           "            inits[name].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(w.dtype), name))",
           "            pass",
           ("tests/numerical/test_smooth.py::"
            "test_gemms_reading_one_tensor_share_a_group_and_the_smoothed_graph_computes_the_same",)),
    Mutant("smoothed-float-weights-restored", "a GEMM kept float in a smoothed graph keeps its smoothed weights",
           "src/nanoify/quant/schemes.py",
           '    return graph not in ("plain", "fused") and not graph.startswith(SMOOTHED)',
           '    return graph not in ("plain", "fused")',
           ("tests/numerical/test_smooth.py::test_a_gemm_kept_float_keeps_its_smoothed_weights",)),
    Mutant("bf16-row-fp32-weights", "OpenVINO's BF16 row is the IR with FP16-stored weights, measured as written",
           "src/nanoify/quant/targets.py", "work / c.name / OV_IR, fp16_weights=True)",
           "work / c.name / OV_IR, fp16_weights=False)",
           ("tests/e2e/test_openvino.py::"
            "test_the_bf16_row_is_an_ir_with_fp16_weights_measured_and_written_as_such",)),
)


def check_catalogue(root: Path = ROOT) -> list[str]:
    """Problems with the list itself: an ``old`` text not found exactly once, a duplicate id, a missing test file."""
    problems = []
    ids = [m.id for m in MUTANTS]
    problems += [f"duplicate id {i}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for m in MUTANTS:
        n = (root / m.file).read_text().count(m.old) if (root / m.file).is_file() else 0
        if n != 1:
            problems.append(f"{m.id}: its text occurs {n} times in {m.file} (stale: update the entry)")
        for t in m.tests:
            if not (root / t.split("::")[0]).is_file():
                problems.append(f"{m.id}: no test file {t.split('::')[0]}")
    return problems


def markdown() -> str:
    rows = ["| id | behaviour | broken in | guarded by |", "|---|---|---|---|"]
    for m in MUTANTS:
        rows.append(f"| `{m.id}` | {m.behaviour} | `{m.file.removeprefix('src/nanoify/')}` | "
                    + "<br>".join(f"`{t.removeprefix('tests/')}`" for t in m.tests) + " |")
    return "\n".join(rows)


def run(mutants: list[Mutant], python: str) -> int:
    missed = 0
    with tempfile.TemporaryDirectory(prefix="nanoify-mutants-") as tmp:
        copy = Path(tmp) / "project"  # no ../shared beside it: the shared-data tests skip
        for part in ("src", "tests"):
            shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
        env = {**os.environ, "PYTHONPATH": f"{copy / 'src'}{os.pathsep}{copy}"}
        for m in mutants:
            target = copy / m.file
            text = target.read_text()
            if text.count(m.old) != 1:
                print(f"STALE   {m.id}: its text occurs {text.count(m.old)} times in {m.file}", flush=True)
                missed += 1
                continue
            target.write_text(text.replace(m.old, m.new))
            t0 = time.time()
            try:
                res = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
                                     cwd=copy, env=env, capture_output=True, text=True)
            finally:
                target.write_text(text)
            caught = res.returncode == 1  # tests failed; 2-5 are errors of pytest itself, not a verdict
            missed += not caught
            last = (res.stdout.strip().splitlines() or ["(no output)"])[-1]
            print(f"{'caught' if caught else 'MISSED'}  {m.id} ({time.time() - t0:.0f} s): {last}", flush=True)
    return 1 if missed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ids", nargs="*", help="mutant ids (default: all)")
    p.add_argument("--list", action="store_true", help="print the catalogue as a Markdown table")
    a = p.parse_args()
    if a.list:
        print(markdown())
        return 0
    problems = check_catalogue()
    if problems:
        print("\n".join(problems))
        return 1
    known = {m.id: m for m in MUTANTS}
    unknown = [i for i in a.ids if i not in known]
    if unknown:
        print(f"unknown mutant id(s): {', '.join(unknown)}; --list shows them")
        return 2
    return run([known[i] for i in a.ids] if a.ids else list(MUTANTS), sys.executable)


if __name__ == "__main__":
    sys.exit(main())
