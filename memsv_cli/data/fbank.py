"""Kaldi-compatible log-Mel filterbank features, and the ``extract-fbank`` stage.

Feature options are Kaldi's ``compute-fbank-feats`` defaults (= ``torchaudio.compliance.kaldi.fbank``
defaults, as WeSpeaker uses them): povey window, pre-emphasis 0.97, DC removal, snip_edges, FFT size
rounded up to a power of two, power spectrum, mel bins from 20 Hz to Nyquist, log floored at FLT_EPSILON.
Only the bin count (80), frame length/shift (25/10 ms) and dither (0.0, i.e. deterministic) differ from
Kaldi's own defaults, as in WeSpeaker. No mean normalisation here: training and embedding apply CMN.

Outputs of :func:`extract_fbank` (``OUT_DIR``):
    feats.ark (or feats.JOB.ark with nj > 1), feats.scp, utt2num_frames, fbank.conf,
    and copies of utt2spk, spk2utt, trials/ so that OUT_DIR serves as a data directory by itself.
``feats.scp`` is the completion marker: it is removed first and written (atomically) last.
``OUT_DIR/.memsv.lock`` (:mod:`memsv_cli.lock`) keeps a second run out while one is writing.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue as queue_module
import re
import shutil
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import kaldi_native_fbank as knf
import kaldiio
import numpy as np

from memsv_cli.atomic import atomic_path, write_lines_atomic, write_text_atomic
from memsv_cli.data.audio import AudioError, read_audio
from memsv_cli.data.kaldi_dir import c_sorted, load_data_dir
from memsv_cli.errors import InputError, MemsvError
from memsv_cli.lock import hold_directory

BACKENDS = ("kaldi-native", "torchaudio")


@dataclass(frozen=True)
class FbankConfig:
    """Filterbank options (units in the names); defaults as WeSpeaker's VoxCeleb recipe."""

    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    sample_rate: int = 16000
    low_freq_hz: float = 20.0
    high_freq_hz: float = 0.0  # <= 0: offset from Nyquist, as in Kaldi

    def validate(self) -> None:
        """Raise :class:`MemsvError` for options Kaldi would reject."""
        if self.num_mel_bins < 3:
            raise MemsvError(f"--num-mel-bins must be at least 3, got {self.num_mel_bins}")
        if not 0 < self.frame_shift_ms <= self.frame_length_ms:
            raise MemsvError("need 0 < --frame-shift <= --frame-length (milliseconds)")
        if self.dither < 0:
            raise MemsvError(f"--dither must be >= 0, got {self.dither}")
        if self.sample_rate <= 0:
            raise MemsvError(f"sample rate must be positive, got {self.sample_rate}")

    @property
    def window_samples(self) -> int:
        """Frame length in samples (Kaldi rounds the product)."""
        return int(self.sample_rate * 0.001 * self.frame_length_ms)

    def num_frames(self, num_samples: int) -> int:
        """Frames Kaldi produces from ``num_samples`` with snip_edges=true."""
        shift = int(self.sample_rate * 0.001 * self.frame_shift_ms)
        if num_samples < self.window_samples:
            return 0
        return 1 + (num_samples - self.window_samples) // shift

    def kaldi_conf(self) -> str:
        """The options as a Kaldi ``conf/fbank.conf`` (for ``compute-fbank-feats --config``)."""
        return (
            f"--sample-frequency={self.sample_rate}\n--num-mel-bins={self.num_mel_bins}\n"
            f"--frame-length={self.frame_length_ms:g}\n--frame-shift={self.frame_shift_ms:g}\n"
            f"--dither={self.dither:g}\n--low-freq={self.low_freq_hz:g}\n--high-freq={self.high_freq_hz:g}\n"
            "--energy-floor=0.0\n"
        )


def _knf_options(cfg: FbankConfig) -> knf.FbankOptions:
    opts = knf.FbankOptions()
    frame = opts.frame_opts
    frame.samp_freq = float(cfg.sample_rate)
    frame.frame_length_ms = cfg.frame_length_ms
    frame.frame_shift_ms = cfg.frame_shift_ms
    frame.dither = cfg.dither
    frame.preemph_coeff = 0.97
    frame.remove_dc_offset = True
    frame.window_type = "povey"
    frame.round_to_power_of_two = True
    frame.snip_edges = True
    opts.mel_opts.num_bins = cfg.num_mel_bins
    opts.mel_opts.low_freq = cfg.low_freq_hz
    opts.mel_opts.high_freq = cfg.high_freq_hz
    opts.use_energy = False
    opts.energy_floor = 0.0
    opts.raw_energy = True
    opts.htk_compat = False
    opts.use_log_fbank = True
    opts.use_power = True
    return opts


def _fbank_kaldi_native(samples: np.ndarray, cfg: FbankConfig) -> np.ndarray:
    extractor = knf.OnlineFbank(_knf_options(cfg))
    extractor.accept_waveform(float(cfg.sample_rate), samples)
    extractor.input_finished()
    n = extractor.num_frames_ready
    if n == 0:
        return np.zeros((0, cfg.num_mel_bins), dtype=np.float32)
    return np.stack([extractor.get_frame(i) for i in range(n)]).astype(np.float32, copy=False)


def torchaudio_available() -> bool:
    """True when ``torchaudio.compliance.kaldi`` imports (its wheels often do not next to CPU torch)."""
    try:
        import torchaudio.compliance.kaldi  # noqa: F401
    except Exception:  # ImportError, or OSError/RuntimeError from a mismatched binary build
        return False
    return True


def _fbank_torchaudio(samples: np.ndarray, cfg: FbankConfig) -> np.ndarray:
    import torch
    import torchaudio.compliance.kaldi as ta_kaldi

    feats = ta_kaldi.fbank(
        torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).unsqueeze(0),
        num_mel_bins=cfg.num_mel_bins,
        frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms,
        dither=cfg.dither,
        sample_frequency=float(cfg.sample_rate),
        low_freq=cfg.low_freq_hz,
        high_freq=cfg.high_freq_hz,
        energy_floor=0.0,
        window_type="povey",
    )
    return feats.numpy().astype(np.float32, copy=False)


def compute_fbank(
    samples: np.ndarray, cfg: FbankConfig | None = None, backend: str = "kaldi-native"
) -> np.ndarray:
    """Log-Mel filterbank of one utterance.

    Args:
        samples: float array ``(samples,)`` at ``cfg.sample_rate`` in the int16 range (Kaldi scale).
        cfg: options; defaults to :class:`FbankConfig()`.
        backend: ``kaldi-native`` (default, kaldi-native-fbank) or ``torchaudio``.

    Returns:
        float32 array ``(frames, num_mel_bins)`` of natural-log Mel energies; ``frames`` is
        ``cfg.num_frames(len(samples))`` (0 when shorter than one window).
    """
    cfg = cfg or FbankConfig()
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if backend == "kaldi-native":
        return _fbank_kaldi_native(samples, cfg)
    if backend == "torchaudio":
        if not torchaudio_available():
            raise MemsvError("--backend torchaudio: torchaudio does not import here (use kaldi-native)")
        return _fbank_torchaudio(samples, cfg)
    raise MemsvError(f"unknown fbank backend {backend!r}; choose one of {', '.join(BACKENDS)}")


# ---------------------------------------------------------------------------------------------------
# The extract-fbank stage


@dataclass(frozen=True)
class _Job:
    index: int  # 1-based, as Kaldi's JOB
    ark: str
    scp: str
    wav_scp_path: str
    entries: tuple[tuple[int, str, str], ...]  # (wav.scp line, utterance, spec)
    cfg: FbankConfig
    backend: str


@dataclass(frozen=True)
class FbankSummary:
    """What :func:`extract_fbank` produced: counts, and audio duration in seconds."""

    out_dir: Path
    num_utts: int
    num_frames: int
    audio_seconds: float
    num_jobs: int


_progress_queue = None  # set in worker processes only (by _worker_main)


def _run_job(job: _Job, report: Callable[[int], None] | None = None) -> tuple[dict[str, int], int]:
    """Compute and write one job's ark/scp. Returns (utt -> frames, total samples)."""
    frames: dict[str, int] = {}
    total_samples = 0
    with kaldiio.WriteHelper(f"ark,scp:{job.ark},{job.scp}") as writer:
        for line, utt, spec in job.entries:
            try:
                samples = read_audio(spec, sample_rate=job.cfg.sample_rate)
            except AudioError as err:
                raise InputError(job.wav_scp_path, f"utterance {utt!r}: {err}", line) from None
            feats = compute_fbank(samples, job.cfg, job.backend)
            if feats.shape[0] == 0:
                raise InputError(
                    job.wav_scp_path,
                    f"utterance {utt!r}: {len(samples)} samples is shorter than one "
                    f"{job.cfg.frame_length_ms:g} ms frame",
                    line,
                )
            writer(utt, feats)
            frames[utt] = int(feats.shape[0])
            total_samples += len(samples)
            if report is not None:
                report(1)
            elif _progress_queue is not None:
                _progress_queue.put(1)
    return frames, total_samples


def _ignore_signal(signum: int, frame: object) -> None:
    """Signal handler that does nothing (see :func:`_worker_main`)."""


def _os_error(
    errno_: int | None, strerror: str | None, filename: object, filename2: object, text: str
) -> OSError:
    """Rebuild a worker's ``OSError`` in the parent (``OSError(errno, ...)`` picks the subclass)."""
    if errno_ is None:
        return OSError(text)
    return OSError(errno_, strerror, filename, None, filename2)


def _worker_main(job: _Job, progress_queue, result_queue) -> None:  # noqa: ANN001 - mp queues
    """Body of one worker process: run the job, send back ``(index, kind, payload)``.

    ``kind`` is ``ok`` (payload: the job's result), ``input`` (a user error: its one-line message),
    ``os`` (an ``OSError`` such as a full disk: its errno, strerror, filename, filename2) or ``bug``
    (anything else, with its traceback as text). Errors are sent as plain values because ``InputError``
    (and library ``OSError`` subclasses) take other constructor arguments and do not survive unpickling.

    Ctrl-C reaches the whole process group; a worker ignores it (its parent stops it), so that only the
    parent reports the interrupt. A Python-level handler, not ``SIG_IGN``: exec'd pipe commands get the
    default action back and die with the group, where an ignored signal would be inherited.
    """
    global _progress_queue
    _progress_queue = progress_queue
    signal.signal(signal.SIGINT, _ignore_signal)
    try:
        result_queue.put((job.index, "ok", _run_job(job)))
    except MemsvError as err:
        result_queue.put((job.index, "input", str(err)))
    except OSError as err:
        result_queue.put((job.index, "os", (err.errno, err.strerror, err.filename, err.filename2, str(err))))
    except Exception:
        import traceback

        result_queue.put((job.index, "bug", traceback.format_exc()))


_JOB_ARK = re.compile(r"^feats(\.\d+)?\.ark$")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def split_jobs(n_items: int, nj: int) -> list[range]:
    """Contiguous, near-equal index ranges (Kaldi ``split_scp.pl`` style); empty ranges dropped."""
    nj = max(1, min(nj, n_items))
    bounds = [round(i * n_items / nj) for i in range(nj + 1)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _copy_data_files(data_dir: Path, out_dir: Path) -> None:
    for name in ("utt2spk", "spk2utt"):
        if (data_dir / name).is_file():
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(data_dir / name, tmp)
    trials = data_dir / "trials"
    if trials.is_dir():
        (out_dir / "trials").mkdir(exist_ok=True)
        for f in sorted(trials.iterdir()):
            if f.is_file():
                with atomic_path(out_dir / "trials" / f.name) as tmp:
                    shutil.copyfile(f, tmp)


def extract_fbank(
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: FbankConfig | None = None,
    *,
    nj: int = 1,
    backend: str = "kaldi-native",
    progress: Callable[[int, int], None] | None = None,
) -> FbankSummary:
    """Compute fbank features for every utterance of a data directory (the ``extract-fbank`` stage).

    Args:
        data_dir: Kaldi data directory (``wav.scp``, ``utt2spk``; validated first).
        out_dir: output directory (created); see the module docstring for its files. Held with
            :func:`memsv_cli.lock.hold_directory` while the stage runs: one run per output directory.
        cfg: fbank options.
        nj: number of worker processes; each writes its own ``feats.JOB.ark``.
        backend: ``kaldi-native`` or ``torchaudio``.
        progress: called as ``progress(done, total)`` in utterances while the work runs.

    Raises:
        MemsvError / InputError: bad options or input (naming file, line and utterance);
            :class:`~memsv_cli.lock.DirectoryInUseError` when another run holds ``out_dir``.
        OSError: writing failed (disk full, permissions), also inside a worker.
        On any error or KeyboardInterrupt, the arks written so far are removed and no ``feats.scp`` exists.
    """
    cfg = cfg or FbankConfig()
    cfg.validate()
    if backend not in BACKENDS:
        raise MemsvError(f"unknown fbank backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torchaudio" and not torchaudio_available():
        raise MemsvError("--backend torchaudio: torchaudio does not import here (use kaldi-native)")
    if nj < 1:
        raise MemsvError(f"--nj must be at least 1, got {nj}")
    data_dir = Path(data_dir)
    data = load_data_dir(data_dir)
    if data_dir.resolve() == Path(out_dir).resolve():
        raise MemsvError(f"{Path(out_dir).resolve()}: output directory must differ from the data directory")
    with hold_directory(out_dir, "output directory"):  # creates it
        out_dir = Path(out_dir).resolve()
        # The scp marks completion: drop the old one before touching any ark it may point to.
        for name in ("feats.scp", "utt2num_frames"):
            _remove_quietly(out_dir / name)
        entries = [(line, utt, spec) for line, (utt, spec) in enumerate(data.wav_scp.items(), start=1)]
        jobs = _make_jobs(entries, nj, out_dir, str(data_dir / "wav.scp"), cfg, backend)
        utt2frames, samples = _run_and_write(jobs, data_dir, out_dir, cfg, progress)
        # Arks of an earlier run with another --nj are no longer referenced.
        used = {Path(job.ark).name for job in jobs}
        for f in out_dir.iterdir():
            if _JOB_ARK.match(f.name) and f.name not in used:
                _remove_quietly(f)
    return FbankSummary(out_dir, len(entries), sum(utt2frames.values()), samples / cfg.sample_rate, len(jobs))


def _make_jobs(
    entries: list[tuple[int, str, str]],
    nj: int,
    out_dir: Path,
    wav_scp_path: str,
    cfg: FbankConfig,
    backend: str,
) -> list[_Job]:
    """Split the ``(line, utterance, spec)`` entries into contiguous jobs writing under ``out_dir``."""
    ranges = split_jobs(len(entries), nj)
    single = len(ranges) == 1
    return [
        _Job(
            index=j,
            ark=str(out_dir / ("feats.ark" if single else f"feats.{j}.ark")),
            scp=str(out_dir / f".feats.{j}.scp.tmp"),
            wav_scp_path=wav_scp_path,
            entries=tuple(entries[i] for i in r),
            cfg=cfg,
            backend=backend,
        )
        for j, r in enumerate(ranges, start=1)
    ]


def _run_and_write(
    jobs: list[_Job],
    data_dir: Path,
    out_dir: Path,
    cfg: FbankConfig,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, int], int]:
    """Run the jobs and write the outputs, ``feats.scp`` last; returns (utt -> frames, total samples).

    On any exception (KeyboardInterrupt included) this run's arks are removed before it propagates.
    """
    total = sum(len(job.entries) for job in jobs)
    done = 0

    def report(k: int) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress(done, total)

    try:
        results = [_run_job(jobs[0], report)] if len(jobs) == 1 else _run_parallel(jobs, report)
        utt2frames: dict[str, int] = {}
        scp_lines: list[str] = []
        samples = 0
        for job, (frames, n_samples) in zip(jobs, results, strict=True):
            utt2frames.update(frames)
            samples += n_samples
            scp_lines += Path(job.scp).read_text(encoding="utf-8").splitlines()
        order = {utt: i for i, utt in enumerate(c_sorted(utt2frames))}
        scp_lines.sort(key=lambda ln: order[ln.split(maxsplit=1)[0]])
        _copy_data_files(data_dir, out_dir)
        write_text_atomic(out_dir / "fbank.conf", cfg.kaldi_conf())
        write_lines_atomic(out_dir / "utt2num_frames", [f"{u} {utt2frames[u]}" for u in c_sorted(utt2frames)])
        write_lines_atomic(out_dir / "feats.scp", scp_lines)  # last: the completion marker
    except BaseException:
        for job in jobs:
            _remove_quietly(Path(job.ark))
        raise
    finally:
        for job in jobs:
            _remove_quietly(Path(job.scp))
    return utt2frames, samples


def _run_parallel(jobs: Sequence[_Job], report: Callable[[int], None]) -> list[tuple[dict[str, int], int]]:
    """Run each job in its own worker process; on the first failure stop all workers and raise.

    A worker that dies without reporting (killed, out of memory) is an error too, never a hang.
    """
    # fork where the platform has it (as torch's DataLoader does): workers start in milliseconds instead of
    # re-importing the CLI (typer, torch) as spawn would. The workers only run numpy, soundfile and
    # kaldi-native-fbank, none of which relies on threads the parent may have started.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    progress_queue, result_queue = ctx.Queue(), ctx.Queue()
    procs = {
        job.index: ctx.Process(target=_worker_main, args=(job, progress_queue, result_queue), daemon=True)
        for job in jobs
    }
    results: dict[int, tuple[dict[str, int], int]] = {}
    try:
        for proc in procs.values():
            proc.start()
        while len(results) < len(jobs):
            with contextlib.suppress(queue_module.Empty):
                while True:
                    report(progress_queue.get(timeout=0.05))
            with contextlib.suppress(queue_module.Empty):
                while True:
                    index, kind, payload = result_queue.get_nowait()
                    if kind == "input":
                        raise MemsvError(payload)
                    if kind == "os":
                        raise _os_error(*payload)
                    if kind == "bug":
                        raise RuntimeError(f"extract-fbank job {index} failed:\n{payload}")
                    results[index] = payload
            for index, proc in procs.items():
                # Checked after draining the results: a worker reports, then exits 0.
                if index not in results and proc.exitcode not in (None, 0) and result_queue.empty():
                    raise MemsvError(
                        f"extract-fbank job {index} died (exit code {proc.exitcode}; out of memory or killed)"
                    )
        with contextlib.suppress(queue_module.Empty):
            while True:
                report(progress_queue.get_nowait())
        return [results[job.index] for job in jobs]
    finally:
        # After an error or Ctrl-C the other workers must not keep writing arks.
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
        for proc in procs.values():
            if proc.pid is not None:
                proc.join()
