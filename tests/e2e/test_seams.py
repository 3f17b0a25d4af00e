"""The seams, proved from outside: a task kind nanoify does not ship — regression of a float target from a
feature vector, scored by R² — and a quantization target it does not ship — ONNX Runtime on one thread with
weight-only INT8 — are defined and registered in this file alone, and ``quantize`` and ``bench`` run on them with
no change under ``src/``: resolving the ONNX graph, calibrating, the target's candidates evaluated and timed on
the target's engine, choosing under the kind's budget, the target's files, bench's fresh processes."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nanoify.bench.run import benchmark, format_table
from nanoify.config import BenchConfig, QuantizeConfig, TimingConfig
from nanoify.engines import open_engine
from nanoify.quant.run import quantize
from nanoify.quant.schemes import StaticQDQ
from nanoify.quant.targets import Target, register_target, unregister_target
from nanoify.tasks import EvalSet, ModelRef, Task, TaskKind, make_task, register_task, unregister_task
from nanoify.tasks.resolve import resolve

NEAREST = ("nearest",)  # learned rounding, bias correction: own tests (numerical/), skip their cost
PLAIN = {"rounding": NEAREST, "bias_correction": False}  # nearest rounding, biases as they are

FAST = TimingConfig(latency_rows=8, throughput_rows=32, rounds=1)


class Regression(Task):
    """Rows are feature vectors (an .npz with ``x`` N×F and ``y`` N); predictions are one float per row."""

    name = "regression"
    agreement_key = "close_agreement"

    def _load(self, data: Any, n: int | None = None) -> EvalSet:
        with np.load(str(getattr(data, "data", data))) as z:
            x, y = z["x"].astype(np.float32), z["y"].astype(np.float32)
        n = len(x) if n is None else min(n, len(x))
        return EvalSet(x[:n], y[:n], str(data), "test")

    def eval_set(self, data: Any, split: str | None = None, limit: int | None = None) -> EvalSet:
        return self._load(data, limit)

    def calib_set(self, data: Any, n: int | None = None, seed: int = 0) -> EvalSet:
        return self._load(data, n or 64)

    def subset(self, es: EvalSet, idx: Sequence[int]) -> EvalSet:
        idx = list(idx)
        return EvalSet(es.rows[idx], None if es.labels is None else es.labels[idx], es.where, es.split)

    def batches(self, es: EvalSet, batch_size: int, sort: bool = False) -> Iterator[tuple[np.ndarray, dict]]:
        for start in range(0, len(es), batch_size):
            idx = np.arange(start, min(start + batch_size, len(es)))
            yield idx, {"features": es.rows[idx]}

    def start(self, es: EvalSet | None, n: int) -> np.ndarray:
        return np.zeros(n, np.float32)

    def add(self, state: np.ndarray, idx: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        state[idx] = outputs["value"][:, 0]

    def finish(self, state: np.ndarray) -> np.ndarray:
        return state

    def score(self, preds: np.ndarray, es: EvalSet) -> dict[str, Any]:
        y = es.labels
        return {"n": len(preds), "r2": float(1 - ((preds - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())}

    def agreement(self, reference: np.ndarray, preds: np.ndarray) -> dict[str, Any]:
        scale = float(np.abs(reference).mean()) or 1.0
        return {"close_agreement": float((np.abs(preds - reference) <= 0.05 * scale).mean())}

    def primary_metric(self, es: EvalSet) -> str:
        return "r2" if es.labelled else "close_agreement"


class RegressionKind(TaskKind):
    """Recognised by its one rank-2 float input named ``features``."""

    name = "regression"
    table_rows = (("r2", "R²", 4), ("close_agreement", "within 5% of baseline", 4))

    def recognise(self, inputs, outputs, tokenizer) -> bool:
        return list(inputs) == ["features"] and len(inputs["features"][1]) == 2

    def from_onnx(self, name, path, engine, inputs, outputs, tokenizer, preprocess, decoder) -> ModelRef:
        return ModelRef(name, path, engine, self, None, {"features": inputs["features"][1][1]})

    def make(self, ref: ModelRef) -> Regression:
        return Regression()

    def write_assets(self, ref: ModelRef, folder: Path) -> None:
        (folder / "regression.json").write_text(json.dumps(ref.preprocess))


class OneThreadTarget(Target):
    """ONNX Runtime on one thread (a serving box that pins one core per model), weight-only static INT8."""

    name = "ort-one-thread"
    model_file = "model.one-thread.onnx"
    opened: list[str] = []

    def candidates(self, methods, cnn, weight_bits, fused):
        return [StaticQDQ(m, "cpu", "weights", weight_bits) for m in methods]

    def engine(self, path, threads):
        self.opened.append(Path(path).name)
        return open_engine("onnxruntime", str(path), threads=1)

    def write(self, folder, chosen, ranges, src, ev):
        (folder / "deploy.json").write_text(json.dumps({"threads": 1, "scheme": chosen.name}))
        return {"deploy": {"threads": 1}}


@pytest.fixture
def one_thread_target():
    register_target(OneThreadTarget())
    OneThreadTarget.opened.clear()
    yield
    unregister_target(OneThreadTarget.name)


@pytest.fixture
def regression_kind():
    register_task(RegressionKind())
    yield
    unregister_task("regression")


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    """An MLP fitted in-process to y = sin(x·w) + 0.5·x₀, exported to ONNX; its data in an .npz."""
    d = tmp_path_factory.mktemp("reg")
    rng = np.random.default_rng(0)
    w = rng.normal(size=16).astype(np.float32) / 4
    x = rng.normal(size=(600, 16)).astype(np.float32)
    y = (np.sin(x @ w) + 0.5 * x[:, 0]).astype(np.float32)
    np.savez(d / "data.npz", x=x, y=y)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                  torch.nn.Linear(64, 1))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)[:, None]
        for _ in range(300):
            loss = torch.nn.functional.mse_loss(net(xt), yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    torch.onnx.export(net, (torch.zeros(1, 16),), str(d / "model.onnx"), input_names=["features"],
                      output_names=["value"], dynamic_axes={"features": {0: "batch"}, "value": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return d


def test_a_kind_registered_from_outside_runs_through_quantize_and_bench(tmp_path, regressor, regression_kind):
    ref = resolve(regressor / "model.onnx")  # told from its graph, no --task
    assert ref.task == "regression" and isinstance(make_task(ref), Regression)
    man = quantize(regressor / "model.onnx", tmp_path / "q", calib=str(regressor / "data.npz"), progress=False,
                   config=QuantizeConfig(**PLAIN, budget=2.0, timing=FAST, methods=("minmax",)))
    assert man["metric"] == "r2" and man["reference"]["r2"] > 0.9 and man["budget_met"]
    chosen = next(c for c in man["candidates"] if c["name"] == man["chosen"])
    assert chosen["r2"] >= man["reference"]["r2"] - 0.02 and "close_agreement" in chosen
    assert json.loads((tmp_path / "q" / "regression.json").read_text()) == {"features": 16}  # the kind's assets
    assert resolve(tmp_path / "q").task == "regression"
    # bench measures each model in a fresh process: the kind registered here must reach it
    rep = benchmark([str(regressor / "model.onnx"), str(tmp_path / "q")], str(regressor / "data.npz"),
                    progress=False, config=BenchConfig(timing=FAST))
    base, q = rep["models"]
    assert rep["task"] == "regression" and base["r2"] > 0.9 and q["close_agreement"] > 0.5
    assert "| R² |" in format_table(rep) and "| within 5% of baseline |" in format_table(rep)


def test_an_unregistered_kind_is_one_clear_line(regressor):
    with pytest.raises(Exception, match="cannot tell the task of .* pass --task"):
        resolve(regressor / "model.onnx")


def test_a_target_registered_from_outside_quantizes_on_its_own_engine(tmp_path, regressor, regression_kind,
                                                                      one_thread_target):
    man = quantize(regressor / "model.onnx", tmp_path / "q", calib=str(regressor / "data.npz"), progress=False,
                   config=QuantizeConfig(**PLAIN, budget=2.0, timing=FAST, methods=("minmax", "mse"),
                                         target="ort-one-thread"))
    names = [c["name"] for c in man["candidates"]]
    assert names[:2] == ["static-minmax", "static-mse"] and not any(n.startswith("dynamic") for n in names)
    assert man["model_file"] == "model.one-thread.onnx" and (tmp_path / "q" / "model.one-thread.onnx").is_file()
    assert man["deploy"] == {"threads": 1} and json.loads((tmp_path / "q" / "deploy.json").read_text())["scheme"] \
        == man["chosen"]
    # the reference and every candidate were evaluated (and timed: the target is timed) on the target's engine
    assert "model.onnx" in OneThreadTarget.opened and all(f"{n}.onnx" in OneThreadTarget.opened for n in names)
    assert all("latency_ms_p50" in c for c in man["candidates"])
    assert resolve(tmp_path / "q").path.name == "model.one-thread.onnx"
