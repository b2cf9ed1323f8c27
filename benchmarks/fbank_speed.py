"""Real-time factor of fbank extraction: how many seconds of audio one CPU core turns into features per
second, for the feature computation alone and for the whole ``extract-fbank`` stage (read WAV, compute,
write ark/scp), and against torchaudio's ``compliance.kaldi.fbank`` when it imports.

CPU time (``time.process_time``) is reported beside wall time because the machine may be shared: per
core, CPU time is the fair measure. Usage::

    .venv/bin/python benchmarks/fbank_speed.py [--utts 40] [--seconds 6] [--torchaudio-kaldi-py PATH]

torchaudio's Linux wheels do not import next to a CPU torch, but ``compliance/kaldi.py`` is pure torch:
``--torchaudio-kaldi-py`` loads that one file from an unpacked wheel (``pip download torchaudio --no-deps``,
``unzip ... 'torchaudio/compliance/*'``) to time it and to measure the largest difference from ours.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from memsv_cli.data.audio import read_audio  # noqa: E402
from memsv_cli.data.fbank import compute_fbank, extract_fbank, torchaudio_available  # noqa: E402
from memsv_cli.data.kaldi_dir import write_data_dir  # noqa: E402
from memsv_cli.data.mini import random_channel, sample_speaker, synthesize_utterance  # noqa: E402


def _timed(fn) -> tuple[float, float]:  # noqa: ANN001
    """(wall seconds, CPU seconds of this process) for one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _load_torchaudio_kaldi(path: Path | None):  # noqa: ANN202
    """torchaudio's ``compliance.kaldi`` module: the installed one, or the file at ``path``."""
    if torchaudio_available():
        import torchaudio.compliance.kaldi as ta_kaldi

        return ta_kaldi
    if path is None:
        return None
    import importlib.util
    import sys
    import types

    # fbank() needs only torch; the file imports torchaudio by name (for mfcc's DCT), so a stub suffices.
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    spec = importlib.util.spec_from_file_location("torchaudio_compliance_kaldi", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utts", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--torchaudio-kaldi-py", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wav_scp, utt2spk, signals = {}, {}, []
        for i in range(args.utts):
            spk = sample_speaker(rng)
            audio = synthesize_utterance(rng, spk, random_channel(rng), args.seconds)
            path = tmp / f"{i:04d}.wav"
            sf.write(path, audio, 16000, subtype="PCM_16")
            key = f"spk{i % 4}/v/{i:05d}"
            wav_scp[key], utt2spk[key] = str(path), f"spk{i % 4}"
            signals.append(read_audio(str(path)))
        write_data_dir(tmp / "data", wav_scp, utt2spk)
        audio_s = args.utts * args.seconds

        rows = []
        wall, cpu = _timed(lambda: [compute_fbank(x) for x in signals])
        rows.append(("compute_fbank, kaldi-native-fbank", wall, cpu))
        ta_kaldi = _load_torchaudio_kaldi(args.torchaudio_kaldi_py)
        max_diff = None
        if ta_kaldi is not None:
            tensors = [torch.from_numpy(x).unsqueeze(0) for x in signals]
            outs = []

            def run_ta() -> None:
                for t in tensors:
                    outs.append(ta_kaldi.fbank(t, num_mel_bins=80, dither=0.0, energy_floor=0.0))

            wall, cpu = _timed(run_ta)
            rows.append(("torchaudio compliance.kaldi.fbank (1 thread)", wall, cpu))
            max_diff = max(
                float(np.abs(compute_fbank(x) - o.numpy()).max()) for x, o in zip(signals, outs, strict=True)
            )
        wall, cpu = _timed(lambda: extract_fbank(tmp / "data", tmp / "fbank1", nj=1))
        rows.append(("extract-fbank stage, --nj 1 (read + compute + write)", wall, cpu))
        wall, _ = _timed(lambda: extract_fbank(tmp / "data", tmp / "fbank2", nj=2))
        rows.append(("extract-fbank stage, --nj 2 (wall only; workers' CPU not counted)", wall, float("nan")))

    print(
        f"{args.utts} utterances x {args.seconds:g} s = {audio_s:g} s of 16 kHz audio; torch threads 1; "
        f"torchaudio {'not available (skipped)' if ta_kaldi is None else 'compared'}"
    )
    print("| what | wall s | CPU s | x real time (wall) | x real time per core (CPU) |")
    print("|---|---|---|---|---|")
    for name, wall, cpu in rows:
        per_core = f"{audio_s / cpu:.0f}" if cpu == cpu else "-"
        cpu_s = f"{cpu:.2f}" if cpu == cpu else "-"
        print(f"| {name} | {wall:.2f} | {cpu_s} | {audio_s / wall:.0f} | {per_core} |")
    base = rows[0][2]
    for name, _, cpu in rows[1:]:
        if cpu == cpu:
            print(f"CPU time relative to kaldi-native compute: {name}: {cpu / base:.2f}x")
    if max_diff is not None:
        print(f"max |kaldi-native - torchaudio| over all frames and bins: {max_diff:.2e} (log-Mel)")


if __name__ == "__main__":
    main()
