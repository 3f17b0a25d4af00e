"""Streaming calibration: feed batches, reduce each intermediate tensor into its histogram, drop it.

Two sources: an ONNX model (the tensors of interest are added as graph outputs and read batch by batch
from an ONNX Runtime session) or a PyTorch module (forward hooks on the inputs of Linear/Conv layers).
Memory is one batch of activations plus one fixed-size histogram per tensor, whatever the number of
samples: ONNX Runtime's own calibrators keep every batch's outputs until the end.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .histogram import DEFAULT_BINS, AbsHistogram
from .observers import OBSERVERS

log = logging.getLogger(__name__)

QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


def activation_tensors(model: Any, op_types: Iterable[str] = QUANTIZABLE_OPS,
                       nodes: Iterable[str] | None = None) -> list[str]:
    """Names of the non-constant inputs of the given op types (the activations to calibrate), in graph order;
    only of the nodes named in ``nodes`` when given."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    ops = set(op_types)
    only = set(nodes) if nodes is not None else None
    seen: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type in ops and (only is None or node.name in only):
            for name in node.input:
                if name and name not in consts:
                    seen.setdefault(name, None)
    return list(seen)


def calibrate_onnx(onnx_path: str | Path, feeds: Iterable[dict[str, np.ndarray]], tensors: list[str] | None = None,
                   bins: int = DEFAULT_BINS, threads: int | None = None) -> dict[str, AbsHistogram]:
    """Histograms of ``tensors`` (default: inputs of MatMul/Gemm/Conv) over every batch in ``feeds``."""
    import onnx

    from ..export.onnx import ort_session

    model = onnx.load(str(onnx_path))
    tensors = tensors if tensors is not None else activation_tensors(model)
    existing = {o.name for o in model.graph.output}
    graph_inputs = {i.name for i in model.graph.input}
    for name in tensors:
        if name not in existing and name not in graph_inputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    hists = {t: AbsHistogram(bins=bins, name=t) for t in tensors}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "augmented.onnx"
        onnx.save(model, str(path), save_as_external_data=model.ByteSize() > 1.8e9)
        del model  # the session holds its own copy of the weights; don't keep a second one
        sess = ort_session(path, threads)
        wanted_inputs = {i.name for i in sess.get_inputs()}
        outs = [t for t in tensors if t not in graph_inputs]
        for feed in feeds:
            feed = {k: v for k, v in feed.items() if k in wanted_inputs}
            for t in tensors:
                if t in graph_inputs:
                    hists[t].update(feed[t])
            for name, arr in zip(outs, sess.run(outs, feed), strict=True):
                hists[name].update(arr)
            del feed
    return hists


def calibrate_torch(module: Any, feeds: Iterable[dict[str, np.ndarray]], layer_types: tuple | None = None,
                    bins: int = DEFAULT_BINS) -> dict[str, AbsHistogram]:
    """Histograms of the inputs of every Linear/Conv layer of a torch module, via forward hooks."""
    import torch

    layer_types = layer_types or (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d)
    hists: dict[str, AbsHistogram] = {}
    handles = []
    for name, mod in module.named_modules():
        if isinstance(mod, layer_types):
            hists[name] = AbsHistogram(bins=bins, name=name)

            def hook(_m: Any, args: tuple, _out: Any, key: str = name) -> None:
                hists[key].update(args[0].detach().float().cpu().numpy())

            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for feed in feeds:
                module(**{k: torch.from_numpy(v) for k, v in feed.items()})
    finally:
        for h in handles:
            h.remove()
    return hists


def choose_ranges(hists: dict[str, AbsHistogram], method: str = "entropy", **kw: Any) -> dict[str, float]:
    """``amax`` per tensor by one observer (minmax, percentile, mse, entropy)."""
    if method not in OBSERVERS:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {', '.join(OBSERVERS)}")
    fn = OBSERVERS[method]
    return {name: float(fn(h, **kw)) for name, h in hists.items()}
