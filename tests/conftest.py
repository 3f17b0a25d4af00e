"""Tiny in-process models and data: a WordPiece vocabulary of ~100 tokens, BERTs of hidden 32."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

# Tiny models run fastest on one thread, and a second thread only fights a busy machine.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SST2 = SHARED / "data" / "text" / "sst2"

POS = ["good", "great", "fine", "superb", "lovely", "nice", "happy", "best"]
NEG = ["bad", "awful", "poor", "boring", "ugly", "sad", "worst", "dull"]
FILL = [f"w{i}" for i in range(60)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Sentences whose label is the majority of positive vs negative words (a learnable task)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILL, rng.randint(2, 10))
        k = rng.randint(1, 3)
        words += rng.sample(POS if label else NEG, k)
        if rng.random() < 0.5:
            words += rng.sample(NEG if label else POS, k - 1) if k > 1 else []
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, object]], header: str = "sentence\tlabel") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    return path


def make_encoder(folder: Path, hidden: int = 32, layers: int = 4, heads: int = 4, seed: int = 0,
                 vocab_extra: list[str] | None = None) -> Path:
    """A randomly initialised tiny BERT encoder with its own WordPiece tokenizer, saved to ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + POS + NEG + FILL + (vocab_extra or [])
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=hidden * 2, max_position_embeddings=64, hidden_dropout_prob=0.1,
                     attention_probs_dropout_prob=0.1)
    BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the tests' teacher-logit cache away from the user's."""
    import os

    os.environ["NANOIFY_CACHE"] = str(tmp_path_factory.mktemp("nanoify_cache"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_tsv(d / "train.tsv", make_rows(640, 1))
    write_tsv(d / "validation.tsv", make_rows(200, 2))
    return d


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return make_encoder(tmp_path_factory.mktemp("enc") / "encoder")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_encoder, tiny_data) -> Path:
    """The tiny encoder fine-tuned on the tiny task (well above chance)."""
    from nanoify.config import DataConfig, FinetuneConfig, TrainConfig
    from nanoify.distill.run import finetune

    out = tmp_path_factory.mktemp("teacher") / "teacher"
    cfg = FinetuneConfig(model=str(tiny_encoder), data=DataConfig(data=str(tiny_data), max_length=32),
                         train=TrainConfig(epochs=4, batch_size=32, lr=3e-3, warmup_ratio=0.1))
    man = finetune(cfg, out, progress=False)
    assert man["metrics"]["validation"]["accuracy"] > 0.8, man["metrics"]
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_teacher) -> Path:
    """The tiny teacher exported to ONNX (plain + fused graphs, tokenizer in hf/)."""
    from nanoify.export.onnx import export

    out = tmp_path_factory.mktemp("export") / "exp"
    export(tiny_teacher, out)
    return out
