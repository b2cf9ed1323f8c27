"""Throughput of on-the-fly sample processing (issue 13): 2-s chunks per second per core, one thread.

Rows: bare kaldi-native-fbank on ready 2-s chunks (the reference of the ratio column); memsv's own
fbank (``memsv_cli.data.online.fbank``) without and with seeded dither; ``read_crop`` from wav files;
then cumulatively + speed perturbation (factor drawn from 1.0/0.9/1.1), + reverb on every chunk, + noise
on every chunk; the whole chain (crop + speed + augmentation with probability 0.6 + fbank with dither
+ CMN) with our fbank and with kaldi-native-fbank; and the batched torch fbank on CPU (128 chunks per
call). A second table times the convolution choices for reverb. The issue's target: the whole chain at
>= 100 chunks per second per worker core.

Audio: mini-corpus speech (``memsv_cli.data.mini``), 6-s utterances as 16-bit wav files; augmentation
sources from ``make_synthetic_sources`` (10-s noise / music files, RIRs of 0.2-0.8 s), babble from the
speech itself. CPU time (``time.process_time``, user + system) is the measure: the machine may be shared.

    .venv/bin/python benchmarks/online_processing.py [--chunks 300] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy/torch: one core per DataLoader worker

import numpy as np  # noqa: E402
import scipy.signal  # noqa: E402
import soundfile as sf  # noqa: E402

from memsv_cli.data import augment as offline  # noqa: E402
from memsv_cli.data.audio import read_audio  # noqa: E402
from memsv_cli.data.fbank import FbankConfig, compute_fbank  # noqa: E402
from memsv_cli.data.kaldi_dir import read_wav_scp, write_data_dir  # noqa: E402
from memsv_cli.data.mini import random_channel, sample_speaker, synthesize_utterance  # noqa: E402
from memsv_cli.data.online import (  # noqa: E402
    AugmentSources,
    add_noise,
    augment,
    choose_speed,
    chunk_features,
    cmn,
    crop_length,
    fbank,
    read_crop,
    reverberate,
    samples_for_frames,
    speed_perturb,
)

CHUNK = samples_for_frames(200)  # 32240 samples: 200 frames, "2 s"
TARGET = 100.0  # chunks per second per core (issue 13)


def make_corpus(root: Path, utts: int, seconds: float) -> tuple[list[str], AugmentSources]:
    """Speech wav files and the augmentation sources; returns (wav paths, sources)."""
    rng = np.random.default_rng(0)
    wav_scp = {}
    for i in range(utts):
        audio = synthesize_utterance(rng, sample_speaker(rng), random_channel(rng), seconds)
        path = root / "wav" / f"{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, 16000, subtype="PCM_16")
        wav_scp[f"spk{i}/v/{i:05d}"] = str(path)
    write_data_dir(root / "speech", wav_scp, {k: k.split("/")[0] for k in wav_scp})
    dirs = offline.make_synthetic_sources(root / "sources", num_noises=8, num_rirs=8, noise_seconds=10.0)
    sources = AugmentSources(
        rirs=dirs["rirs"], noise=dirs["noise"], music=dirs["music"], babble=root / "speech"
    )
    return list(wav_scp.values()), sources


def rate(fn: Callable[[int], object], count: int, per_call: int = 1) -> float:
    """Chunks per CPU second: ``fn(i)`` for i < count, each call handling ``per_call`` chunks."""
    for i in range(min(3, count)):  # warm caches (tables, RIRs, page cache)
        fn(i)
    start = time.process_time()
    for i in range(count):
        fn(i)
    return count * per_call / (time.process_time() - start)


def stage_rates(paths: list[str], sources: AugmentSources, n: int) -> list[tuple[str, float]]:
    """The rows of the main table."""
    cfg = FbankConfig()
    gen = [np.random.default_rng(i) for i in range(n)]
    chunks = [read_crop(paths[i % len(paths)], CHUNK, gen[i]) for i in range(n)]

    def path(i: int) -> str:
        return paths[i % len(paths)]

    def rng(i: int) -> np.random.Generator:
        return np.random.default_rng(1000 + i)

    def crop_speed(i: int, r: np.random.Generator) -> np.ndarray:
        factor = choose_speed(r)[1]
        return speed_perturb(read_crop(path(i), crop_length(CHUNK, factor), r), factor)[:CHUNK]

    def reverb(i: int) -> np.ndarray:
        r = rng(i)
        return reverberate(crop_speed(i, r), sources.random_rir(r)[1])

    def noise(i: int) -> np.ndarray:
        r = rng(i)
        wave = crop_speed(i, r)
        return add_noise(wave, sources.random_noise(len(wave), r)[2], 10.0)

    def chain_knf(i: int) -> np.ndarray:
        r = rng(i)
        wave, _ = augment(crop_speed(i, r), sources, r)
        return cmn(compute_fbank(wave + r.standard_normal(len(wave), dtype=np.float32)))

    def chain(i: int) -> np.ndarray:
        r = rng(i)
        return chunk_features(path(i), CHUNK, r, factor=choose_speed(r)[1], sources=sources)[0]

    return [
        ("kaldi-native-fbank on ready 2-s chunks (dither 0)", rate(lambda i: compute_fbank(chunks[i]), n)),
        ("online.fbank, dither 0", rate(lambda i: fbank(chunks[i], cfg, 0.0), n)),
        (
            "online.fbank, dither 1 on the waveform (default)",
            rate(lambda i: fbank(chunks[i], cfg, 1.0, rng(i)), n),
        ),
        (
            "online.fbank, dither 1 per frame (Kaldi's draws)",
            rate(lambda i: fbank(chunks[i], cfg, 1.0, rng(i), per_frame_dither=True), n),
        ),
        ("read_crop from wav files", rate(lambda i: read_crop(path(i), CHUNK, rng(i)), n)),
        ("+ speed perturbation (soxr, factor 1.0/0.9/1.1)", rate(lambda i: crop_speed(i, rng(i)), n)),
        ("+ reverb on every chunk", rate(reverb, n)),
        ("+ noise on every chunk (instead of reverb)", rate(noise, n)),
        ("whole chain: crop+speed+aug 0.6+fbank (dither 1)+CMN", rate(chain, n)),
        ("whole chain with kaldi-native-fbank + waveform dither", rate(chain_knf, n)),
    ]


def torch_rate(chunks: np.ndarray, calls: int) -> float:
    """Chunks per CPU second of the batched torch fbank, one thread, float32, dither per frame."""
    import torch

    from memsv_cli.data.online_fbank import fbank_torch

    torch.set_num_threads(1)
    batch = torch.from_numpy(chunks)
    gen = torch.Generator().manual_seed(0)
    return rate(lambda i: fbank_torch(batch, dither=1.0, generator=gen), calls, per_call=len(chunks))


def convolution_table(rirs: list[np.ndarray], x: np.ndarray, repeats: int) -> list[str]:
    """Milliseconds per reverb of a 2-s chunk, by RIR length and method."""
    lines = [
        "| RIR length | fftconvolve f32 | oaconvolve f32 | online.reverberate | augment.reverberate (f64) |"
    ]
    lines.append("|---|---|---|---|---|")
    for rir in rirs:
        ms = [
            1000 / rate(fn, repeats)
            for fn in (
                lambda i, r=rir: scipy.signal.fftconvolve(x, r),
                lambda i, r=rir: scipy.signal.oaconvolve(x, r),
                lambda i, r=rir: reverberate(x, r),
                lambda i, r=rir: offline.reverberate(x, r),
            )
        ]
        lines.append(f"| {len(rir) / 16000:.2f} s | " + " | ".join(f"{m:.2f} ms" for m in ms) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=300, help="chunks per row")
    parser.add_argument("--quick", action="store_true", help="a few chunks only (a smoke test)")
    args = parser.parse_args()
    n = 12 if args.quick else args.chunks
    with tempfile.TemporaryDirectory() as tmp:
        paths, sources = make_corpus(Path(tmp), 4 if args.quick else 40, 6.0)
        rows = stage_rates(paths, sources, n)
        chunks = np.stack(
            [read_crop(paths[i % len(paths)], CHUNK, np.random.default_rng(i)) for i in range(128)]
        )
        rows.append(
            (
                "torch fbank, batches of 128, CPU f32, dither per frame",
                torch_rate(chunks, 1 if args.quick else 3),
            )
        )
        rirs = [read_audio(e) for e in read_wav_scp(Path(tmp) / "sources" / "rirs" / "wav.scp").values()]
        rirs = sorted(rirs, key=len)
        conv = convolution_table(
            [rirs[0], rirs[len(rirs) // 2], rirs[-1]], chunks[0], 5 if args.quick else 100
        )
    base = rows[0][1]
    print(f"{n} chunks of {CHUNK} samples (200 frames) per row; CPU time, 1 thread (OMP_NUM_THREADS=1)")
    print("| stage | 2-s chunks / s / core | ratio to bare knf fbank |")
    print("|---|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.0f} | {value / base:.2f} |")
    chain = dict(rows)["whole chain: crop+speed+aug 0.6+fbank (dither 1)+CMN"]
    verdict = "meets" if chain >= TARGET else "MISSES"
    print(f"whole chain: {chain:.0f} chunks/s per core, {verdict} the target of {TARGET:.0f}")
    print()
    print("\n".join(conv))


if __name__ == "__main__":
    main()
