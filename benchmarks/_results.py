"""What every benchmark script writes the same way: the machine line and the append to RESULTS.md."""

from __future__ import annotations

import inspect
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import nanoify  # noqa: E402
from nanoify.artifacts import machine, read_manifest, versions  # noqa: E402
from nanoify.config import to_dict  # noqa: E402
from nanoify.distill.run import distill  # noqa: E402
from nanoify.models.load import build_module, load_weights  # noqa: E402


def machine_line() -> str:
    """``Machine: CPU, N cores, flags …. Versions: …`` — recorded beside every number."""
    m = machine()
    return (f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m.get('cpu_flags', [])) or 'unknown'}. "
            "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))


def append(path: str | Path, text: str, headline: str | None = None) -> None:
    """Print a results section, append it to ``path``'s history, and point the current table's row of the calling
    script at it (date and machine; ``headline``, the one-line result, where the script gives one — else the row
    says to read the new section)."""
    print(text)
    with open(path, "a") as f:
        f.write(text.rstrip("\n") + "\n")
    script = Path(inspect.stack()[1].filename).name
    update_current(Path(path), script, headline)


def update_current(path: Path, script: str, headline: str | None = None) -> None:
    """Rewrite the current-table row whose command names ``script`` (a new row when there is none)."""
    text = path.read_text()
    begin, end = text.find("<!-- current:begin"), text.find("<!-- current:end -->")
    if begin < 0 or end < 0:
        return
    lines = text[begin:end].split("\n")
    m = machine()
    flags = " ".join(f for f in m.get("cpu_flags", []) if "vnni" in f or "amx" in f or f in ("avx2", "avx512f"))
    row = [f"`benchmarks/{script}`", headline or "new run: see its section below", time.strftime("%Y-%m-%d %H:%M"),
           f"{m['cpu']}, {m['cores']} cores, {flags or 'no AVX2'}"]
    hit = next((i for i, line in enumerate(lines) if f"`benchmarks/{script}`" in line), None)
    if hit is None:
        lines.insert(len(lines) - 1 if lines[-1] == "" else len(lines), "| " + " | ".join(row) + " |")
    else:
        cells = [c.strip() for c in lines[hit].strip("|").split("|")]
        lines[hit] = "| " + " | ".join([cells[0], *row[1:]]) + " |"
    path.write_text(text[:begin] + "\n".join(lines) + text[end:])


# Config fields added after runs were cached, with the value that reproduces the behaviour from before they
# existed: a stored config without them still matches a config that has them at exactly that value
# ("train.device": the field device of the nested train config).
ADDED_FIELDS = {"augment_mlm": None, "train.device": "cpu", "train.precision": "fp32"}


def _backfill(stored: dict, want: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in stored.items()}
    for path, value in ADDED_FIELDS.items():
        *heads, last = path.split(".")
        s, w = out, want
        for h in heads:
            if not isinstance(s.get(h), dict) or not isinstance(w.get(h), dict):
                break
            s, w = s[h], w[h]
        else:
            if last in w and last not in s:
                s[last] = value
    return out


def cached(out: Path, cfg: object) -> bool:
    """A finished run with exactly this config is already in ``out`` (benchmarks reuse it)."""
    man = read_manifest(out)
    if not man or "config" not in man:
        return False
    want = to_dict(cfg)
    return _backfill(man["config"], want) == want


def distil_all(runs: dict, cache: Path) -> dict[str, Path]:
    """Distil every named config into ``cache/student{i}`` (resuming a killed run) unless a finished run with the
    same config is there; the folders by name."""
    folders = {}
    for i, (name, cfg) in enumerate(runs.items()):
        out = cache / f"student{i}"
        if not cached(out, cfg):
            logging.info("distilling %s", name)
            distill(cfg, out, resume=True, progress=False)
        folders[name] = out
    return folders


# The shared ResNet-20/CIFAR-10 files (../shared, DATA.md) and its export, as the CIFAR benchmarks use them
SHARED = ROOT.parent / "shared"
CIFAR = SHARED / "data" / "vision" / "cifar10"
RESNET20_WEIGHTS = SHARED / "models" / "resnet_cifar10" / "resnet20.safetensors"
CIFAR_PRE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def export_resnet20(dst: Path) -> Path:
    """The pretrained ResNet-20 exported by ``nanoify export`` to ``dst`` (preprocessing and CIFAR-10 labels
    beside it)."""
    classes = [str(c) for c in np.load(CIFAR / "test.npz")["classes"]]
    module = load_weights(build_module("nanoify.models.vision:resnet20"), RESNET20_WEIGHTS)
    nanoify.export(module, dst, example_input=np.zeros((1, 3, 32, 32), np.float32), preprocess=CIFAR_PRE,
                   labels=classes, factory="nanoify.models.vision:resnet20")
    return dst
