"""Training-data throughput per worker core, every data type in one run: 2-s chunks per second.

Rows (one thread, CPU time, the datasets exactly as ``memsv train`` builds them, no DataLoader):

- feat, whole reads: the crop cut from the whole matrix (memsv before issue 13), and its read amplification;
- feat, crop reads: only the chunk's rows read (``utt2num_frames``);
- raw / shard, with and without speed perturbation, with ``aug_prob`` 0.6 (synthetic MUSAN / RIR stand-ins);
- bare fbank (``online.fbank``, dither 1) of already-cropped 2-s chunks: the floor of the audio types.

A worker core must deliver the chunks one training step consumes while the step runs: a 2080Ti's
ResNet34 step at batch 128 takes ~0.4-0.5 s (WeSpeaker's logs), so ~300 chunks/s, i.e. 3-4 worker
cores at 100 chunks/s each. Usage::

    .venv/bin/python benchmarks/data_pipeline.py                  # the mini corpus in a temp dir
    .venv/bin/python benchmarks/data_pipeline.py --chunks 400 --frames 200
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from memsv_cli.data import online  # noqa: E402
from memsv_cli.data.augment import make_synthetic_sources  # noqa: E402
from memsv_cli.data.fbank import FbankConfig, extract_fbank  # noqa: E402
from memsv_cli.data.mini import MiniConfig, prepare_mini  # noqa: E402
from memsv_cli.data.shards import make_shards  # noqa: E402
from memsv_cli.data.training import LoaderOptions, load_training_source  # noqa: E402


def _prepare(root: Path) -> dict[str, Path]:
    # VoxCeleb-like lengths (3-8 s) so that crops are a fraction of an utterance, as in real training
    prepare_mini(
        root / "mini", MiniConfig(num_speakers=20, utts_per_speaker=16, min_seconds=3.0, max_seconds=8.0)
    )
    train = root / "mini" / "mini_train"
    extract_fbank(train, root / "fbank", nj=2)
    make_shards(train, root / "shards", utts_per_shard=100, nj=2)
    sources = make_synthetic_sources(root / "aug")
    return {"raw": train, "feat": root / "fbank", "shard": root / "shards", **sources}


def _rate(items: object, count: int) -> float:
    """Chunks per CPU second over ``count`` chunks of ``items`` (an iterator of chunks or batches)."""
    start, done = time.process_time(), 0
    for item in items:  # type: ignore[attr-defined]
        done += len(item.labels) if hasattr(item, "labels") else 1
        if done >= count:
            break
    return done / max(time.process_time() - start, 1e-9)


def _map_items(dataset: Any, n: int, seed: int = 0) -> Iterator[Any]:
    """``n`` random items of a map-style dataset, each with its own sample seed."""
    rng = np.random.default_rng(seed)
    for i, sample_seed in zip(rng.integers(0, len(dataset), n), rng.integers(0, 2**62, n), strict=True):
        yield dataset[(int(i), int(sample_seed))]


def measure(paths: dict[str, Path], frames: int, count: int) -> list[tuple[str, float, str]]:
    """(row name, chunks/s, note) for every row of the module docstring."""
    aug = {k: str(paths[k]) for k in ("rirs", "noise", "music")}
    rows = []
    for name, kind, kw in (
        ("feat, whole reads", "feat", {}),
        ("feat, crop reads", "feat", {}),
        ("raw + aug 0.6", "raw", {"aug_prob": 0.6, "aug_sources": aug}),
        ("raw + aug 0.6 + speed", "raw", {"aug_prob": 0.6, "aug_sources": aug, "speed_perturb": True}),
        ("shard + aug 0.6", "shard", {"aug_prob": 0.6, "aug_sources": aug}),
        ("shard + aug 0.6 + speed", "shard", {"aug_prob": 0.6, "aug_sources": aug, "speed_perturb": True}),
    ):
        source = load_training_source(kind, paths[kind])
        if name == "feat, whole reads":
            source.data.num_frames = None  # as if there were no utt2num_frames
        plan, dataset = source.plan_and_dataset(LoaderOptions(frames, 32, seed=1, **kw))
        items = iter(dataset) if kind == "shard" else _map_items(dataset, count)
        rate, note = _rate(items, count), ""
        if kind == "feat":
            used = count * frames * source.feat_dim * 4
            note = f"read amplification {dataset.bytes_read / used:.2f}x"
        rows.append((name, rate, note))
    return rows


def bare_fbank_rate(frames: int, count: int) -> float:
    cfg, rng = FbankConfig(), np.random.default_rng(0)
    waves = rng.normal(scale=3000, size=(16, online.samples_for_frames(frames, cfg))).astype(np.float32)
    start = time.process_time()
    for i in range(count):
        online.fbank(waves[i % 16], cfg, 1.0, rng)
    return count / (time.process_time() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="chunk length (frames; 200 = 2 s)")
    parser.add_argument("--chunks", type=int, default=300, help="chunks per row")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the prepared data here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        paths = _prepare(root)
        bare = bare_fbank_rate(args.frames, args.chunks)
        rows = measure(paths, args.frames, args.chunks)
    print(f"{args.frames}-frame chunks per CPU second, one thread ({args.chunks} chunks per row)")
    print(f"{'data path':28s} {'chunks/s':>9s} {'x bare fbank':>12s}  note")
    print(f"{'bare fbank (dither 1)':28s} {bare:9.0f} {1.0:12.2f}")
    for name, rate, note in rows:
        print(f"{name:28s} {rate:9.0f} {rate / bare:12.2f}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
