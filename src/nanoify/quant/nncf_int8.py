"""NNCF's own post-training INT8 (``nncf.quantize`` on the OpenVINO model) as candidates of the ``openvino``
target: the peer a user of OpenVINO would otherwise run, measured in the same search, on nanoify's calibration
rows, so the chooser (and the report) compares like with like.

Variants: NNCF's default preset (``PERFORMANCE``: symmetric activations), ``MIXED`` (asymmetric activations),
and — where nanoify found nodes to keep float (its rules, e.g. a Concat of box pixels with class scores; its
sensitivity search when mixed precision ran) — the default preset with those nodes as NNCF's ignored scope.
Encoders (a float graph with Softmax and no convolution) are quantized with ``model_type=TRANSFORMER``, NNCF's
recipe for them.

Optional: needs ``nncf`` (``pip install nncf``; about 175 MB with scipy and scikit-learn, 3.7 s to import,
RESULTS.md). Imported only by the openvino target when nncf is installed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import nncf
import openvino as ov

from ..errors import ModelError, first_line

log = logging.getLogger(__name__)


def ov_names(onnx_nodes: Iterable[str]) -> list[str]:
    """The OpenVINO op names an ONNX node becomes (a Conv or Gemm with a bias is split: the Add keeps the node's
    name, the convolution itself is ``<name>/WithoutBiases``)."""
    return [n for node in onnx_nodes for n in (node, f"{node}/WithoutBiases")]


def quantize_ir(onnx_path: Path, feeds: Sequence[dict[str, Any]], dst: Path, preset: str = "PERFORMANCE",
                transformer: bool = False, ignored: Sequence[str] = (), progress: bool = False) -> dict[str, Any]:
    """``nncf.quantize`` of the ONNX graph read by OpenVINO, calibrated on ``feeds`` (input name → array), saved as
    IR at ``dst`` (FP32 weights where float); returns how it was made (for the manifest). NNCF's progress bars
    (printed to stdout) show only with ``progress``."""
    t0 = time.time()
    model = ov.Core().read_model(str(onnx_path))
    kwargs: dict[str, Any] = {"preset": getattr(nncf.QuantizationPreset, preset), "subset_size": len(feeds)}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=ov_names(ignored), validate=False)
    try:
        with contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO()):
            q = nncf.quantize(model, nncf.Dataset(list(feeds)), **kwargs)
    except Exception as e:  # noqa: BLE001 - NNCF's failures are its own; the search goes on without this row
        raise ModelError(f"nncf.quantize failed on {onnx_path.name}: {first_line(e)}") from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(dst), compress_to_fp16=False)
    return {"made_by": "nncf.quantize", "nncf": nncf.__version__, "preset": preset,
            "model_type": "transformer" if transformer else None, "ignored_scope": list(ignored),
            "calibration_rows": len(feeds), "seconds": round(time.time() - t0, 1)}
