"""Checkpoint sizes on disk, and what a whole experiment keeps, before and after issue 12.

For each model and optimizer the real training state is built (model, 5,994-speaker AAM head, optimizer
whose states exist after one step) and serialised exactly as ``memsv train`` writes it: a full
(resumable) checkpoint and a weights-only ``model_N.pt``. An experiment of ``--epochs`` epochs then keeps:

- before (memsv 0.1): one full ``epoch_N.pt`` per epoch (+ ``avg_model.pt``);
- after: one weights-only ``model_N.pt`` per epoch, ``train.keep_checkpoints`` full checkpoints, the
  average; and with ``train.keep_epoch_models: 10`` only the 10 newest ``model_N.pt``.

Usage::

    .venv/bin/python benchmarks/checkpoint_disk.py                  # resnet34, resnet293 x sgd, sgd8bit
    .venv/bin/python benchmarks/checkpoint_disk.py --models resnet34 --epochs 150
"""

from __future__ import annotations

import argparse
import io
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from memsv_cli.data.sampler import ChunkBatchSampler  # noqa: E402
from memsv_cli.train.checkpoint import capture_rng  # noqa: E402
from memsv_cli.train.config import resolve_config  # noqa: E402
from memsv_cli.train.distributed import DistInfo  # noqa: E402
from memsv_cli.train.settings import Settings  # noqa: E402
from memsv_cli.train.state import build_state, full_payload, weights_payload  # noqa: E402

SPEAKERS, UTTERANCES = 5994, 1_092_009  # VoxCeleb2-dev
GB = 1e9


def _serialised(payload: dict) -> int:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.tell()


def sizes(model: str, optimizer: str) -> tuple[int, int]:
    """(full checkpoint bytes, weights-only bytes) of ``model`` trained with ``optimizer``."""
    config = resolve_config(None, [f"model.name={model}", f"optimizer.name={optimizer}"])
    plan = ChunkBatchSampler(UTTERANCES, 128, seed=42)
    state = build_state(Settings.from_config(config), SPEAKERS, plan, DistInfo())
    for p in state.net.parameters():  # the states exist from the first step on
        p.grad = torch.zeros_like(p)
    state.optimizer.step()
    speakers = [f"id{i:05d}" for i in range(SPEAKERS)]
    full = _serialised(full_payload(state, config, speakers, [capture_rng()]))
    return full, _serialised(weights_payload(state, config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet34", "resnet293"])
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "sgd8bit"])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--keep-checkpoints", type=int, default=2)
    args = parser.parse_args(argv)
    e, k = args.epochs, args.keep_checkpoints
    print(
        f"{'model + optimizer':28s} {'full':>9s} {'weights':>9s} | {e}-epoch experiment: {'before':>9s} "
        f"{'after':>9s} {'ratio':>6s} {'keep 10':>9s} {'ratio':>6s}"
    )
    for model in args.models:
        for optimizer in args.optimizers:
            full, weights = sizes(model, optimizer)
            before = e * full + weights
            after = e * weights + k * full + weights
            keep10 = min(e, 10) * weights + k * full + weights
            print(
                f"{model + ' + ' + optimizer:28s} {full / GB:8.3f}G {weights / GB:8.3f}G | "
                f"{'':{len(str(e)) + 20}s}{before / GB:8.2f}G {after / GB:8.2f}G {before / after:5.2f}x "
                f"{keep10 / GB:8.2f}G {before / keep10:5.1f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
