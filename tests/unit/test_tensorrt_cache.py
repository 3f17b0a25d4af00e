"""TensorRT calibration cache: exact bit format, round trip, malformed input; the trtexec line."""

from __future__ import annotations

import numpy as np
import pytest

from nanoify.errors import DataError
from nanoify.quant.tensorrt import read_calibration_cache, trtexec_command, version_tag, write_calibration_cache


def test_cache_format_and_round_trip(tmp_path):
    ranges = {"input.1": 127.0, "/enc/layer.0/MatMul_output_0": 3.5, "x": 1e-3}
    p = tmp_path / "calibration.cache"
    write_calibration_cache(p, ranges, version="10.3.0")
    lines = p.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert lines[1] == "input.1: 3f800000"  # scale 127/127 = 1.0 as big-endian float32 bits
    header, back = read_calibration_cache(p)
    assert header == lines[0] and list(back) == list(ranges)
    np.testing.assert_allclose(list(back.values()), list(ranges.values()), rtol=1e-6)


def test_version_tags():
    assert version_tag("8.6.1") == "8601" and version_tag("10.0.1") == "100001"


def test_malformed_cache_is_a_data_error(tmp_path):
    p = tmp_path / "c"
    p.write_text("not a cache\n")
    with pytest.raises(DataError, match="not a TensorRT calibration cache"):
        read_calibration_cache(p)
    p.write_text("TRT-8601-EntropyCalibration2\nt: zz\n")
    with pytest.raises(DataError, match=":2: expected"):
        read_calibration_cache(p)


def test_trtexec_line_from_per_input_specs():
    from nanoify.engines.base import profile_shapes

    text = {"input_ids": ("int64", ["batch", "sequence"]), "attention_mask": ("int64", ["batch", "sequence"])}
    shapes = profile_shapes(text, {"batch": (1, 8, 32), "sequence": (1, 64, 512)})
    cmd = trtexec_command("m.onnx", "m.plan", shapes, fp16_layers=["/l0/MatMul"])
    assert "--int8 --fp16" in cmd and "--minShapes=input_ids:1x1,attention_mask:1x1" in cmd
    assert "--maxShapes=input_ids:32x512,attention_mask:32x512" in cmd
    assert "--layerPrecisions=/l0/MatMul:fp16" in cmd and "--precisionConstraints=prefer" in cmd
    image = {"input": ("float32", ["batch", 3, 32, 32])}
    cmd = trtexec_command("r.onnx", "r.plan", profile_shapes(image, {"batch": (1, 16, 64)}))
    assert "--minShapes=input:1x3x32x32" in cmd and "--optShapes=input:16x3x32x32" in cmd
    assert "--maxShapes=input:64x3x32x32" in cmd
    with pytest.raises(DataError, match="no profile range"):
        profile_shapes({"x": ("float32", ["batch", 3, "height", "width"])}, {"batch": (1, 1, 1)})


def test_engine_specs():
    from nanoify.engines import EngineUnavailable, parse_engine_spec

    assert parse_engine_spec("torch") == ("torch", {})
    assert parse_engine_spec("torch:cuda:bf16") == ("torch", {"device": "cuda", "dtype": "bf16"})
    name, opts = parse_engine_spec("onnxruntime:cuda")
    assert name == "onnxruntime" and opts["providers"][0] == "CUDAExecutionProvider"
    with pytest.raises(EngineUnavailable, match="unknown engine option"):
        parse_engine_spec("torch:gpu")
