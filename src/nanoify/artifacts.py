"""Self-describing, atomically written output folders.

Every command writes into a temporary sibling folder and renames it over the destination only when the
work is complete, so an interrupted run leaves the previous result intact. ``manifest.json`` records the
configuration, library versions, data provenance and metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .runtime.cpu import cpu_flags

MANIFEST = "manifest.json"


def versions() -> dict[str, str]:
    """Versions of the libraries that decide numerical results."""
    out = {"python": platform.python_version()}
    for name in ("nanoify", "torch", "transformers", "tokenizers", "numpy", "onnx", "onnxruntime"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:  # noqa: BLE001 - optional package absent
            continue
    return out


def machine() -> dict[str, Any]:
    """A short description of the machine a result was measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system(), "arch": platform.machine(),
            "cpu_flags": list(cpu_flags())}


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    """SHA-256 of a file (of its first ``limit`` bytes when given)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = limit
        while True:
            chunk = f.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return h.hexdigest()


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats (an SQNR of inf: no noise at all) as the strings "inf"/"-inf"/"nan",
    which strict JSON readers accept; Python's ``Infinity`` is not JSON."""

    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(json_safe(obj), f, indent=2, sort_keys=False, default=str, allow_nan=False)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an output folder, or an empty dict when it has none."""
    p = Path(folder) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else {}


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``dest`` only if the block completes.

    On an exception the temporary folder is removed and ``dest`` is untouched.
    """
    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{int(time.time() * 1e6)}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def manifest(kind: str, config: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """Build a manifest dict: kind, time, versions, machine, config and any extra sections."""
    return {
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "machine": machine(),
        "config": config,
        **sections,
    }
