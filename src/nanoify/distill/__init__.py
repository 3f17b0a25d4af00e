"""Distillation: pure losses, layer matches as data, the resumable trainer, and the public functions (``run.py``).

``nanoify.distill(...)`` is the public verb; once this subpackage is imported Python resolves ``nanoify.distill``
to the package, so the package is callable and forwards to :func:`nanoify.distill.run.distill`.
"""

import sys
import types
from typing import Any

from .run import distill


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return distill(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
