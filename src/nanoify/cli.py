"""Command line: thin subcommands over the public functions. Errors become one line and exit 2."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .artifacts import json_safe
from .bench.run import benchmark, format_table
from .config import (
    CPU_ENGINES,
    BenchConfig,
    DataConfig,
    DistillConfig,
    FinetuneConfig,
    QuantizeConfig,
    TimingConfig,
    TrainConfig,
    load_recipe,
)
from .data.images import is_image_data
from .data.splits import pick_split
from .data.text import available_splits, load_text_data
from .distill.run import distill, evaluate, finetune
from .errors import ConfigError, NanoifyError
from .export.onnx import export
from .models.load import build_module, load_weights
from .pipeline import CompressConfig, apply_overrides, compress, load_compress_recipe
from .quant.run import quantize
from .quant.targets import TARGETS
from .tasks import task_names
from .tasks.classify import format_agreement


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="folder with train/validation/test files, one .tsv/.csv/.jsonl file, or hf:NAME[/CONFIG] "
                        "(default: $NANOIFY_DATA_DIR, ../shared/data/text/sst2, then hf:glue/sst2)")
    g.add_argument("--text-column", default=None, help="text column (default: sentence or text)")
    g.add_argument("--label-column", default=None, help="label column (default: label)")
    g.add_argument("--max-length", type=int, default=128, help="tokenizer truncation length (default 128)")
    g.add_argument("--max-train", type=int, default=None, help="seeded random subset of N training rows")


def _train_args(p: argparse.ArgumentParser, lr: float) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=1.0, help="epochs per stage (default 1)")
    g.add_argument("--max-steps", type=int, default=None, help="cap on optimiser steps per stage")
    g.add_argument("--min-steps", type=int, default=500,
                   help="small data trains longer: at least this many steps per stage (default 500; 0: off) ...")
    g.add_argument("--max-epochs", type=float, default=10.0, help="... but never more epochs than this (default 10)")
    g.add_argument("--holdout", type=float, default=0.1,
                   help="when --min-steps lengthens training, this share of the training rows judges early "
                        "stopping (default 0.1; 0: off)")
    g.add_argument("--patience", type=int, default=3, help="held-out evaluations without a new best before "
                                                          "stopping (default 3)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-ratio", type=float, default=0.1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default 200)")
    g.add_argument("--resume", action="store_true", help="continue a killed run from OUT.ckpt/")
    g.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where training runs")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast forward passes and losses to bfloat16 (GPUs; also works on CPUs with bf16)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")


def _data_cfg(a: argparse.Namespace) -> Any:
    return DataConfig(data=a.data, text_column=a.text_column, label_column=a.label_column,
                      max_length=a.max_length, max_train=a.max_train)


def _train_cfg(a: argparse.Namespace) -> Any:
    return TrainConfig(epochs=a.epochs, max_steps=a.max_steps, min_steps=a.min_steps, max_epochs=a.max_epochs,
                       holdout=a.holdout, patience=a.patience,
                       batch_size=a.batch_size, lr=a.lr,
                       weight_decay=a.weight_decay, warmup_ratio=a.warmup_ratio, seed=a.seed,
                       checkpoint_every=a.checkpoint_every, device=a.device, precision=a.precision)


def _print_summary(man: dict[str, Any]) -> None:
    for split, m in man.get("metrics", {}).items():
        line = f"{split}: accuracy {m['accuracy']:.4f} on {m['n']} rows"
        if "macro_f1" in m:
            line += f", macro-F1 {m['macro_f1']:.4f}"
        if "teacher_accuracy" in m:
            line += f" (teacher {m['teacher_accuracy']:.4f})"
        print(line)
        if "agreement" in m:
            print(format_agreement(m["agreement"]))
    for w in man.get("diagnostics", {}).get("warnings", []):
        print(f"warning: {w}")


def cmd_finetune(a: argparse.Namespace) -> int:
    man = finetune(FinetuneConfig(model=a.model, data=_data_cfg(a), train=_train_cfg(a)), a.out,
                   resume=a.resume)
    if not man:  # another process of a torchrun / accelerate launch group: process 0 writes and reports
        return 0
    print(f"classifier written to {a.out}")
    _print_summary(man)
    return 0


def cmd_distill(a: argparse.Namespace) -> int:
    stages = tuple(s.strip() for s in a.stages.split(",") if s.strip())
    cfg = DistillConfig(teacher=a.teacher, student=a.student, student_latency=a.student_latency, init=a.init,
                        alpha_hard=a.alpha_hard,
                        alpha_soft=a.alpha_soft, temperature=a.temperature, attention_weight=a.attention_weight,
                        hidden_weight=a.hidden_weight, embedding_weight=a.embedding_weight,
                        relation_weight=a.relation_weight, relation_layer=a.relation_layer,
                        relation_heads=a.relation_heads, augment=a.augment, augment_prob=a.augment_prob,
                        augment_neighbours=a.augment_neighbours, augment_mlm=a.augment_mlm, layer_map=a.layer_map,
                        stages=stages,
                        data=_data_cfg(a), train=_train_cfg(a))
    man = distill(cfg, a.out, resume=a.resume)
    if not man:  # another process of a torchrun / accelerate launch group: process 0 writes and reports
        return 0
    st = man["student"]
    print(f"student written to {a.out}: {st['layers']} layers, hidden {st['hidden']}, "
          f"{st['parameters'] / 1e6:.1f}M parameters, {st['encoder_flops_ratio_vs_teacher']:.1f}x fewer encoder FLOPs")
    _print_summary(man)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    res = evaluate(a.model, _data_cfg(a), split=a.split, teacher=a.teacher)
    if a.json:
        print(json.dumps(json_safe(res)))
        return 0
    line = f"{res['split']}: accuracy {res['accuracy']:.4f} on {res['n']} rows"
    if "macro_f1" in res:
        line += f", macro-F1 {res['macro_f1']:.4f}"
    print(line)
    if "agreement" in res:
        print(f"teacher accuracy {res['teacher_accuracy']:.4f}")
        print(format_agreement(res["agreement"]))
    return 0


def _eval_data(spec: str | None, a: argparse.Namespace) -> Any:
    """What --data/--calib/--eval name: a DataConfig for text (with the column and length flags); image data
    (.npz, image folders) goes to the image task as the path itself."""

    if is_image_data(spec):
        return spec
    return DataConfig(data=spec, text_column=a.text_column, label_column=a.label_column, max_length=a.max_length)


def cmd_export(a: argparse.Namespace) -> int:
    if a.module:
        if not a.weights or not a.input_shape:
            raise ConfigError("--module needs --weights FILE.safetensors and --input-shape C,H,W")
        kwargs = json.loads(a.module_kwargs) if a.module_kwargs else {}
        module = load_weights(build_module(a.module, kwargs), a.weights)
        shape = tuple(int(v) for v in a.input_shape.split(","))
        man = export(module, a.out, opset=a.opset, example_input=np.zeros((1, *shape), dtype=np.float32),
                     preprocess=a.preprocess, labels=a.labels, factory=a.module, kwargs=kwargs,
                     dynamic_hw=a.dynamic_hw)
    elif a.model is None:
        raise ConfigError("export needs a model folder, or --module package.module:callable with --weights")
    elif a.model and (Path(a.model) / "module.json").is_file():
        man = export(a.model, a.out, opset=a.opset, dynamic_hw=a.dynamic_hw)
    else:
        texts = None
        if a.data:
            split = pick_split(available_splits(a.data), None, "eval", a.data)
            texts = load_text_data(DataConfig(data=a.data), splits=(split,)).split(split).texts[:16]
        man = export(a.model, a.out, opset=a.opset, texts=texts, fuse_graph=not a.no_fuse)
    v = man["validation"]
    diffs = ", ".join(f"{k} {val:.1e}" for k, val in (v.get("max_abs_logit_diff") or v["max_rel_output_diff"]).items())
    dynamic = list(dict.fromkeys(d for dims in man.get("inputs", {}).values() for d in dims if isinstance(d, str)))
    named = ", ".join(dynamic[:-1]) + " and " + dynamic[-1] if len(dynamic) > 1 else "".join(dynamic)
    axes = f"dynamic {named}" if dynamic else "fixed shape"
    print(f"ONNX written to {a.out} ({axes}); max |output - PyTorch|: {diffs}")
    if man.get("fused_ops"):
        print("fused: " + ", ".join(f"{k} {val}" for k, val in man["fused_ops"].items()))
    if man.get("batchnorm"):
        bn = man["batchnorm"]
        print(f"BatchNorm: {bn['modules']} module(s) folded into convolutions, {bn['onnx_nodes_saved']} left")
    for w in man.get("warnings", []):
        print(f"warning: {w}")
    return 0


def _quantize_cfg(a: argparse.Namespace) -> Any:
    methods = tuple(m.strip() for m in a.methods.split(",") if m.strip()) if a.methods else None
    return QuantizeConfig(target=a.target, budget=a.budget, agreement_budget=a.agreement_budget, methods=methods,
                          calib_samples=a.calib_samples,
                          eval_rows=a.eval_rows, optimize=a.optimize, threads=a.threads,
                          timing=TimingConfig(rounds=a.rounds), device=a.device, cpu_engine=a.cpu_engine,
                          sensitivity_seconds=a.sensitivity_seconds, search_seconds=a.search_seconds,
                          rounding=tuple(r.strip() for r in a.rounding.split(",") if r.strip()) if a.rounding else None,
                          bias_correction={"auto": None, "on": True, "off": False}[a.bias_correction],
                          smooth={"auto": None, "on": True, "off": False}[a.smooth],
                          require_int8=a.require_int8)


def cmd_quantize(a: argparse.Namespace) -> int:
    calib = _eval_data(a.calib, a)
    ev = _eval_data(a.eval, a) if a.eval else None
    man = quantize(a.model, a.out, calib=calib, eval_data=ev, config=_quantize_cfg(a), task=a.task,
                   preprocess=a.preprocess, decoder=a.decoder)
    if a.json:
        print(json.dumps(json_safe(man)))
        return 0
    print((Path(a.out) / "report.md").read_text().rstrip())
    print(f"\nwritten to {a.out}" + (f"/{man['model_file']}" if man.get("model_file") else ""))
    if not man["budget_met"]:
        print(f"warning: no candidate met the budget of {a.budget} points; kept the best")
    for w in man.get("warnings", []):
        print(f"warning: {w}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    engines = tuple(a.engine.split(",")) if a.engine else None
    if engines and len(engines) != len(a.models):
        raise ConfigError(f"--engine lists {len(engines)} engines for {len(a.models)} models; give one per model")
    cfg = BenchConfig(split=a.split, streams=a.streams, repeats=a.repeats, engines=engines, device=a.device,
                      timing=TimingConfig(latency_rows=a.latency_rows, throughput_rows=a.throughput_rows,
                                          rounds=a.rounds))
    rep = benchmark(a.models, _eval_data(a.data, a) if a.data else None, out=a.out, config=cfg,
                    progress=not a.json, task=a.task, preprocess=a.preprocess, decoder=a.decoder)
    if a.json:
        print(json.dumps(json_safe(rep)))
        return 0
    print(format_table(rep))
    if a.out:
        print(f"\nreport.md, report.json and report.png written to {a.out}")
    return 0


def cmd_compress(a: argparse.Namespace) -> int:
    over = {"teacher": a.teacher, "data": a.data, "student": a.student, "target": a.target, "budget": a.budget,
            "finetune_teacher": True if a.finetune_teacher else None, "optimize": a.optimize}
    out = a.out
    if a.recipe:
        cfg = load_compress_recipe(a.recipe, **over)
        if out is None:
            out = load_recipe(a.recipe).get("out")
    else:
        cfg = apply_overrides(CompressConfig(teacher=a.teacher or ""), **{**over, "teacher": None})
    if not out:
        raise ConfigError("compress needs an output folder: --out DIR (or out: in the recipe)")
    total = len(cfg.stages)
    seen: list[str] = []

    def on_stage(stage: str, status: str) -> None:
        if status == "done" or status == "reused":
            seen.append(stage)
            word = "done" if status == "done" else "reused (same inputs as the last run)"
            print(f"[{len(seen)}/{total}] {stage}: {word}", flush=True)
        else:
            print(f"[{len(seen) + 1}/{total}] {stage}: running ...", flush=True)

    man = compress(cfg, out, on_stage=on_stage)
    print()
    print((Path(out) / "report.md").read_text().rstrip())
    print(f"\nreport.md, report.json, report.png and every stage's folder are in {out}")
    if not man["summary"]["budget_met"]:
        print(f"warning: the compressed model is {man['summary']['drop_pts']:.2f} points below its baseline, beyond "
              f"the budget of {cfg.quantize.budget}")
    return 0


def _has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanoify", description="Make trained networks small and fast, with proof.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    _finetune_parser(sub)
    _distill_parser(sub)
    _evaluate_parser(sub)
    _export_parser(sub)
    _quantize_parser(sub)
    _compress_parser(sub)
    _bench_parser(sub)
    return p


def _finetune_parser(sub: Any) -> None:
    f = sub.add_parser("finetune", help="pretrained encoder -> text classifier (Hugging Face format)")
    f.add_argument("--model", default="minilm", help="path, hub name, or minilm (all-MiniLM-L6-v2, packaged)")
    f.add_argument("--out", required=True, help="output folder (written atomically)")
    _data_args(f)
    _train_args(f, lr=5e-5)
    f.set_defaults(func=cmd_finetune)


def _distill_parser(sub: Any) -> None:
    d = sub.add_parser("distill", help="teacher classifier -> smaller student (TinyBERT/DistilBERT losses)")
    d.add_argument("--teacher", required=True, help="teacher classifier folder")
    d.add_argument("--out", required=True, help="output folder (written atomically)")
    d.add_argument("--student", default="half",
                   help="half | tinybert | layers=4,hidden=312,heads=12,intermediate=1200 | prune:4x192[,heads=6,"
                        "ffn=768] (carved out of the teacher by importance on the data) (default half)")
    d.add_argument("--student-latency", type=float, default=None, metavar="MS",
                   help="instead of --student: the student carved out of the teacher with the most compute whose "
                        "batch-1 latency (FP32, ONNX Runtime, measured here on the training sentences) fits MS")
    d.add_argument("--init", default="auto",
                   help="auto (default: teacher-layers when the student has the teacher's width, else "
                        "teacher-pca) | teacher-layers (DistilBERT) | random (TinyBERT) | teacher-pca (fresh "
                        "layers, teacher embeddings projected to the student width) | teacher-pruned (the default for "
                        "prune: students) | PATH of a smaller encoder")
    d.add_argument("--alpha-hard", type=float, default=0.5, help="weight of gold-label cross-entropy (0.5)")
    d.add_argument("--alpha-soft", type=float, default=1.0, help="weight of soft-target KL (1.0)")
    d.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T of soft targets (2.0)")
    d.add_argument("--attention-weight", type=float, default=None,
                   help="attention-map MSE weight (default 1 with an intermediate stage, else 0)")
    d.add_argument("--hidden-weight", type=float, default=None, help="hidden-state MSE weight (same default)")
    d.add_argument("--embedding-weight", type=float, default=None, help="embedding-output MSE weight (same default)")
    d.add_argument("--relation-weight", type=float, default=0.0,
                   help="MiniLM-v2 self-attention relation KL (Q-Q, K-K, V-V) of a teacher layer against the "
                        "student's last layer; any widths and head counts, no projection (default 0: off)")
    d.add_argument("--relation-layer", type=int, default=0, help="teacher layer for relations (default: its last)")
    d.add_argument("--relation-heads", type=int, default=0,
                   help="relation heads (default: the student's head count when it divides both widths)")
    d.add_argument("--augment", type=int, default=0,
                   help="TinyBERT-style augmentation: N variants per training sentence, each word replaced with "
                        "probability --augment-prob (0.4) by one of its --augment-neighbours (15) nearest tokens in "
                        "the teacher's input embeddings; the teacher labels them (default 0: off)")
    d.add_argument("--augment-prob", type=float, default=0.4, help=argparse.SUPPRESS)
    d.add_argument("--augment-neighbours", type=int, default=15, help=argparse.SUPPRESS)
    d.add_argument("--augment-mlm", default=None, metavar="MODEL",
                   help="take --augment candidates from this masked LM (path or hub name; it must share the "
                        "teacher's vocabulary), as TinyBERT does, instead of the teacher's embedding neighbours")
    d.add_argument("--layer-map", default="uniform", help="uniform | last | 1:3,2:6,... (student:teacher)")
    d.add_argument("--stages", default="joint", help="joint | intermediate,prediction (TinyBERT two-stage)")
    _data_args(d)
    _train_args(d, lr=1e-4)
    d.set_defaults(func=cmd_distill)


def _evaluate_parser(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="accuracy of a classifier; with --teacher, the agreement table")
    e.add_argument("model", help="classifier folder")
    e.add_argument("--split", default=None, help="split to evaluate (default: validation, else test)")
    e.add_argument("--teacher", default=None, help="teacher folder: adds the student/teacher agreement table")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    _data_args(e)
    e.set_defaults(func=cmd_evaluate, threads=None)


def _export_parser(sub: Any) -> None:
    x = sub.add_parser("export", help="model -> ONNX (dynamic axes), validated against PyTorch",
                       description="A Hugging Face text classifier folder (plus ONNX Runtime's transformer fusions), "
                                   "a torch-module folder (module.json), or a PyTorch image model built from an "
                                   "import path (--module) with safetensors weights.")
    x.add_argument("model", nargs="?", default=None, help="classifier folder or torch-module folder")
    x.add_argument("--out", required=True, help="output folder (written atomically)")
    x.add_argument("--opset", type=int, default=17)
    x.add_argument("--no-fuse", action="store_true", help="skip ONNX Runtime's transformer fusions")
    x.add_argument("--data", default=None, help="also validate on real sentences from this text data")
    g = x.add_argument_group("PyTorch image models")
    g.add_argument("--module", default=None, help="import path of a function or class building the module, "
                                                  "e.g. nanoify.models.vision:resnet20")
    g.add_argument("--module-kwargs", default=None, help="its keyword arguments as JSON, e.g. '{\"num_classes\": 10}'")
    g.add_argument("--weights", default=None, help="safetensors file to load into the module")
    g.add_argument("--input-shape", default=None, help="one input's shape C,H,W (e.g. 3,32,32)")
    g.add_argument("--labels", default=None, help="class names: a file (one per line, or label_map.json) or a,b,c")
    g.add_argument("--preprocess", default=None, help="preprocess.json (size, resize, mean, std, …)")
    g.add_argument("--dynamic-hw", action="store_true", help="also make the image height and width dynamic")
    x.set_defaults(func=cmd_export, threads=None)


def _quantize_parser(sub: Any) -> None:
    q = sub.add_parser("quantize", help="ONNX -> INT8 / mixed precision, the best for the job within a budget")
    q.add_argument("model", help="export folder, .onnx file, classifier folder or torch-module folder")
    q.add_argument("--out", required=True, help="output folder (written atomically)")
    q.add_argument("--calib", default=None, help="calibration data (its train split, else validation/test): text "
                                                 "files, .npz, a folder of images, a YOLO/COCO-format detection set "
                                                 "(default: the default text data)")
    q.add_argument("--eval", default=None, help="evaluation data (its validation split, else test; default: --calib)")
    q.add_argument("--budget", type=float, default=0.5,
                   help="largest drop against FP32 in points of the task's metric: accuracy, or agreement with "
                        "the FP32 model when the evaluation data has no labels (default 0.5)")
    q.add_argument("--agreement-budget", type=float, default=None,
                   help="also bound how far predictions may drift from FP32, in points of agreement (1.0: at most "
                        "1%% of predictions change); default: no bound")
    q.add_argument("--target", choices=tuple(TARGETS), default="cpu",
                   help="cpu: ONNX Runtime INT8 measured here; openvino: Q/DQ INT8 measured in OpenVINO here, "
                        "written as ONNX and OpenVINO IR; tensorrt: Q/DQ graph + calibration cache to hand off; "
                        "cuda: GPU formats for the torch engine, measured on the GPU (transformers: FP8/INT8/FP16; "
                        "CNNs and detectors: FP16/BF16)")
    q.add_argument("--device", default="cuda",
                   help="--target cuda: the GPU (cuda, cuda:N; default cuda); cpu scores the formats on the CPU "
                        "kernels of the same ops (accuracy only: its timings say nothing about a GPU)")
    q.add_argument("--rounding", default=None,
                   help="static INT8 weight rounding to try: nearest, learned (AdaRound), or both comma-separated "
                        "(default: both for graphs with convolutions, nearest otherwise)")
    q.add_argument("--bias-correction", choices=("auto", "on", "off"), default="auto",
                   help="also try the best static candidates with biases corrected for their rounded weights' mean "
                        "output shift (default auto: for graphs with convolutions)")
    q.add_argument("--smooth", choices=("auto", "on", "off"), default="auto",
                   help="also try the static candidates with SmoothQuant (activation outlier channels moved into the "
                        "GEMM weights first; default auto: for graphs without convolutions, i.e. transformers)")
    q.add_argument("--require-int8", action="store_true",
                   help="fail (one line, nothing written) when no INT8 candidate within the budget is at least as "
                        "fast as FP32, instead of writing the float model")
    q.add_argument("--search-seconds", type=float, default=600.0,
                   help="what the whole search aims to take (default 600): a quarter is set aside for the final "
                        "timing; learned rounding, the candidates (all first judged on fewer rows when every one on "
                        "every row does not fit; the 4 best INT8 ones go on), bias-corrected twins, mixed precision "
                        "(searched on fewer rows first) and the peer rows each take a share of what is left")
    q.add_argument("--sensitivity-seconds", type=float, default=None,
                   help="mixed precision's per-node sensitivity search: rows per node shrink so that it fits this "
                        "(default: half of what --search-seconds has left then; at least 8 rows)")
    q.add_argument("--cpu-engine", choices=CPU_ENGINES, default="auto",
                   help="--target cpu: auto (default) also runs the chosen graph in OpenVINO when installed and "
                        "deploys on the faster engine within the budget; onnxruntime or openvino to fix it")
    q.add_argument("--optimize", choices=("balanced", "latency", "throughput", "size"), default="balanced",
                   help="what the model is for: balanced (default: batch-1 latency, throughput and size together), "
                        "latency, throughput or size")
    q.add_argument("--methods", default=None,
                   help="calibration methods for static INT8: entropy, percentile, mse, minmax (default all)")
    q.add_argument("--calib-samples", type=int, default=None,
                   help="calibration rows (default: 256 sentences, 100 images)")
    q.add_argument("--eval-rows", type=int, default=None, help="use the first N evaluation rows (default all)")
    q.add_argument("--rounds", type=int, default=3, help="timing rounds per candidate (default 3)")
    q.add_argument("--task", default=None, choices=task_names(),
                   help="the model's task when its inputs do not say")
    q.add_argument("--decoder", default=None,
                   help="detectors: yolov8 | yolov5 | fastestdet | package.module:function (default: detection.json "
                        "beside the model, else what the output shape implies)")
    q.add_argument("--preprocess", default=None, help="preprocess.json for an image model without one beside it")
    q.add_argument("--text-column", default=None)
    q.add_argument("--label-column", default=None)
    q.add_argument("--max-length", type=int, default=128)
    q.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    q.add_argument("--json", action="store_true", help="print the manifest as JSON")
    q.set_defaults(func=cmd_quantize)


def _compress_parser(sub: Any) -> None:
    c = sub.add_parser("compress", help="the whole chain: distil -> export -> quantize -> bench -> report")
    c.add_argument("recipe", nargs="?", default=None, help="YAML/JSON recipe (see examples/); flags override it")
    c.add_argument("--teacher", default=None, help="fine-tuned classifier folder (or encoder with --finetune-teacher)")
    c.add_argument("--finetune-teacher", action="store_true",
                   help="--teacher is a pretrained encoder (path, hub name or minilm): fine-tune it on --data first")
    c.add_argument("--data", default=None, help="text data (default: the default data)")
    c.add_argument("--out", default=None, help="output folder; rerunning skips stages whose inputs are unchanged")
    c.add_argument("--student", default=None, help="student spec (default half; see distill --help)")
    c.add_argument("--target", choices=tuple(TARGETS), default=None,
                   help="where the compressed model runs (default cpu; cuda: the GPU formats of quantize --target "
                        "cuda, measured with the torch engine on the GPU)")
    c.add_argument("--optimize", choices=("balanced", "latency", "throughput", "size"), default=None,
                   help="what the compressed model is for (see quantize --help)")
    c.add_argument("--budget", type=float, default=None,
                   help="points of the task's metric the compressed model may lose against the teacher (default 1.0)")
    c.set_defaults(func=cmd_compress)


def _bench_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="latency, throughput, memory, size, accuracy and agreement of models")
    b.add_argument("models", nargs="+", help="classifier folders, torch-module folders, export/quantize folders or "
                                             ".onnx files; the first is the baseline")
    b.add_argument("--data", default=None, help="evaluation data: text files, .npz, or a folder of images "
                                                "(default: the default text data)")
    b.add_argument("--split", default=None, help="split to measure on (default: validation, else test)")
    b.add_argument("--out", default=None, help="folder for report.md, report.json, report.png")
    b.add_argument("--engine", default=None,
                   help="engine per model, comma-separated: NAME[:cpu|cuda][:fp32|bf16|fp16], NAME = torch, "
                        "onnxruntime"
                        + ("" if _has_tensorrt() else ", tensorrt (not installed here)"))
    b.add_argument("--device", default="cpu", help="torch engine device: cpu or cuda")
    b.add_argument("--streams", type=int, default=0, help="also serve N concurrent batch-1 streams")
    b.add_argument("--repeats", type=int, default=1,
                   help="measure the models in N interleaved fresh-process runs and report medians (default 1)")
    b.add_argument("--rounds", type=int, default=3, help="timing rounds inside each run (default 3)")
    b.add_argument("--latency-rows", type=int, default=200)
    b.add_argument("--throughput-rows", type=int, default=512)
    b.add_argument("--task", default=None, choices=task_names())
    b.add_argument("--decoder", default=None, help="detectors: yolov8 | yolov5 | fastestdet | package.module:function")
    b.add_argument("--preprocess", default=None, help="preprocess.json for image models without one beside them")
    b.add_argument("--text-column", default=None)
    b.add_argument("--label-column", default=None)
    b.add_argument("--max-length", type=int, default=128)
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.set_defaults(func=cmd_bench, threads=None)

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _process_settings(args):
        try:
            return args.func(args)
        except NanoifyError as e:
            print(f"nanoify: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("nanoify: interrupted; previous outputs are intact (rerun with --resume to continue training)",
                  file=sys.stderr)
            return 130
        finally:
            _leave_process_group()


@contextlib.contextmanager
def _process_settings(args: argparse.Namespace) -> Iterator[None]:
    """What a command sets for its process — log level and handler, tokenizer threads, torch threads — set for
    the call and put back after it, so ``main`` called in-process (a notebook, a test) leaves its caller as it was.
    Not ``logging.basicConfig``: it does nothing once the root logger has a handler, and then ``-v`` is lost."""
    root, hub = logging.getLogger(), logging.getLogger("huggingface_hub")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    before = (root.level, hub.level, os.environ.get("TOKENIZERS_PARALLELISM"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    hub.setLevel(logging.ERROR)  # hub retries log a warning per attempt; a failure still ends as our one-line error
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = None
    if getattr(args, "threads", None):
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(before[0])
        hub.setLevel(before[1])
        if before[2] is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        if threads is not None:
            torch.set_num_threads(threads)


def _leave_process_group() -> None:
    """End a torchrun / accelerate launch group cleanly (every process reaches here)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
