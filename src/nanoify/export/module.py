"""Export any PyTorch image model to ONNX: dynamic batch axis (and H/W on request), BatchNorm folded into the
convolutions, the graph simplified, and the result checked against PyTorch.

    nanoify.export(module, "runs/r20", example_input=torch.randn(1, 3, 32, 32), preprocess=pre, labels=names)
    nanoify export --module nanoify.models.vision:resnet20 --weights resnet20.safetensors \\
        --input-shape 3,32,32 --preprocess preprocess.json --labels labels.txt --out runs/r20

The TorchScript exporter in eval mode folds each Conv→BatchNorm pair into the convolution's weights and bias
(the conv-bn-relu fusion of the TensorRT recipe); ONNX Runtime's *basic* graph optimisations, applied offline,
then fold constants (the shape arithmetic of padding shortcuts, for instance) without introducing
hardware-specific ops, so the saved ``model.onnx`` runs anywhere. Both counts go into the manifest.

The output folder also holds ``preprocess.json``, ``label_map.json`` (when labels are known) and ``torch/``
(``module.json`` + ``model.safetensors``: the source, so ``bench`` can measure PyTorch eager beside the ONNX
model) when the module's import path is known.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ..artifacts import MANIFEST, atomic_dir, manifest, write_json
from ..data.images import Preprocess
from ..errors import ConfigError, DataError
from ..models.files import read_module_json
from ..models.load import load_module, read_labels, save_module
from ..runtime.ort import ort_session
from ..tasks import task_kind
from ..tasks.image import ImageKind
from .errors import ExportError, unsupported

log = logging.getLogger(__name__)

# max |output difference| against PyTorch FP32, relative to max(1, max |output|). Deep convolution stacks at full
# resolution differ by about 1e-4 between the two runtimes' kernels (measured 1.1e-4 on the 640² YOLOv8n-shaped net
# of benchmarks/yolo_layout_speed.py, AVX2); a wrong export differs by 1e-1 and more.
TOLERANCE = 1e-3
MODEL_FILE = "model.onnx"
IMAGE = ImageKind.name  # the task of a module export unless told


def _torch_outputs(module: Any, x: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        y = module(torch.from_numpy(x))
    ys = list(y) if isinstance(y, tuple | list) else [y]
    return [t.float().numpy() for t in ys]


def simplify(src: Path, dst: Path) -> None:
    """ONNX Runtime's basic (hardware-independent) graph optimisations, saved: constant folding, redundant node
    removal, Conv+BatchNorm/Add/Mul fusion."""

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def validate_outputs(module: Any, onnx_path: Path, feeds: Sequence[np.ndarray], input_name: str,
                     tolerance: float = TOLERANCE) -> float:
    """Max |output difference| between PyTorch and ONNX Runtime, relative to max(1, max |output|); ExportError
    above ``tolerance``."""
    sess = ort_session(onnx_path)
    worst = 0.0
    for x in feeds:
        want = _torch_outputs(module, x)
        got = sess.run(None, {input_name: x})
        for w, g in zip(want, got, strict=True):
            scale = max(1.0, float(np.abs(w).max()))
            worst = max(worst, float(np.abs(w - g).max()) / scale)
    if worst > tolerance:
        raise ExportError(f"{onnx_path.name} disagrees with PyTorch: max relative |Δ| {worst:.2e} > {tolerance:g}")
    return worst


def _labels_arg(labels: Sequence[str] | str | Path | None) -> list[str] | None:
    """Labels from a list, a comma-separated string, a label_map.json or a text file of one name per line."""
    if labels is None or isinstance(labels, list | tuple):
        return list(labels) if labels is not None else None
    p = Path(labels)
    if p.is_file():
        if p.suffix == ".json":
            d = json.loads(p.read_text())
            return [str(x) for x in (d["names"] if isinstance(d, dict) else d)]
        return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    if "," in str(labels):
        return [s.strip() for s in str(labels).split(",") if s.strip()]
    raise DataError(f"labels {labels!r}: pass a file (one name per line, or label_map.json) or a comma-separated list")


def export_module(module: Any, out: str | Path, example_input: Any, preprocess: Any = None,
                  labels: Sequence[str] | str | Path | None = None, factory: str | None = None,
                  kwargs: dict[str, Any] | None = None, input_name: str = "input",
                  output_names: Sequence[str] = ("logits",), dynamic_hw: bool = False, opset: int = 17,
                  images: np.ndarray | None = None, task: str = IMAGE, decoder: str | None = None) -> dict[str, Any]:
    """Export a PyTorch image model — a classifier, or a detector with ``task="detection"`` and its ``decoder``
    (see module docstring); returns the manifest.

    Args:
        example_input: a tensor or array of the input's shape (N×C×H×W, or N×H×W×C with an NHWC preprocess).
        preprocess: a :class:`~nanoify.data.images.Preprocess`, a dict or a ``preprocess.json`` path; its size
            defaults to the example input's.
        factory: ``package.module:callable`` that builds the module (with ``kwargs``): saved in ``torch/``.
        images: real preprocessed inputs to validate on besides random ones.
    """

    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"export needs a torch.nn.Module or a model folder, got {type(module).__name__}")
    x = example_input.detach().cpu().float().numpy() if isinstance(example_input, torch.Tensor) else \
        np.asarray(example_input, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise DataError(f"example input has shape {list(x.shape)}; an image model takes N×C×H×W (or N×H×W×C)")
    pre, nhwc, hw = _preprocess_arg(preprocess, x, dynamic_hw)
    names = _labels_arg(labels)
    module = module.eval().float()
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    outs = _torch_outputs(module, x[:1])
    kind = task_kind(task)
    if kind.classifies and names is not None and outs[0].ndim == 2 and outs[0].shape[1] != len(names):
        raise DataError(f"{len(names)} labels for a model with {outs[0].shape[1]} outputs")
    axes = _dynamic_axes(input_name, output_names, outs, dynamic_hw, nhwc)
    feeds = _validation_feeds(x, dynamic_hw, nhwc, images)
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw.onnx"
        _torch_export(module, x[:1], raw, input_name, output_names, axes, opset)
        simplify(raw, tmp / MODEL_FILE)

        ops_raw = _ops(onnx.load(str(raw)))
        ops = _ops(onnx.load(str(tmp / MODEL_FILE)))
        checks = {"raw": validate_outputs(module, raw, feeds, input_name),
                  MODEL_FILE: validate_outputs(module, tmp / MODEL_FILE, feeds, input_name)}
        det = kind.export_settings(decoder)
        _write_sidecars(tmp, pre, names, kind.settings_file, det)
        shape = ["batch", *(["height", "width"] if dynamic_hw else list(hw)), 3] if nhwc else \
            ["batch", 3, *(["height", "width"] if dynamic_hw else list(hw))]
        if factory:
            save_module(module, tmp / "torch", factory, kwargs or {}, {input_name: ["float32", shape]},
                        list(output_names), task)
            _write_sidecars(tmp / "torch", pre, names, kind.settings_file, det)
        man = manifest("export", {"module": factory or type(module).__qualname__, "kwargs": kwargs or {},
                                  "opset": opset, "dynamic_hw": dynamic_hw}, task=task,
                       labels=names, inputs={input_name: shape}, outputs={o: ["batch", "…"] for o in output_names},
                       preprocess=pre.to_dict(),
                       validation={"tolerance": TOLERANCE, "max_rel_output_diff": checks,
                                   "feeds": [list(f.shape) for f in feeds]},
                       batchnorm={"modules": n_bn, "onnx_nodes_after_export": ops_raw.get("BatchNormalization", 0),
                                  "onnx_nodes_saved": ops.get("BatchNormalization", 0)},
                       ops={"exported": ops_raw, "saved": ops}, torch_source="torch" if factory else None)
        write_json(tmp / MANIFEST, man)
    return man


def _torch_export(module: Any, x: np.ndarray, path: Path, input_name: str, output_names: Sequence[str],
                  axes: dict[str, dict[int, str]], opset: int) -> None:
    """torch.onnx.export (TorchScript exporter, eval mode); an unsupported operator is one line."""

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.from_numpy(x),), str(path), input_names=[input_name],
                              output_names=list(output_names), dynamic_axes=axes, opset_version=opset,
                              dynamo=False, do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL)
    except Exception as e:  # noqa: BLE001
        raise unsupported(e, opset) from None


def _preprocess_arg(preprocess: Any, x: np.ndarray, dynamic_hw: bool) -> tuple[Preprocess, bool, tuple[int, ...]]:
    """(preprocessing, NHWC?, the example's H×W): given as a Preprocess, a dict or a file; its size defaults to the
    example input's and must match it unless H and W are dynamic."""
    if isinstance(preprocess, str | Path):
        pre = Preprocess.load(preprocess)
    elif isinstance(preprocess, dict):
        pre = Preprocess.from_dict(preprocess)
    else:
        pre = preprocess or Preprocess()
    nhwc = pre.layout == "nhwc"
    hw = tuple(int(v) for v in (x.shape[1:3] if nhwc else x.shape[2:4]))
    if pre.size is None:
        pre = replace(pre, size=hw)
    elif tuple(pre.size) != hw and not dynamic_hw:
        raise DataError(f"preprocess size {list(pre.size)} differs from the example input's {list(hw)}")
    return pre, nhwc, hw


def _dynamic_axes(input_name: str, output_names: Sequence[str], outs: list[np.ndarray], dynamic_hw: bool,
                  nhwc: bool) -> dict[str, dict[int, str]]:
    """The export's dynamic axes: batch everywhere; with dynamic H/W also the input's and the outputs' that follow
    it (a detector's number of boxes, or its grid)."""
    axes: dict[str, dict[int, str]] = {input_name: {0: "batch"}}
    if dynamic_hw:
        axes[input_name].update({1: "height", 2: "width"} if nhwc else {2: "height", 3: "width"})
    for o, y in zip(output_names, outs, strict=False):
        axes[o] = {0: "batch"}
        if dynamic_hw and y.ndim >= 3:
            axes[o].update({k: f"{o}_dim{k}" for k in range(2, y.ndim)} if y.ndim == 4 else {2: f"{o}_boxes"})
    return axes


def _validation_feeds(x: np.ndarray, dynamic_hw: bool, nhwc: bool, images: np.ndarray | None) -> list[np.ndarray]:
    """Random inputs at batch 1 and 3, another size when H/W are dynamic (they must really be), real images."""
    rng = np.random.default_rng(0)
    feeds = [rng.normal(size=(b, *x.shape[1:])).astype(np.float32) for b in (1, 3)]
    if dynamic_hw:
        other = (x.shape[1], x.shape[2] + 32, x.shape[3] + 64) if not nhwc else (x.shape[1] + 32, x.shape[2] + 64,
                                                                                   x.shape[3])
        feeds.append(rng.normal(size=(1, *other)).astype(np.float32))
    if images is not None and len(images):
        feeds.append(np.asarray(images[:16], dtype=np.float32))
    return feeds


def _write_sidecars(folder: Path, pre: Preprocess, names: list[str] | None, settings_file: str,
                    settings: dict[str, Any] | None) -> None:
    """preprocess.json, label_map.json and the kind's settings file beside a model."""
    pre.save(folder / "preprocess.json")
    if names:
        (folder / "label_map.json").write_text(json.dumps({"names": names}, indent=2) + "\n")
    if settings:
        (folder / settings_file).write_text(json.dumps(settings, indent=2) + "\n")


def _ops(model: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return dict(sorted(out.items()))


def export_module_folder(folder: str | Path, out: str | Path, opset: int = 17, dynamic_hw: bool = False,
                         images: np.ndarray | None = None) -> dict[str, Any]:
    """Export a torch-module folder (``module.json`` + weights), keeping its preprocessing and labels."""

    folder = Path(folder)
    d = read_module_json(folder)
    module = load_module(folder)
    (input_name, (_, shape)), = d["inputs"].items()
    pre = folder / "preprocess.json"
    if not all(isinstance(s, int) for s in shape[1:]):  # dynamic H/W: the example takes the preprocessing's size
        size = Preprocess.load(pre).size if pre.is_file() else None
        if size is None:
            raise DataError(f"{folder}: the module takes any image size; give preprocess.json a \"size\"")
        hw = iter(size)
        shape = [1] + [s if isinstance(s, int) else next(hw) for s in shape[1:]]
        dynamic_hw = True
    example = np.zeros([1 if not isinstance(s, int) else s for s in shape], dtype=np.float32)
    task = d.get("task", IMAGE)
    settings = folder / task_kind(task).settings_file if task_kind(task).settings_file else None
    decoder = json.loads(settings.read_text()).get("decoder") if settings and settings.is_file() else None
    return export_module(module, out, example, preprocess=pre if pre.is_file() else None,
                         labels=read_labels(folder), factory=d["factory"], kwargs=d.get("kwargs") or {},
                         input_name=input_name, output_names=d["outputs"], dynamic_hw=dynamic_hw, opset=opset,
                         images=images, task=task, decoder=decoder)
