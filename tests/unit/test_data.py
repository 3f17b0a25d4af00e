import json

import numpy as np
import pytest

from nanoify.config import DataConfig
from nanoify.data.text import LabelMap, collate, epoch_batches, load_text_data
from nanoify.errors import DataError
from tests.conftest import write_tsv


def test_tsv_csv_jsonl_and_column_detection(tmp_path):
    write_tsv(tmp_path / "tsv" / "train.tsv", [("a b", 1), ("c", 0)])
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "train.csv").write_text('text,label\n"a, b",pos\nc,neg\n')
    (tmp_path / "csv" / "dev.csv").write_text("text,label\nd,pos\n")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "train.jsonl").write_text("\n".join(json.dumps({"review": t, "y": y}) for t, y in
                                                          [("x", 2), ("y", 10)]) + "\n")
    d = load_text_data(DataConfig(data=str(tmp_path / "tsv")))
    assert d.split("train").texts == ["a b", "c"] and d.split("train").labels == ["1", "0"]
    d = load_text_data(DataConfig(data=str(tmp_path / "csv")))
    assert d.split("train").texts == ["a, b", "c"] and d.split("validation").texts == ["d"]
    assert LabelMap.from_values(d.split("train").labels).names == ["neg", "pos"]
    d = load_text_data(DataConfig(data=str(tmp_path / "j"), label_column="y"))
    assert LabelMap.from_values(d.split("train").labels).names == ["2", "10"]  # numeric order


def test_single_file_serves_every_split(tmp_path):
    f = write_tsv(tmp_path / "all.tsv", [("a", 0), ("b", 1)])
    d = load_text_data(DataConfig(data=str(f)))
    assert d.split("train").texts == d.split("validation").texts == ["a", "b"]


def test_max_train_is_a_seeded_subset(tmp_path):
    write_tsv(tmp_path / "train.tsv", [(f"t{i}", i % 2) for i in range(100)])
    a = load_text_data(DataConfig(data=str(tmp_path), max_train=10), seed=3).split("train").texts
    b = load_text_data(DataConfig(data=str(tmp_path), max_train=10), seed=3).split("train").texts
    c = load_text_data(DataConfig(data=str(tmp_path), max_train=10), seed=4).split("train").texts
    assert a == b and a != c and len(a) == 10


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("nocol", "cannot find a text column"),
    ("named", "no column 'body'"),
    ("empty", "is empty"),
    ("nosplit", "has none of the files"),
])
def test_bad_data_is_one_clear_error(tmp_path, case, match):
    cfg = DataConfig(data=str(tmp_path / "d"))
    if case == "nocol":
        write_tsv(tmp_path / "d" / "train.tsv", [("a", 0)], header="words\tlabel")
    elif case == "named":
        write_tsv(tmp_path / "d" / "train.tsv", [("a", 0)])
        cfg = DataConfig(data=str(tmp_path / "d"), text_column="body")
    elif case == "empty":
        write_tsv(tmp_path / "d" / "train.tsv", [])
    elif case == "nosplit":
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "other.tsv").write_text("x\n")
    with pytest.raises(DataError, match=match) as e:
        load_text_data(cfg)
    assert "\n" not in str(e.value)


def test_unknown_label_is_named():
    with pytest.raises(DataError, match="label 'maybe'"):
        LabelMap(["neg", "pos"]).encode(["pos", "maybe"], "validation")


def test_hf_spec_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot load Hugging Face dataset"):
        load_text_data(DataConfig(data="hf:nanoify-no-such/dataset"))


def test_epoch_batches_are_deterministic_and_cover_every_row():
    lengths = list(np.random.default_rng(0).integers(1, 50, size=103))
    a = epoch_batches(lengths, 8, seed=1, epoch=0)
    assert a == epoch_batches(lengths, 8, seed=1, epoch=0)
    assert a != epoch_batches(lengths, 8, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(103))


def test_collate_pads_and_masks():
    out = collate([[5, 6, 7], [8]], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["token_type_ids"].sum() == 0
