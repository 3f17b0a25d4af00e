"""ONNX export: dynamic axes, parity with PyTorch, fusion, engines, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from nanoify.cli import main
from nanoify.data.text import collate
from nanoify.engines import open_engine
from nanoify.errors import DataError, ModelError
from nanoify.export.onnx import export


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_teacher):
    out = tmp_path_factory.mktemp("onnx") / "exp"
    man = export(tiny_teacher, out, texts=["good w1 w2", "bad w3 w4 w5", "w9"])
    return out, man


def test_export_is_dynamic_fused_and_matches_pytorch(exported):
    out, man = exported
    assert max(man["validation"]["max_abs_logit_diff"].values()) <= 1e-4
    g = onnx.load(out / "model.onnx").graph
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in g.input}
    assert dims["input_ids"] == ["batch", "sequence"] and dims["attention_mask"] == ["batch", "sequence"]
    fused = [n.op_type for n in onnx.load(out / "model.fused.onnx").graph.node]
    assert fused.count("Attention") == 4 and "SkipLayerNormalization" in fused
    assert man["fused_ops"]["Attention"] == 4 and man["warnings"] == []
    assert (out / "hf" / "label_map.json").is_file() and (out / "manifest.json").is_file()


def test_torch_and_onnxruntime_engines_agree(exported, tiny_teacher):
    out, _ = exported
    rng = np.random.default_rng(0)
    feeds = [collate([list(rng.integers(5, 80, size=n)) for n in lens], 0) for lens in ([3], [5, 17, 9], [30, 2])]
    with open_engine("torch", str(tiny_teacher)) as pt, open_engine("onnxruntime", str(out / "model.fused.onnx")) as o:
        for f in feeds:
            np.testing.assert_allclose(pt.infer(f)["logits"], o.infer(f)["logits"], atol=1e-4)
        with pytest.raises(Exception, match="needs input"):
            o.infer({"input_ids": feeds[0]["input_ids"]})
        too_long = collate([list(rng.integers(5, 80, size=65))], 0)  # the tiny model has 64 positions
        with pytest.raises(DataError, match="longer than the model allows"):
            pt.infer(too_long)
    with open_engine("onnxruntime", str(out / "model.fused.onnx"), max_dims={"sequence": 64}) as o, \
            pytest.raises(DataError, match="truncate the inputs to 64 tokens"):
        o.infer(too_long)


def test_corrupt_onnx_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"), open_engine("onnxruntime", str(bad)):
        pass


def test_cli_export_and_errors(tmp_path, tiny_teacher, tiny_data, capsys):
    out = tmp_path / "x"
    assert main(["export", str(tiny_teacher), "--out", str(out), "--data", str(tiny_data), "--no-fuse"]) == 0
    assert "max |output - PyTorch|" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["config"]["fused"] is False
    assert main(["export", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nanoify: error:") and "\n" not in err
    assert (out / "model.onnx").is_file()  # the earlier export is intact


def _perturbed_copy(src, dst):
    """The same graph with the classifier's bias shifted by 0.01: a disagreement the validation must catch."""
    from onnx import numpy_helper

    m = onnx.load(src)
    for init in m.graph.initializer:
        if "classifier" in init.name and "bias" in init.name:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(0.01), init.name))
            break
    else:
        raise AssertionError("no classifier bias found")
    onnx.save(m, dst)


def test_validation_catches_a_disagreeing_graph(exported, tiny_teacher, tmp_path, monkeypatch):
    from nanoify.export import onnx as onnx_export
    from nanoify.export.onnx import ExportError, validate, validation_feeds
    from nanoify.models.load import load_classifier

    out, _ = exported
    model, tok, _ = load_classifier(str(tiny_teacher))
    feeds = validation_feeds(model, tok, ["good w1", "bad w2 w3"])
    assert validate(model, out / "model.onnx", feeds) <= 1e-4
    _perturbed_copy(out / "model.onnx", tmp_path / "bad.onnx")
    with pytest.raises(ExportError, match="bad.onnx disagrees with PyTorch"):
        validate(model, tmp_path / "bad.onnx", feeds)
    real_fuse = onnx_export.fuse

    def broken_fuse(path, dst, *a, **k):  # the fusion step writes a graph that no longer matches
        stats = real_fuse(path, dst, *a, **k)
        _perturbed_copy(dst, dst)
        return stats

    monkeypatch.setattr(onnx_export, "fuse", broken_fuse)
    with pytest.raises(ExportError, match="model.fused.onnx disagrees"):
        onnx_export.export(tiny_teacher, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_unfused_attention_names_an_old_onnxruntime_as_the_cause():
    """transformers 5 + onnxruntime < 1.32 fuse no attention (measured with 1.30): the warning says to upgrade;
    with a current onnxruntime it names the pattern instead."""
    from nanoify.export.onnx import _unfused_reason

    assert "upgrade to onnxruntime>=1.32" in _unfused_reason("5.17.0", "1.30.0")
    assert "not recognised" in _unfused_reason("5.17.0", "1.32.0")
    assert "not recognised" in _unfused_reason("4.46.3", "1.20.1")
