"""TensorRT hand-off: the calibration cache and a ready ``trtexec`` command line.

The cache is the text format TensorRT's calibrators read and write: a header
``TRT-<version>-EntropyCalibration2`` and one ``tensor: hex`` line per tensor, where hex is the big-endian
float32 bit pattern of the scale amax/127. With the explicit Q/DQ graph TensorRT does not need it (the
scales are in the graph); it is written for implicit-quantization builds and for tools that read it.

Unverified here: TensorRT is not installed on the project's machines and no GPU was available, so
nothing in this module has been run against a real TensorRT.
"""

from __future__ import annotations

import shlex
import struct
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError

Shape = tuple[int, ...]

DEFAULT_TRT_VERSION = "10.0.0"  # header version when tensorrt is not importable (cache written for 10.x)


def trt_version() -> str:
    """The installed TensorRT's version, else DEFAULT_TRT_VERSION."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # noqa: BLE001 - not installed (the usual case on CPU machines)
        return DEFAULT_TRT_VERSION


def version_tag(version: str) -> str:
    """TensorRT's integer version as in the cache header (8.6.1 → 8601; 10.0.1 → 100001)."""
    parts = [int(p) for p in (version.split(".") + ["0", "0"])[:3] if p.isdigit()] + [0, 0, 0]
    major, minor, patch = parts[:3]
    return str(major * 10000 + minor * 100 + patch) if major >= 10 else str(major * 1000 + minor * 100 + patch)


def write_calibration_cache(path: str | Path, ranges: dict[str, float], version: str | None = None) -> None:
    """Write ``tensor: hex(amax/127)`` lines under the EntropyCalibration2 header."""
    lines = [f"TRT-{version_tag(version or trt_version())}-EntropyCalibration2"]
    for name, amax in ranges.items():
        scale = float(amax) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    Path(path).write_text("\n".join(lines) + "\n")


def read_calibration_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """(header, tensor → amax) from a TensorRT calibration cache; a malformed line is a DataError."""
    text = Path(path).read_text().splitlines()
    if not text or not text[0].startswith("TRT-"):
        raise DataError(f"{path} is not a TensorRT calibration cache (first line should be TRT-<version>-...)")
    out: dict[str, float] = {}
    for i, line in enumerate(text[1:], start=2):
        if not line.strip():
            continue
        name, sep, hexval = line.rpartition(": ")
        try:
            if not sep:
                raise ValueError
            scale = struct.unpack(">f", bytes.fromhex(hexval.strip()))[0]
        except (ValueError, struct.error):
            raise DataError(f"{path}:{i}: expected 'tensor: 8-hex-digit scale', got {line[:60]!r}") from None
        out[name] = scale * 127.0
    return text[0], out


def trtexec_command(onnx_file: str, engine_file: str, shapes: dict[str, tuple[Shape, Shape, Shape]],
                    fp16_layers: Sequence[str] = (), calib_cache: str | None = None,
                    timing_cache: str = "timing.cache") -> str:
    """A ``trtexec`` line: INT8+FP16 from the Q/DQ graph, one optimisation profile with (min, opt, max) shapes per
    input (from :func:`nanoify.engines.base.profile_shapes`, so an image model's NCHW profile keeps its fixed
    channel and size axes and a text model's has batch × sequence).

    Layers kept out of INT8 by the mixed-precision plan are pinned to FP16 with ``--layerPrecisions``.
    """
    def fmt(k: int) -> str:
        return ",".join(f"{n}:{'x'.join(str(d) for d in s[k])}" for n, s in shapes.items())

    args = ["trtexec", f"--onnx={onnx_file}", "--int8", "--fp16", f"--minShapes={fmt(0)}",
            f"--optShapes={fmt(1)}", f"--maxShapes={fmt(2)}",
            f"--saveEngine={engine_file}", f"--timingCacheFile={timing_cache}"]
    if fp16_layers:
        args += ["--precisionConstraints=prefer", "--layerPrecisions=" + ",".join(f"{n}:fp16" for n in fp16_layers)]
    if calib_cache:
        args.append(f"--calib={calib_cache}")
    return " ".join(shlex.quote(a) for a in args)
