"""benchmarks/gpu_check.sh runs once, on a lent GPU, with minutes counted: its nanoify command lines must still
parse whenever the CLI changes (options renamed, engine specs), and it must stay valid bash."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from nanoify.cli import build_parser
from nanoify.engines import parse_engine_spec
from nanoify.models.quantized import quantizable_linears, quantize_model

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
TORCHAO_SITE = Path(sys.prefix) / "torchao-site"  # the Makefile installs torchao beside the venv, not in it


def _branch(text: str, dev: str) -> dict[str, str]:
    """The variables the script sets for DEV=cpu (the dry run) or the GPU: NAME=value and NAME=(array)."""
    block = re.search(r'if \[ "\$DEV" = cpu \]; then\n(.*?)\nelse\n(.*?)\nfi', text, re.S)
    assert block, "the DEV branch"
    body = block.group(1 if dev == "cpu" else 2)
    out = {"DEV": dev}
    for name, arr, val in re.findall(r"(\w+)=(?:\(([^)]*)\)|(\S+))", body):
        out[name] = arr if arr or val == "" else val
    for name, val in out.items():  # variables set from others in the branch ($HALF)
        out[name] = re.sub(r"\$(\w+)", lambda m: out.get(m.group(1), m.group(0)), val)
    return out


def _commands(dev: str) -> list[list[str]]:
    text = SCRIPT.read_text()
    var = _branch(text, dev)
    bench = re.search(r"BENCH=\((.*?)\)", text)
    assert bench, "the BENCH array"
    var["BENCH"] = bench.group(1).replace('"${SMALL[@]}"', var.get("SMALL", ""))
    joined = re.sub(r"\\\n\s*", " ", text)  # continuation lines
    out = []
    for line in joined.splitlines():
        if "-m nanoify.cli" not in line:
            continue
        args = line.split("-m nanoify.cli", 1)[1].split(">", 1)[0].replace('"$WORK', '"/tmp/w')
        args = re.sub(r'"\$\{(\w+)\[@\]\}"', lambda m: var[m.group(1)], args)
        args = re.sub(r'"\$(\w+)"', lambda m: var[m.group(1)], args)
        out.append(shlex.split(args))
    return out


@pytest.mark.parametrize("dev", ["cuda", "cpu"])
def test_every_nanoify_command_in_the_gpu_check_parses(dev):
    """On the GPU, and in the dry run (DEV=cpu) that runs the same steps on a CPU."""
    cmds = _commands(dev)
    assert [c[0] for c in cmds] == ["quantize", "bench", "bench", "distill"]
    parser = build_parser()
    for argv in cmds:
        a = parser.parse_args(argv)
        if argv[0] == "bench":
            specs = a.engine.split(",")
            assert len(specs) == len(a.models), argv  # one engine per model
            for spec in specs:
                parse_engine_spec(spec)
            assert a.streams == 4
            assert all(parse_engine_spec(x)[1].get("device", "cpu").startswith(dev) for x in specs if "torch" in x)
        else:
            assert a.device == dev


def test_the_script_is_valid_bash_and_skips_cleanly_without_a_gpu(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run for minutes (run it as benchmarks/gpu_check.sh)")
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(SCRIPT)], cwd=SCRIPT.parents[1], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"), "PYTHON": sys.executable})
    assert r.returncode == 0, r.stderr[-2000:]
    env = (out / "env.txt").read_text()
    assert "tests_gpu exit 0" in env and "matrix exit 0" in env and "done in" in env, env
    assert "no CUDA GPU" in (out / "gpu_matrix.md").read_text()
    with tarfile.open(out / "gpu_check.tgz") as t:  # what a device run brings back
        assert {"./env.txt", "./gpu_matrix.json", "./tests_gpu.log"} <= set(t.getnames())
    assert len(list(out.iterdir())) <= 8


def test_the_matrix_dry_run_measures_every_row_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py --dry-run: every row of the GPU matrix (FP32/FP16/SDPA, the padded-bucket runner,
    nanoify's INT8/INT8-weight-only/FP8 layers, the streams, and — torchao on the path — the torchao rows in a child
    process each) on a 2-layer BERT on the CPU — the matrix's own code can no longer break unseen before a GPU run.
    Its numbers mean nothing; every row must still pass the [CLS] check against FP32."""
    script = SCRIPT.parent / "gpu_check.py"
    env = {**os.environ, "PYTHONPATH": str(TORCHAO_SITE) if TORCHAO_SITE.is_dir() else ""}
    r = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--dry-run", "--skip-compile"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "gpu_matrix.json").read_text())
    rows = {x["name"]: x for x in rep["rows"]}
    assert not [x for x in rows.values() if "error" in x or "skipped" in x], rows
    assert {"eager FP32", "SDPA FP16 + CUDA graphs", "SDPA + CUDA graphs, INT8 linear layers",
            "SDPA BF16 + CUDA graphs, FP8 linear layers"} <= set(rows)
    assert all(x["check_ok"] and x["cosine_vs_fp32"] >= 0.99 and x["b128_rows_s"] > 0 for x in rows.values())
    names = [x["name"] for x in rep["rows"]]
    assert names.index("SDPA + CUDA graphs, INT8 linear layers") < names.index("eager FP32")  # targets first
    if TORCHAO_SITE.is_dir():  # its rows ran in processes of their own, after every row of this one
        ao = [x for x in rep["rows"] if "torchao" in x["name"]]
        assert len(ao) == 2 and all(x["isolated"] for x in ao) and rep["rows"][-len(ao):] == ao
    assert rep["streams"]["streams"] == 4 and rep["streams"]["rows_s"] > 0
    md = (tmp_path / "gpu_matrix.md").read_text()
    assert "DRY RUN" in md and "PARTIAL" not in md and "partial" not in rep  # the final write replaced the partial
    assert "Targets: " in md and "| SDPA BF16 + CUDA graphs, FP8 linear layers | main |" in md


def _matrix_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check_matrix", SCRIPT.parent / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "DEV", "cpu")
    monkeypatch.setattr(mod, "SEQ", 16)
    monkeypatch.setattr(mod, "BIG", 32)
    return mod


def test_the_matrix_check_fails_on_a_planted_wrong_layer_and_passes_the_formats(monkeypatch, tmp_path):
    """Issue 23: with random weights every row's logits are nearly the same, so a GEMM with its outputs permuted
    kept logits cosine 0.99. The matrix's check — the [CLS] hidden state's error relative to its spread over the
    rows — rejects one such layer at either end of the encoder and passes nanoify's INT8."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # torch sets it on the BERT-base forward
    mod = _matrix_module(monkeypatch)
    feeds, ref, fp32 = mod._setup(small=False)  # the matrix's own BERT-base shape (sequence 16, 32 rows here)
    good = copy.deepcopy(fp32)
    quantize_model(good, "int8", quantizable_linears(good))
    assert mod.check_error(mod.eager(good)(feeds["big"]), ref["big"]) <= mod.CHECK_MAX
    g = torch.Generator().manual_seed(0)
    for name in ("bert.encoder.layer.0.attention.self.value", "bert.encoder.layer.11.output.dense"):
        bad = copy.deepcopy(fp32)
        lin = bad.get_submodule(name)
        perm = torch.randperm(lin.out_features, generator=g)
        lin.weight.data, lin.bias.data = lin.weight.data[perm], lin.bias.data[perm]
        assert mod.check_error(mod.eager(bad)(feeds["big"]), ref["big"]) > mod.CHECK_MAX, name


def _plan(text: str) -> tuple[list[tuple[str, int]], int, int]:
    """The header's time plan: (step, cap) rows in order, its startup row and its sum."""
    rows = re.findall(r"^#   (\(startup\)|\w+)\s+(\d+)\s", text, re.M)
    plan = [(n, int(c)) for n, c in rows if n not in ("(startup)", "sum")]
    startup = next(int(c) for n, c in rows if n == "(startup)")
    total = next(int(c) for n, c in rows if n == "sum")
    return plan, startup, total


def test_the_gpu_checks_time_plan_adds_up(monkeypatch):
    """Issue 23: the step caps once added to 640 s against a 480 s deadline, so the last steps would have been
    skipped. The header's plan is the script's (same steps, same caps, same order), its caps and startup add up to
    at most DEADLINE with 120 s of the device call's 600 s to spare, the matrix's --budget sits inside its step's
    cap, and with the matrix's own rows at their worst case its budget still runs the torchao comparison row."""
    text = SCRIPT.read_text()
    plan, startup, total = _plan(text)
    steps = [(n, int(c)) for n, c in re.findall(r"^\s*step (\w+) (\d+) ", text, re.M)]
    assert steps == plan
    deadline = int(_branch(text, "cuda")["DEADLINE"].split(":-")[1].rstrip("}"))
    assert total == startup + sum(c for _, c in plan) <= deadline <= 600 - 120
    budget = float(re.search(r"--budget \$\(\( (\d+) \* CAP_SCALE \)\)", text).group(1))
    assert budget + 5 <= dict(plan)["matrix"]
    mod = _matrix_module(monkeypatch)
    sure, spent = mod.worst_case_plan(list(mod.ISOLATED), mod.PARENT_WORST, budget)
    assert "torchao-int8" in sure and spent <= budget
    assert not mod.fits(budget - 10, 30.0, budget) and mod.fits(budget - 30, 30.0, budget)
    assert mod.ISOLATED[0][0] == "torchao-int8"  # the comparison the b128 target needs comes first
