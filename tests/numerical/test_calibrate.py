"""Calibration on a tiny exported model: ONNX and torch sources agree with brute force; NaN is named."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from nanoify.data.text import collate
from nanoify.errors import DataError
from nanoify.quant.calibrate import calibrate_onnx, calibrate_torch, choose_ranges
from nanoify.quant.qdq import weight_node_inputs


class TwoLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.fixture(scope="module")
def two_linear(tmp_path_factory):
    m = TwoLinear().eval()
    path = tmp_path_factory.mktemp("cal") / "m.onnx"
    torch.onnx.export(m, (torch.randn(2, 8),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}}, dynamo=False)
    return m, path


def test_onnx_and_torch_calibration_match_brute_force(two_linear):
    m, path = two_linear
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(5, 8)).astype(np.float32) * (i + 1) for i in range(6)]
    model = onnx.load(str(path))
    names = weight_node_inputs(model)
    assert len(names) == 2 and names[0] == "x"
    h_onnx = calibrate_onnx(path, ({"x": b} for b in batches))
    with torch.no_grad():
        hidden = [torch.relu(m.a(torch.from_numpy(b))).numpy() for b in batches]
    amax = {k: r.amax for k, r in choose_ranges(h_onnx, "minmax").items()}
    assert amax["x"] == pytest.approx(float(np.abs(np.concatenate(batches)).max()))
    assert amax[names[1]] == pytest.approx(float(np.abs(np.concatenate(hidden)).max()), rel=1e-6)
    h_torch = calibrate_torch(m, ({"x": b} for b in batches))
    assert set(h_torch) == {"a", "b"}
    assert choose_ranges(h_torch, "minmax")["b"].amax == pytest.approx(amax[names[1]], rel=1e-6)
    for method in ("percentile", "mse", "entropy"):
        r = choose_ranges(h_onnx, method)
        assert all(0 < r[k].amax <= amax[k] * (1 + 1e-6) for k in r), method
    # the post-ReLU tensor never goes below zero: unsigned where the target allows it, signed otherwise
    unsigned = choose_ranges(h_onnx, "minmax", allow_unsigned=True)
    assert unsigned[names[1]].unsigned and not unsigned["x"].unsigned
    assert not any(r.unsigned for r in choose_ranges(h_onnx, "minmax").values())


def test_nan_in_calibration_data_names_the_tensor(two_linear):
    _, path = two_linear
    x = np.ones((2, 8), dtype=np.float32)
    x[0, 3] = np.nan
    with pytest.raises(DataError, match="tensor x has"):
        calibrate_onnx(path, [{"x": x}])


def test_calibrating_the_exported_bert(tiny_teacher, tmp_path):
    from nanoify.export.onnx import export

    export(tiny_teacher, tmp_path / "e", fuse_graph=False)
    rng = np.random.default_rng(1)
    feeds = [collate([list(rng.integers(5, 80, size=n)) for n in (4, 9, 13)], 0) for _ in range(3)]
    hists = calibrate_onnx(tmp_path / "e" / "model.onnx", feeds)
    # inputs of the weight GEMMs: q/k/v (one shared tensor), attention out, FFN in, FFN out per layer; pooler; head
    assert len(hists) == 4 * 4 + 2
    assert all(h.n > 0 for h in hists.values())
    r = choose_ranges(hists, "entropy")
    assert all(np.isfinite(v.amax) and v.amax > 0 for v in r.values())
