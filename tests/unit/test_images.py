"""Image data and preprocessing: the preprocess.json contract, resizing any input size, data layouts, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nanoify.data.images import Preprocess, image_splits, is_image_data, load_images
from nanoify.data.splits import pick_split, split_of
from nanoify.errors import DataError


def test_preprocess_defaults_and_the_exact_key_contract(tmp_path):
    p = Preprocess.from_dict({"size": [32, 32]})
    assert (p.resize, p.pad, p.interpolation, p.channels, p.layout) == ("stretch", 114, "bilinear", "rgb", "nchw")
    assert p.scale == pytest.approx(1 / 255) and p.mean == (0, 0, 0) and p.std == (1, 1, 1)
    f = tmp_path / "preprocess.json"
    f.write_text(json.dumps({"size": [8, 8], "means": [0, 0, 0]}))
    with pytest.raises(DataError, match="unknown key.*means") as e:
        Preprocess.load(f)
    assert "\n" not in str(e.value)
    for bad, match in (({"resize": "crop"}, "resize 'crop'"), ({"std": [1, 0, 1]}, "std must not be 0"),
                       ({"size": [8]}, "size must be"), ({"layout": "chw"}, "layout")):
        with pytest.raises(DataError, match=match):
            Preprocess.from_dict(bad)
    assert Preprocess.from_dict(p.to_dict()) == p


def test_normalisation_channels_and_layout():
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 102, 51  # red 255, green 102, blue 51
    # unequal per-channel mean and std: each channel must get its own (a reversed order would show)
    mean, std = [0.1, 0.4, 0.7], [0.2, 0.25, 0.5]
    p = Preprocess.from_dict({"size": [2, 3], "mean": mean, "std": std})
    x = p([img])
    assert x.shape == (1, 3, 2, 3) and x.dtype == np.float32
    for c, v in enumerate((255, 102, 51)):
        np.testing.assert_allclose(x[0, c], (v / 255 - mean[c]) / std[c], atol=1e-5)
    # bgr: channels reordered first; mean and std are in the model's (BGR) order
    bgr = Preprocess.from_dict({"size": [2, 3], "channels": "bgr", "layout": "nhwc", "mean": mean, "std": std})
    y = bgr([img])
    assert y.shape == (1, 2, 3, 3)
    for c, v in enumerate((51, 102, 255)):
        np.testing.assert_allclose(y[0, ..., c], (v / 255 - mean[c]) / std[c], atol=1e-5)
    raw = Preprocess.from_dict({"size": [2, 3], "channels": "bgr", "layout": "nhwc", "scale": 1.0})([img])
    assert raw[0, 0, 0, 0] == 51 and raw[0, 0, 0, 2] == 255


@pytest.mark.parametrize("shape", [(641, 641), (1280, 720), (2160, 3840), (31, 17)])
def test_any_input_size_becomes_the_model_size(shape):
    h, w = shape
    img = np.random.default_rng(0).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    for mode in ("stretch", "letterbox", "center-crop"):
        p = Preprocess.from_dict({"size": [64, 48], "resize": mode})
        out, info = p.resize_one(img)
        assert out.shape == (64, 48, 3), mode
        if mode == "letterbox":  # scaled to fit, padded with 114 where the image does not reach
            r = min(64 / h, 48 / w)  # the content is resized to round(h·r) × round(w·r): those are the scales
            assert info["scale_x"] == pytest.approx(round(w * r) / w)
            assert info["scale_y"] == pytest.approx(round(h * r) / h)
            assert abs(info["scale_x"] - r) <= 0.5 / w and abs(info["scale_y"] - r) <= 0.5 / h
            if round(h * r) < 64:
                assert (out[0] == 114).all()
        assert p([img]).shape == (1, 3, 64, 48)


def _write_png(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), color, dtype=np.uint8)).save(path)


def test_layouts_npz_split_rule_class_folders_and_unlabelled(tmp_path):
    x = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "cifar").mkdir()
    np.savez(tmp_path / "cifar" / "train_1000.npz", images=x, labels=np.arange(4),
             classes=np.array(["a", "b", "c", "d"]))
    np.savez(tmp_path / "cifar" / "test.npz", images=x[:2], labels=np.arange(2))
    splits = image_splits(str(tmp_path / "cifar"))
    assert set(splits) == {"train", "test"}
    assert pick_split(set(splits), None, "eval", "x") == "test"
    assert pick_split(set(splits), None, "calib", "x") == "train"
    assert len(load_images(str(tmp_path / "cifar"), "train").source) == 4
    assert load_images(str(tmp_path / "cifar"), "train").classes == ["a", "b", "c", "d"]
    for cls, color in (("cat", 10), ("dog", 200)):
        for i in range(2):
            _write_png(tmp_path / "tree" / "val" / cls / f"{i}.png", color)
    sp = load_images(str(tmp_path / "tree"), "validation")
    assert sp.labels == ["cat", "cat", "dog", "dog"] and sp.classes == ["cat", "dog"]
    assert sp.source.load([3])[0].shape == (10, 12, 3)
    for i in range(3):
        _write_png(tmp_path / "photos" / f"p{i}.jpg", 90)
    un = load_images(str(tmp_path / "photos"), "validation")
    assert un.labels is None and len(un.source) == 3 and image_splits(str(tmp_path / "photos")) is None
    assert is_image_data(str(tmp_path / "photos")) and is_image_data(str(tmp_path / "cifar" / "test.npz"))
    assert not is_image_data(str(tmp_path / "nothing"))
    assert split_of("val2017") == "validation" and split_of("train2017") == "train" and split_of("dev.tsv")


def test_bad_image_data_is_one_clear_line(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"not an image")
    sp = load_images(str(tmp_path / "bad"), "validation")
    with pytest.raises(DataError, match="broken.jpg does not decode") as e:
        sp.source.load([0])
    assert "\n" not in str(e.value)
    np.savez(tmp_path / "x.npz", pictures=np.zeros((1, 2, 2, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="no 'images' array"):
        load_images(str(tmp_path / "x.npz"), "train")
    np.savez(tmp_path / "y.npz", images=np.zeros((1, 2, 2, 3), dtype=np.float32))
    with pytest.raises(DataError, match="must be N×H×W×3 uint8"):
        load_images(str(tmp_path / "y.npz"), "train")
    with pytest.raises(DataError, match="does not exist"):
        load_images(str(tmp_path / "missing"), "train")


def test_public_verbs_stay_callable_after_their_subpackages_are_imported():
    import nanoify
    import nanoify.distill.run  # noqa: F401
    import nanoify.export.onnx  # noqa: F401

    assert callable(nanoify.export) and callable(nanoify.distill)
    for name in ("quantize", "benchmark", "compress", "finetune", "evaluate"):
        assert callable(getattr(nanoify, name)), name
