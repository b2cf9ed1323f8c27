"""The device check (issue 14 item 5): what the meta estimates and the CPU ratios claim, measured on a GPU.

    benchmarks/gpu_check.sh                     # on a CUDA machine; one table in $OUT/gpu_check.txt
    .venv/bin/python benchmarks/gpu_check.py --device cpu --smoke   # the same code at toy sizes (tests)

Parts, each printed as it completes (a part that would pass ``--budget-s`` is skipped with a note):
1. memory: the memory table's key rows (resnet34 / rev / fullrev; resnet293 and dfresnet233 vanilla,
   per-block checkpointing, rev and fullrev at K = 1 and 4; SGD and SGD8bit at K = 1, SGD8bit at K = 4),
   batch 128 x 200 x 80, 5,994 speakers: meta estimate beside ``max_memory_allocated`` and
   ``max_memory_reserved`` of a measured step.
2. time: step-time ratios reversible / vanilla (and checkpointed / vanilla), and accumulation ratios
   (the same 128 samples as 64 x 2 and 32 x 4) - the cost model of the memory plans.
3. optimizer: the 8-bit SGD / Adam step against torch's fused fp32 step on ResNet293's parameters.
4. plan: ``memsv train --gpu-memory 11GiB`` of rev_resnet293 on synthetic features; its measured peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from memsv_cli.profile.memory import measure_step
from memsv_cli.profile.report import model_builder
from memsv_cli.profile.step import StepSetup, TrainingStep

GIB = 2**30
CLOCK = time.perf_counter


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def memory_rows(smoke: bool) -> list[tuple[str, int, bool, str]]:
    """(model, K, checkpoint_blocks, optimizer) rows of part 1."""
    deep = ["resnet18"] if smoke else ["resnet293", "dfresnet233"]
    rows = [
        (m, 1, False, o) for m in ("resnet34", "rev_resnet34", "fullrev_resnet34") for o in ("sgd", "sgd8bit")
    ]
    for base in deep:
        for opt in ("sgd", "sgd8bit"):
            rows += [(base, 1, False, opt), (base, 1, True, opt)]
            rows += [(f"{v}{base}", 1, False, opt) for v in ("rev_", "fullrev_")]
        rows += [(f"{v}{base}", 4, False, "sgd8bit") for v in ("rev_", "fullrev_")]
    return rows


def measure_device(build, setup: StepSetup, device: str) -> tuple[int, int | None]:  # noqa: ANN001
    """(allocated, reserved) peak bytes of one measured step on ``device`` (CPU: the tracker, no reserve)."""
    if device != "cuda":
        return measure_step(build, setup, "cpu").total, None
    torch.cuda.empty_cache()
    total = measure_step(build, setup, "cuda").total
    return total, int(torch.cuda.max_memory_reserved())


def part_memory(args: argparse.Namespace, deadline: float) -> None:
    s = args.setup
    print(
        f"\n# 1. memory: batch {s.batch_size} x {s.frames} x {s.feat_dim}, {s.num_speakers} speakers, "
        "fp32 (GiB)"
    )
    print(
        f"{'model':22s} {'K':>2s} {'opt':8s} {'meta':>8s} {'allocated':>10s} {'reserved':>9s} "
        f"{'alloc/meta':>10s}"
    )
    for model, k, ckpt, opt in memory_rows(args.smoke):
        if CLOCK() > deadline:
            print("(time budget spent: remaining rows skipped)")
            return
        setup = StepSetup(**{**vars(s), "optimizer": opt})
        build = model_builder(model, s.feat_dim, s.embed_dim, args.width, k, ckpt)
        meta = measure_step(build, setup, "meta").total
        try:
            alloc, reserved = measure_device(build, setup, args.device)
        except torch.OutOfMemoryError:
            alloc, reserved = None, None
        name = model + ("+ckpt" if ckpt else "")
        a = "OOM" if alloc is None else f"{alloc / GIB:10.2f}"
        r = "-" if reserved is None else f"{reserved / GIB:9.2f}"
        ratio = "-" if alloc is None else f"{alloc / meta:10.3f}"
        print(f"{name:22s} {k:2d} {opt:8s} {meta / GIB:8.2f} {a:>10s} {r:>9s} {ratio:>10s}", flush=True)


def step_seconds(step: TrainingStep, device: str, reps: int) -> float:
    step.run()  # warm-up (cuDNN autotuning, optimizer states)
    _sync(device)
    start = CLOCK()
    for _ in range(reps):
        step.run()
    _sync(device)
    return (CLOCK() - start) / reps


def part_time(args: argparse.Namespace, deadline: float) -> None:
    s = args.setup
    print(f"\n# 2. step time ({args.reps} steps after a warm-up, {args.device}): ratio to the first row")
    groups = [["resnet34", "rev_resnet34", "fullrev_resnet34", "resnet34+ckpt"]]
    if not args.smoke:
        groups.append(["dfresnet233", "rev_dfresnet233", "fullrev_dfresnet233", "dfresnet233+ckpt"])
    for group in groups:
        base = None
        for name in group:
            if CLOCK() > deadline:
                print("(time budget spent: remaining rows skipped)")
                return
            model, ckpt = name.removesuffix("+ckpt"), name.endswith("+ckpt")
            build = model_builder(model, s.feat_dim, s.embed_dim, args.width, 1, ckpt)
            try:
                t = step_seconds(TrainingStep.build(build, s, args.device), args.device, args.reps)
            except torch.OutOfMemoryError:
                print(f"{name:22s} OOM")
                continue
            base = base or t
            print(f"{name:22s} {t:8.4f} s  {t / base:5.2f}x", flush=True)
    build = model_builder("rev_resnet34", s.feat_dim, s.embed_dim, args.width)
    base = None
    for accum in (1, 2, 4):
        setup = StepSetup(**{**vars(s), "batch_size": s.batch_size // accum, "accum_steps": accum})
        step = TrainingStep.build(build, setup, args.device)
        # every micro-batch runs here (the profiler runs 2 of A: same peak, not the same time)
        step.run = lambda step=step, a=accum, s=setup: step.step([_batch(s, args.device) for _ in range(a)])
        t = step_seconds(step, args.device, args.reps)
        base = base or t
        print(f"rev_resnet34 {setup.batch_size:4d} x {accum}  {t:8.4f} s  {t / base:5.2f}x", flush=True)


def _batch(s: StepSetup, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.randn(s.batch_size, s.frames, s.feat_dim, device=device)
    return feats, torch.randint(0, s.num_speakers, (s.batch_size,), device=device)


def part_optimizer(args: argparse.Namespace) -> None:
    from memsv_cli.models import get_model
    from memsv_cli.optim import build_optimizer

    print(
        f"\n# 3. optimizer step on {'resnet18' if args.smoke else 'resnet293'}'s parameters ({args.device})"
    )
    model = get_model("resnet18" if args.smoke else "resnet293", base_width=args.width).to(args.device)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    fused = {"fused": True} if args.device == "cuda" else {}
    pairs = [
        ("SGD", lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, **fused), "sgd8bit", {"momentum": 0.9}),
        ("Adam", lambda: torch.optim.Adam(params, lr=1e-3, **fused), "adam8bit", {}),
    ]
    for name, reference, eight_bit, kwargs in pairs:
        ref = optimizer_seconds(reference(), args)
        ours = optimizer_seconds(build_optimizer(eight_bit, params, lr=1e-3, **kwargs), args)
        label = f"torch {name} fp32" + (" fused" if fused else "")
        print(f"{label:24s} {1000 * ref:8.2f} ms", flush=True)
        print(f"{'memsv ' + eight_bit:24s} {1000 * ours:8.2f} ms  {ours / ref:5.2f}x", flush=True)


def optimizer_seconds(opt: torch.optim.Optimizer, args: argparse.Namespace) -> float:
    opt.step()  # creates the states
    _sync(args.device)
    start = CLOCK()
    for _ in range(args.reps):
        opt.step()
    _sync(args.device)
    return (CLOCK() - start) / args.reps


def part_plan(args: argparse.Namespace) -> None:
    """A short planned training run on synthetic features; its measured peak against the card."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_train_data import make_feats_dir

    model = "rev_resnet18" if args.smoke else "rev_resnet293"
    print(f"\n# 4. memsv train --gpu-memory {args.plan_memory} ({model}, synthetic features, {args.device})")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_feats_dir(
            Path(tmp) / "data", num_speakers=20, utts_per_speaker=8, feat_dim=80, frames=(220, 320)
        )
        exp = Path(tmp) / "exp"
        cmd = [sys.executable, "-m", "memsv_cli", "train", "-c", str(args.plan_config), "--data", str(data)]
        cmd += [
            "--exp-dir",
            str(exp),
            "--gpu-memory",
            args.plan_memory,
            "--device",
            args.device,
            "--epochs",
            "1",
        ]
        cmd += ["--set", f"model.name={model}", "--set", f"model.args.base_width={args.width}"]
        cmd += ["--set", "train.progress=false", "--set", "train.num_workers=0", "--set", "train.num_avg=0"]
        cmd += ["--set", "data.type=feat", "--set", "data.speed_perturb=false", "--set", "data.aug_prob=0"]
        if args.smoke:
            cmd += ["--set", "train.batch_size=16", "--set", "data.chunk_frames=48"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        print(done.stderr.strip()[-2000:])
        records = (
            [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]
            if done.returncode == 0
            else []
        )
        for r in (r for r in records if r["type"] == "epoch"):
            print(
                {k: r.get(k) for k in ("predicted_peak_bytes", "measured_peak_bytes", "reserved_peak_bytes")}
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="toy sizes (CPU tests of this script)")
    ap.add_argument("--budget-s", type=float, default=270.0, help="stop adding rows after this many seconds")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--plan-memory", default="11GiB")
    ap.add_argument(
        "--plan-config",
        default=str(Path(__file__).resolve().parents[1] / "recipes/voxceleb/conf/rev_resnet293_sgd8bit.yaml"),
    )
    args = ap.parse_args()
    if args.smoke:
        args.width, args.reps, args.plan_memory = 4, 1, "64MiB"
        args.setup = StepSetup(batch_size=8, frames=48, num_speakers=20, embed_dim=32)
    else:
        args.width = 32
        args.setup = StepSetup(batch_size=128, frames=200, num_speakers=5994, embed_dim=256)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"# memsv device check: {name}, torch {torch.__version__}")
    start = CLOCK()
    part_memory(args, start + 0.55 * args.budget_s)
    part_time(args, start + 0.8 * args.budget_s)
    part_optimizer(args)
    part_plan(args)
    print(f"\n# done in {CLOCK() - start:.0f} s")


if __name__ == "__main__":
    main()
