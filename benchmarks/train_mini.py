"""`memsv train` on the mini corpus: the demo setup (conf/mini_fast.yaml: reduced-width Type I reversible
ResNet with 8-bit Adam) next to its vanilla / 32-bit counterparts, side by side in one run.

Each variant is a separate ``memsv train`` process (so that its peak RSS is its own) with the same data,
seed and schedule; only ``model.name`` and ``optimizer.name`` change. Printed per variant: final training
accuracy and loss, CPU seconds and wall seconds of the training process, peak RSS, and ratios against the
first variant. CPU seconds are the stable figure on a shared machine (wall time depends on the load).

Usage (FBANK holds feats.scp + utt2spk, e.g. from ``memsv prepare-data --corpus mini`` + extract-fbank,
where speed perturbation and augmentation are turned off; or a make-shards dir, where they stay on)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_mini.py --data FBANK/mini_train [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "resnet18 + Adam (32-bit)": ["--set", "model.name=resnet18", "--set", "optimizer.name=adam"],
    "rev_resnet18 + Adam (32-bit)": ["--set", "model.name=rev_resnet18", "--set", "optimizer.name=adam"],
    "rev_resnet18 + Adam8bit (mini_fast.yaml)": [],
}


def run_variant(name: str, extra: list[str], data: Path, exp: Path, common: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "memsv_cli",
        "train",
        "--config",
        str(ROOT / "recipes/voxceleb/conf/mini_fast.yaml"),
        "--data",
        str(data),
        "--exp-dir",
        str(exp),
        "--set",
        "train.progress=false",
        *common,
        *extra,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    epochs = [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["type"] == "epoch"]
    return {
        "name": name,
        "epochs": len(epochs),
        "acc": epochs[-1]["acc"],
        "loss": epochs[-1]["loss"],
        "first_acc": epochs[0]["acc"],
        "cpu_s": cpu,
        "wall_s": wall,
        "peak_rss_mib": max(r["peak_mem_bytes"] for r in epochs) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="extract-fbank or make-shards output dir")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--only", default=None, help="comma-separated variant numbers (1-based) to run")
    args = parser.parse_args()
    common = ["--num-workers", "0"]
    if (args.data / "feats.scp").is_file():  # features carry no audio: the demo's online chain is off
        common += ["--set", "data.speed_perturb=false", "--set", "data.aug_prob=0"]
    if args.epochs:
        common += ["--epochs", str(args.epochs)]
    chosen = list(VARIANTS.items())
    if args.only:
        chosen = [chosen[int(i) - 1] for i in args.only.split(",")]
    print(
        f"data {args.data}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(chosen):
            rows.append(run_variant(name, extra, args.data, Path(tmp) / f"exp{i}", common))
    base = rows[0]
    print(
        "| variant | epochs | train acc (first -> last) | final loss | CPU s | wall s | peak RSS MiB "
        "| CPU ratio | RSS ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['epochs']} | {100 * r['first_acc']:.1f}% -> {100 * r['acc']:.1f}% | "
            f"{r['loss']:.3f} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | {r['peak_rss_mib']:.0f} | "
            f"{r['cpu_s'] / base['cpu_s']:.2f} | {r['peak_rss_mib'] / base['peak_rss_mib']:.2f} |"
        )


if __name__ == "__main__":
    main()
