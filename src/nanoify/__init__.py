"""nanoify: make trained networks small and fast, and prove it with measurements.

The public API is imported lazily so ``import nanoify`` does no work:
    nanoify.finetune(FinetuneConfig(...), out)
    nanoify.distill(DistillConfig(teacher=..., student="half"), out)
    nanoify.evaluate(model_dir, data, split="validation", teacher=None)
    nanoify.export(model_dir_or_module, out)            # a torch.nn.Module needs example_input=
    nanoify.quantize(export_dir, out, calib=data, config=QuantizeConfig(budget=0.5, target="cpu"))
    nanoify.benchmark([baseline, compressed], data, out=report_dir, config=BenchConfig(streams=2))
    nanoify.compress(CompressConfig(teacher=..., distill=DistillConfig(student="half")), out)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "finetune": ("nanoify.distill.run", "finetune"),
    "distill": ("nanoify.distill.run", "distill"),
    "evaluate": ("nanoify.distill.run", "evaluate"),
    "export": ("nanoify.export.onnx", "export"),
    "quantize": ("nanoify.quant.run", "quantize"),
    "benchmark": ("nanoify.bench.run", "benchmark"),
    "compress": ("nanoify.pipeline", "compress"),
    "CompressConfig": ("nanoify.pipeline", "CompressConfig"),
    "QuantizeConfig": ("nanoify.config", "QuantizeConfig"),
    "BenchConfig": ("nanoify.config", "BenchConfig"),
    "TimingConfig": ("nanoify.config", "TimingConfig"),
    "ModelSource": ("nanoify.pipeline", "ModelSource"),
    "resolve": ("nanoify.tasks.resolve", "resolve"),
    "make_task": ("nanoify.tasks", "make_task"),
    "open_engine": ("nanoify.engines", "open_engine"),
    "load_compress_recipe": ("nanoify.pipeline", "load_compress_recipe"),
    "DataConfig": ("nanoify.config", "DataConfig"),
    "TrainConfig": ("nanoify.config", "TrainConfig"),
    "FinetuneConfig": ("nanoify.config", "FinetuneConfig"),
    "DistillConfig": ("nanoify.config", "DistillConfig"),
    "NanoifyError": ("nanoify.errors", "NanoifyError"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'nanoify' has no attribute {name!r}")
