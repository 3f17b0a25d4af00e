"""Export failures as one line each: the error type, and the translation of an exporter's operator message."""

from __future__ import annotations

import re

from ..errors import NanoifyError


class ExportError(NanoifyError):
    """The model cannot be exported or the exported graph disagrees with PyTorch."""


def unsupported(e: Exception, opset: int) -> ExportError:
    msg = str(e)
    m = re.search(r"operator '?([\w:.]+)'? to ONNX opset version (\d+)", msg) or re.search(
        r"Unsupported: ONNX export of operator ([\w:.]+)", msg)
    if m:
        return ExportError(f"operator {m.group(1)} cannot be exported at opset {opset}; try --opset 18 "
                           "(or a newer torch)")
    first = msg.strip().splitlines()[0][:200] if msg.strip() else type(e).__name__
    return ExportError(f"ONNX export failed at opset {opset}: {first}")
