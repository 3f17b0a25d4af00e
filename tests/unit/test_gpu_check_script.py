"""benchmarks/gpu_check.sh runs once, on a lent GPU, with minutes counted: its nanoify command lines must still
parse whenever the CLI changes (options renamed, engine specs), and it must stay valid bash."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from nanoify.cli import build_parser
from nanoify.engines import parse_engine_spec

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def _branch(text: str, dev: str) -> dict[str, str]:
    """The variables the script sets for DEV=cpu (the dry run) or the GPU: NAME=value and NAME=(array)."""
    block = re.search(r'if \[ "\$DEV" = cpu \]; then\n(.*?)\nelse\n(.*?)\nfi', text, re.S)
    assert block, "the DEV branch"
    body = block.group(1 if dev == "cpu" else 2)
    out = {"DEV": dev}
    for name, arr, val in re.findall(r"(\w+)=(?:\(([^)]*)\)|(\S+))", body):
        out[name] = arr if arr or val == "" else val
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
    import os
    import sys
    import tarfile

    import torch

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
    nanoify's INT8/INT8-weight-only/FP8 layers, the streams) on a 2-layer BERT on the CPU — the matrix's own code
    can no longer break unseen before a GPU run. Its numbers mean nothing; the logits must still agree."""
    import json
    import os
    import sys

    script = SCRIPT.parent / "gpu_check.py"
    r = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--dry-run", "--skip-compile"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "gpu_matrix.json").read_text())
    rows = {x["name"]: x for x in rep["rows"]}
    assert not [x for x in rows.values() if "error" in x], rows
    assert {"eager FP32", "SDPA FP16 + CUDA graphs", "SDPA + CUDA graphs, INT8 linear layers",
            "SDPA + CUDA graphs, FP8 linear layers"} <= set(rows)
    assert all(x["cosine_vs_fp32"] >= 0.99 and x["b128_rows_s"] > 0 for x in rows.values())
    assert rep["streams"]["streams"] == 4 and rep["streams"]["rows_s"] > 0
    md = (tmp_path / "gpu_matrix.md").read_text()
    assert "DRY RUN" in md and "PARTIAL" not in md and "partial" not in rep  # the final write replaced the partial
    assert "Targets: " in md and "| SDPA + CUDA graphs, FP8 linear layers |" in md
