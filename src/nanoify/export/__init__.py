"""ONNX export: text classifiers (``onnx.py``, with transformer fusions) and PyTorch image models (``module.py``).

``nanoify.export(...)`` is the public verb, but once this subpackage is imported Python resolves
``nanoify.export`` to the package, not the function; the package is therefore callable and forwards to
:func:`nanoify.export.onnx.export`, so both spellings work whatever was imported first.
"""

import sys
import types
from typing import Any

from .onnx import export


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
