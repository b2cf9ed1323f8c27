"""DDP: two gloo processes (torch.multiprocessing, spawn) train together and end with identical weights."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_train_data import make_feats_dir

from memsv_cli.train.checkpoint import load_checkpoint
from memsv_cli.train.config import resolve_config

WORLD = 2
DEADLINE_S = 240  # the whole run; a hung collective fails the test instead of blocking CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, config: dict, exp: str, out: str) -> None:
    # torchrun's environment, set by hand
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
        }
    )
    torch.set_num_threads(1)
    from memsv_cli.train.trainer import train

    result = train(config, exp)
    params = {k: v.detach().clone() for k, v in result.net.named_parameters()}
    torch.save({"params": params, "history": result.history}, Path(out) / f"rank{rank}.pt")


def test_two_process_gloo_ddp_run_completes_with_identical_parameters(tmp_path: Path) -> None:
    data = make_feats_dir(tmp_path / "data", num_speakers=8, utts_per_speaker=8)
    config = resolve_config(
        None,
        [
            f"data.dir={data}",
            "model.name=rev_resnet18",
            "model.args.feat_dim=16",
            "model.args.embed_dim=32",
            "model.args.base_width=4",
            "optimizer.name=adam8bit",
            "data.chunk_frames=48",
            "train.epochs=2",
            "train.batch_size=8",
            "train.num_workers=0",
            "train.progress=false",
            "train.num_avg=2",
            "train.device=cpu",
            "train.dist_timeout_s=120",
            "scheduler.initial_lr=0.01",
            "scheduler.final_lr=0.001",
            "scheduler.warm_up_epochs=0",
        ],
    )
    exp = tmp_path / "exp"
    ctx = mp.start_processes(
        _worker,
        args=(_free_port(), config, str(exp), str(tmp_path)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP run did not finish within {DEADLINE_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert r0["params"].keys() == r1["params"].keys()
    for key, value in r0["params"].items():
        assert torch.equal(value, r1["params"][key]), f"{key} differs between ranks"
    # 64 utterances / 2 ranks / batch 8 = 4 steps per epoch on each rank; LR scaled by 2 x 8 / 64
    assert r0["history"][-1]["step"] == 8
    # loss and accuracy are reduced over both ranks, so every rank reports the same numbers
    keys = ("loss", "acc", "lr", "margin", "step", "peak_mem_bytes")
    assert [[h[k] for k in keys] for h in r0["history"]] == [[h[k] for k in keys] for h in r1["history"]]
    # last step of epoch 1 is global step 3 of 8: 0.01 * (2 ranks x 8 / 64) * 0.1 ** (3 / 8)
    assert r0["history"][0]["lr"] == pytest.approx(0.01 * 0.25 * 0.1 ** (3 / 8))
    # only rank 0 wrote: one checkpoint per epoch, one set of metric records, an averaged model
    ckpt = load_checkpoint(exp / "models/last.pt")
    assert len(ckpt["rng"]) == WORLD
    assert all(
        torch.equal(v, r0["params"][f"model.{k}"])
        for k, v in ckpt["model"].items()
        if f"model.{k}" in r0["params"]
    )
    epochs = [line for line in (exp / "metrics.jsonl").read_text().splitlines() if '"type": "epoch"' in line]
    assert len(epochs) == 2
    assert (exp / "models/avg_model.pt").is_file()
