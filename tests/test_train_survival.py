"""Long runs that survive anything (issue 12): killed, preempted, interrupted, restarted by torchrun,
a checkpoint write that fails, and gradient accumulation standing in for a second GPU.

Every run here is a real ``memsv train`` process (``python -m memsv_cli``, or ``torchrun`` for DDP) whose
fault is a real signal at a known optimizer step (``MEMSV_FAULT_INJECT``, see ``memsv_cli.train.faults``),
and every "resumed" result is compared bit for bit with a run that was never interrupted. 64 utterances
of 8 speakers, 3 epochs of 4 optimizer steps; a step checkpoint every 2 steps, so a fault at step 7 loses
step 7 and the run continues from checkpoint 6.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_train_data import make_feats_dir

from memsv_cli.train.checkpoint import load_checkpoint

CONFIG = {
    "model": {"name": "rev_resnet18", "args": {"feat_dim": 16, "embed_dim": 32, "base_width": 4}},
    "optimizer": {"name": "adam8bit"},
    "data": {"chunk_frames": 48, "spec_aug": True},
    "train": {
        "epochs": 3,
        "batch_size": 16,
        "num_workers": 1,  # worker processes must survive Ctrl-C / SIGTERM to the process group
        "progress": False,
        "memory_check": False,  # tests/test_memory_plan.py covers it; these runs are subprocesses
        "log_interval": 2,
        "num_avg": 2,
        "device": "cpu",
        "dist_timeout_s": 60,
        "save_every_steps": 2,
        "save_every_minutes": None,
    },
    "scheduler": {"initial_lr": 0.01, "final_lr": 0.001, "warm_up_epochs": 0, "scale_by_batch": False},
    "margin_scheduler": {"increase_start_epoch": 1, "fix_start_epoch": 2, "final_margin": 0.1},
}
DDP = {"train": {"batch_size": 8, "num_workers": 0}}  # 2 ranks x 8 = the single process's 16
TIMEOUT_S = 240


def _merge(base: dict, update: dict) -> dict:
    out = {**base}
    for key, value in update.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and key in base else value
    return out


def memsv(args: list[str], cwd: Path, fault: str | None = None, ranks: int = 0, restarts: int = 0):
    """Run ``memsv`` (or, with ``ranks``, ``torchrun --nproc-per-node ranks -m memsv_cli``) in ``cwd``."""
    env = {k: v for k, v in os.environ.items() if k != "MEMSV_FAULT_INJECT"}
    env["OMP_NUM_THREADS"] = "1"  # torchrun sets this for its workers; the same for single processes
    # torchrun's agent must not share its rendezvous store with the workers' process group, or a
    # restarted group may read the dead group's addresses (pytorch#135712); run.sh sets it too
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    if fault:
        env["MEMSV_FAULT_INJECT"] = fault
    launcher = [sys.executable, "-m", "memsv_cli"]
    if ranks:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={ranks}",
        ]
        launcher += [f"--max-restarts={restarts}", "-m", "memsv_cli"]
    return subprocess.run(
        launcher + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("survival")
    make_feats_dir(root / "data", num_speakers=8, utts_per_speaker=8)
    (root / "single.yaml").write_text(yaml.safe_dump(CONFIG))
    (root / "ddp.yaml").write_text(yaml.safe_dump(_merge(CONFIG, DDP)))
    return root


def train_args(conf: str, exp: str, *extra: str) -> list[str]:
    return ["train", "--config", conf, "--data", "data", "--exp-dir", exp, *extra]


@pytest.fixture(scope="module")
def straight(work: Path) -> Path:
    """The uninterrupted single-process run."""
    done = memsv(train_args("single.yaml", "straight"), work)
    assert done.returncode == 0, done.stderr
    return work / "straight"


@pytest.fixture(scope="module")
def straight_ddp(work: Path) -> Path:
    """The uninterrupted 2-process gloo run."""
    done = memsv(train_args("ddp.yaml", "straight_ddp"), work, ranks=2)
    assert done.returncode == 0, done.stderr
    return work / "straight_ddp"


def assert_same_run(a: Path, b: Path) -> None:
    """Final model, head, optimizer state (8-bit codes included) and step bit-identical."""
    ca, cb = load_checkpoint(a / "models/last.pt"), load_checkpoint(b / "models/last.pt")
    assert ca["step"] == cb["step"] == 12
    for part in ("model", "head"):
        for key, value in ca[part].items():
            assert torch.equal(value, cb[part][key]), f"{part}.{key} differs"
    for pid, state in ca["optimizer"]["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                assert torch.equal(value, cb["optimizer"]["state"][pid][key]), f"optimizer {pid}.{key}"
    assert (b / "models/avg_model.pt").is_file() and (b / "models/final_model.pt").is_file()


def metric_records(exp: Path) -> list[dict]:
    drop = ("seconds", "samples_per_s", "peak_mem_bytes")
    lines = (exp / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]


def checkpoints(exp: Path) -> list[str]:
    return sorted(p.name for p in (exp / "models").glob("checkpoint_*.pt"))


def test_sigkill_mid_epoch_then_resume_is_bit_identical(work: Path, straight: Path) -> None:
    killed = memsv(train_args("single.yaml", "killed"), work, fault="KILL@7")
    assert killed.returncode == -signal.SIGKILL
    # step 7 was done but never saved; keep_checkpoints 2 left the epoch-1 end (4) and step 6
    assert checkpoints(work / "killed") == ["checkpoint_00000004.pt", "checkpoint_00000006.pt"]
    assert os.readlink(work / "killed/models/last.pt") == "checkpoint_00000006.pt"
    assert not list((work / "killed/models").glob(".*tmp"))
    resumed = memsv(["train", "--exp-dir", "killed", "--resume"], work)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(straight, work / "killed")
    # the resumed epoch's records (its statistics were saved mid-epoch) equal the uninterrupted ones
    assert metric_records(straight) == metric_records(work / "killed")
    assert "resumed from" in (work / "killed/train.log").read_text()


@pytest.mark.parametrize(("sig", "status"), [("TERM", 0), ("INT", 130), ("USR1", 0)])
def test_stop_signal_finishes_the_step_saves_and_resumes_exactly(
    work: Path, straight: Path, sig: str, status: int
) -> None:
    exp = f"stop_{sig.lower()}"
    stopped = memsv(train_args("single.yaml", exp), work, fault=f"{sig}@5")
    # the signal arrives after step 5; step 6 finishes, is saved, and the run stops with one line
    assert stopped.returncode == status, stopped.stderr
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"memsv train: stopped by SIG{sig} after step 6")
    assert f"resume with: memsv train --exp-dir {exp} --resume" in lines[0]
    assert checkpoints(work / exp)[-1] == "checkpoint_00000006.pt"
    assert not (work / exp / "models/avg_model.pt").exists()  # nothing looks finished
    if sig == "USR1":
        return  # the same code path as TERM; the resume is checked twice already
    resumed = memsv(["train", "--exp-dir", exp, "--resume"], work)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(straight, work / exp)


def test_ddp_rank_killed_then_resume_is_bit_identical(work: Path, straight_ddp: Path) -> None:
    killed = memsv(train_args("ddp.yaml", "ddp_killed"), work, fault="KILL@7:1", ranks=2)
    assert killed.returncode != 0  # rank 1 died; rank 0's next collective failed
    assert checkpoints(work / "ddp_killed")[-1] == "checkpoint_00000006.pt"
    resumed = memsv(["train", "--exp-dir", "ddp_killed", "--resume"], work, ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(straight_ddp, work / "ddp_killed")
    assert len(load_checkpoint(work / "ddp_killed/models/last.pt")["rng"]) == 2


def test_torchrun_restarts_a_killed_worker_group_which_resumes_by_itself(
    work: Path, straight_ddp: Path
) -> None:
    done = memsv(train_args("ddp.yaml", "elastic"), work, fault="KILL@7:1", ranks=2, restarts=1)
    assert done.returncode == 0, done.stderr
    log = (work / "elastic/train.log").read_text()
    assert "resumed from elastic/models/checkpoint_00000006.pt (epoch 2, step 6, torchrun restart 1)" in log
    assert_same_run(straight_ddp, work / "elastic")
    assert done.stdout.count("trained 3 epoch(s)") == 1  # rank 0 reports, once


def test_accumulation_on_one_process_equals_two_ddp_processes(work: Path, straight_ddp: Path) -> None:
    done = memsv(train_args("ddp.yaml", "accum", "--set", "train.accum_steps=2"), work)
    assert done.returncode == 0, done.stderr
    a, b = load_checkpoint(straight_ddp / "models/last.pt"), load_checkpoint(work / "accum/models/last.pt")
    assert a["step"] == b["step"] == 12 and a["micro_batches"] == b["micro_batches"] == 2
    # Same micro-batches, each normalised by its own BatchNorm statistics; gradients (g0 + g1) / 2 both
    # ways. Stated tolerance 1e-6 relative (float rounding of the mean); for A = 2 the halving is exact
    # and the weights come out bitwise equal.
    for part in ("model", "head"):
        for key, value in a[part].items():
            if "running_" in key or "num_batches_tracked" in key:
                continue  # DDP keeps rank 0's running statistics; accumulation's see every micro-batch
            torch.testing.assert_close(b[part][key], value, rtol=1e-6, atol=1e-7, msg=f"{part}.{key}")
            assert torch.equal(b[part][key], value), f"{part}.{key} is not bitwise equal"
    # one process can continue a 2-process run with accum_steps 2 (same micro-batches per step)
    assert "process(es) x 2 micro-batch(es) of 8" in (work / "accum/train.log").read_text()


def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_one(
    work: Path, straight: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memsv_cli.errors import MemsvError
    from memsv_cli.train import checkpoint as ckpt
    from memsv_cli.train.config import resolve_config
    from memsv_cli.train.trainer import train

    real_save, calls = torch.save, []

    def disk_full(obj: object, f: Any, *args: object, **kwargs: object) -> None:
        calls.append(f)
        if len(calls) == 4:  # step 6's checkpoint: half written, then the disk is full
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    cfg = resolve_config(work / "single.yaml", [f"data.dir={work / 'data'}"])
    exp = work / "diskfull"
    with pytest.raises(
        MemsvError, match=r"could not write .*checkpoint_00000006.pt: No space left on device; "
    ):
        train(cfg, exp)
    assert "checkpoint_00000004.pt is still usable" in (exp / "train.log").read_text()
    assert checkpoints(exp) == ["checkpoint_00000002.pt", "checkpoint_00000004.pt"]
    assert not list((exp / "models").glob(".*tmp"))  # the half-written file is gone
    assert load_checkpoint(exp / "models/last.pt")["step"] == 4
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    result = train(cfg, exp, resume=True)
    assert result.step == 12 and result.avg_model is not None


def test_train_os_errors_and_a_held_experiment_give_one_line(work: Path) -> None:
    (work / "a_file").write_text("not a directory\n")
    done = memsv(train_args("single.yaml", "a_file"), work)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "a_file" in done.stderr and "Traceback" not in done.stderr
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from memsv_cli.lock import DirectoryLock; "
         "DirectoryLock('held').acquire(); print('held', flush=True); time.sleep(60)"],
        cwd=work, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        done = memsv(train_args("single.yaml", "held"), work)
        assert done.returncode == 1 and done.stderr.count("\n") == 1
        assert f"pid {holder.pid}" in done.stderr and "in use by another run" in done.stderr
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (SIGKILL): its lock went with it
    done = memsv(train_args("single.yaml", "held", "--set", "train.epochs=1"), work)
    assert done.returncode == 0, done.stderr


def test_ctrl_c_at_the_terminal_stops_after_the_step_with_one_line(work: Path) -> None:
    """A real Ctrl-C: SIGINT to the whole process group, DataLoader worker included."""
    import re

    from test_cli_errors import interrupt_memsv, start_memsv

    exp = work / "ctrl_c"
    args = ["train", "--config", work / "single.yaml", "--data", work / "data", "--exp-dir", exp]
    proc = start_memsv([*args, "--set", "train.epochs=40"])
    log = exp / "train.log"
    status, _, err = interrupt_memsv(proc, lambda: log.is_file() and "batch 2/4" in log.read_text())
    assert status == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memsv train: stopped by SIGINT after step "), err
    step = int(re.search(r"after step (\d+)", lines[0]).group(1))
    assert ckpt_step(exp / "models/last.pt") == step and step < 160


def ckpt_step(path: Path) -> int:
    return int(load_checkpoint(path)["step"])
