"""Pack what the GPU check needs beyond the repository into ``.gpu_carry/`` (ignored by git), within the 64 MiB a
device run can bring (working tree included): the SST-2 MiniLM teacher in FP16 safetensors (~45 MB) and SST-2
text (8,000 seeded training rows and the 872 validation rows); the pretrained ResNet-20 exported by nanoify (torch
folder + ONNX) with 1,000 seeded CIFAR-10 test images; FastestDet (ONNX, with the preprocessing and decoder of
benchmarks/detect_coco128.py) with COCO128's 128 validation images shrunk to at most 416 pixels a side (JPEG
quality 92; labels are normalised, so they hold) — FastestDet's input is 352×352, so the shrink changes little,
but the GPU table's mAP is on these files: the packer prints ONNX Runtime's CPU mAP on them as the reference; and
the wheels of the packages the GPU image lacks (KINDS.md's package list): torchao (3.4 MB, the matrix's comparison
rows) and pycocotools (0.4 MB, the detector's mAP) — both abi3 wheels for the image's Python 3.12.

Run here, before a GPU session: `.venv/bin/python benchmarks/gpu_pack.py [--teacher DIR]` (default: the teacher of
`make bench-distill`, .cache/bench/full/teacher_sst2). Then on the GPU machine, with `.gpu_carry` carried:
`bash benchmarks/gpu_check.sh` also measures `quantize --target cuda` accuracy on SST-2, a distillation epoch
on the GPU, and the CNN and detector through the torch engine on CUDA. nanoify loads the FP16 weights back as
float32.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _vision(out: Path, shared: Path, n_images: int) -> None:
    import json

    import numpy as np
    from PIL import Image

    import nanoify
    from nanoify.models.load import build_module, load_weights

    cifar = shared / "data" / "vision" / "cifar10" / "test.npz"
    z = np.load(cifar)
    idx = np.sort(np.random.default_rng(0).choice(len(z["labels"]), size=n_images, replace=False))
    (out / "cifar10").mkdir(parents=True)
    np.savez_compressed(out / "cifar10" / "test.npz", images=z["images"][idx], labels=z["labels"][idx],
                        classes=z["classes"])
    module = load_weights(build_module("nanoify.models.vision:resnet20"),
                          shared / "models" / "resnet_cifar10" / "resnet20.safetensors")
    nanoify.export(module, out / "resnet20", example_input=np.zeros((1, 3, 32, 32), np.float32),
                   preprocess={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                   labels=[str(c) for c in z["classes"]], factory="nanoify.models.vision:resnet20")
    det = out / "fastestdet"
    det.mkdir()
    shutil.copyfile(shared / "models" / "fastestdet" / "FastestDet.onnx", det / "model.onnx")
    coco = shared / "data" / "vision" / "coco128"
    (det / "preprocess.json").write_text(json.dumps({"size": [352, 352], "resize": "stretch",
                                                     "interpolation": "area", "channels": "bgr"}))
    names = [n for n in (coco / "names.txt").read_text().splitlines() if n.strip()]
    (det / "label_map.json").write_text(json.dumps({"names": names}))
    (det / "detection.json").write_text(json.dumps({"decoder": "fastestdet"}))
    dst = out / "coco128"
    (dst / "images" / "val2017").mkdir(parents=True)
    shutil.copytree(coco / "labels" / "val2017", dst / "labels" / "val2017")
    shutil.copy(coco / "names.txt", dst / "names.txt")
    for f in sorted((coco / "images" / "val2017").glob("*.jpg")):
        im = Image.open(f).convert("RGB")
        im.thumbnail((416, 416), Image.Resampling.LANCZOS)
        im.save(dst / "images" / "val2017" / f.name, quality=92)
    from nanoify.bench.run import measure_model

    res, _ = measure_model(str(det / "model.onnx"), str(dst), engine="onnxruntime")
    ref, _ = measure_model(str(det / "model.onnx"), str(coco), engine="onnxruntime")
    print(f"FastestDet on the carried COCO128 val images: mAP@0.5:0.95 {res['map50_95']:.4f} (the originals: "
          f"{ref['map50_95']:.4f}), mAP@0.5 {res['map50']:.4f} ({ref['map50']:.4f}) — ONNX Runtime, CPU")


def _download_wheels(dest: Path, specs: list[str], python_version: str | None) -> None:
    """Binary wheels of ``specs`` into ``dest``: for ``python_version`` on x86-64 Linux (the GPU image), or for
    this interpreter when None."""
    import subprocess

    if not specs:
        return
    target = [] if python_version is None else [
        "--python-version", python_version, "--implementation", "cp",
        *[x for p in ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                      "manylinux2014_x86_64") for x in ("--platform", p)]]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *target,
                    "-d", str(dest), *specs], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=str(ROOT / ".cache" / "bench" / "full" / "teacher_sst2"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "text" / "sst2"))
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--out", default=str(ROOT / ".gpu_carry"))
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--images", type=int, default=1000, help="CIFAR-10 test images to carry")
    ap.add_argument("--wheels", nargs="*", default=["torchao==0.18.0", "pycocotools==2.0.11"],
                    help="packages the GPU image lacks, as wheels (gpu_check.sh installs each it cannot import)")
    ap.add_argument("--python-version", default="3.12", help="the GPU image's Python (wheels are fetched for it)")
    ap.add_argument("--wheels-only", metavar="DIR",
                    help="only fetch the --wheels, for this interpreter, into DIR (make gpu-dry-run's)")
    a = ap.parse_args()
    if a.wheels_only:
        _download_wheels(Path(a.wheels_only), a.wheels, None)
        return 0
    for what, path, fix in (("teacher", a.teacher, "run `make bench-distill` (it fine-tunes one) or pass --teacher"),
                            ("SST-2", a.data, "pass --data"), ("shared data", a.shared, "pass --shared")):
        if not Path(path).is_dir():
            print(f"gpu_pack: no {what} at {path}: {fix}", file=sys.stderr)
            return 2
    from nanoify.artifacts import atomic_dir
    from nanoify.models.load import load_classifier, save_classifier

    with atomic_dir(a.out) as out:  # an earlier pack stays until this one is complete (and small enough)
        model, tok, lm = load_classifier(a.teacher)
        save_classifier(model.half(), tok, lm, out / "teacher")
        data = Path(a.data)
        (out / "sst2").mkdir(parents=True)
        lines = (data / "train.tsv").read_text().splitlines()
        rows = lines[1:]
        random.Random(0).shuffle(rows)
        (out / "sst2" / "train.tsv").write_text("\n".join([lines[0], *rows[: a.rows]]) + "\n")
        shutil.copy(data / "validation.tsv", out / "sst2" / "validation.tsv")
        _vision(out, Path(a.shared), a.images)
        _download_wheels(out / "wheels", a.wheels, a.python_version)  # gpu_check.sh installs what the image lacks
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        if size >= 62:  # 64 MiB travel in all, the working tree (~1 MiB) included
            print(f"gpu_pack: {size:.1f} MiB is too much to carry (62 at most): pass fewer --rows or --images",
                  file=sys.stderr)
            raise SystemExit(1)
    print(f"packed {a.out} ({size:.1f} MiB): teacher in FP16, {a.rows} training rows, the validation split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
