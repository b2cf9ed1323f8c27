"""Kaldi-compatible log-Mel filterbank features, and the ``extract-fbank`` stage.

Feature options are Kaldi's ``compute-fbank-feats`` defaults (= ``torchaudio.compliance.kaldi.fbank``
defaults, as WeSpeaker uses them): povey window, pre-emphasis 0.97, DC removal, snip_edges, FFT size
rounded up to a power of two, power spectrum, mel bins from 20 Hz to Nyquist, log floored at FLT_EPSILON.
Only the bin count (80), frame length/shift (25/10 ms) and dither (0.0, i.e. deterministic) differ from
Kaldi's own defaults, as in WeSpeaker. No mean normalisation here: training and embedding apply CMN.

Outputs of :func:`extract_fbank` (``OUT_DIR``):
    feats.ark (or feats.JOB.ark with nj > 1), feats.scp, utt2num_frames, fbank.conf,
    and copies of utt2spk, spk2utt, trials/ so that OUT_DIR serves as a data directory by itself;
    with ``skip_bad``, bad_utts (``<utt> <reason>``) and utt2spk/spk2utt without those utterances.
``feats.scp`` is the completion marker: it is removed first and written (atomically) last.

Resuming: job JOB writes ``feats.JOB.ark``, then ``feats.JOB.json`` (its frame counts, skipped
utterances and a fingerprint of its options and entries), then renames ``feats.JOB.scp`` into place: that
marks the job complete. A failed or interrupted run keeps its complete jobs (and removes the arks of the
others); a rerun with the same ``nj`` and input reuses them and runs only the rest. ``feats.scp`` is
assembled from the job parts, which are then removed (a rerun after success starts afresh).
``OUT_DIR/.memsv.lock`` (:mod:`memsv_cli.lock`) keeps a second run out while one is writing.

:func:`run_jobs` (one worker process per job) also runs ``make-shards`` (:mod:`memsv_cli.data.shards`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import queue as queue_module
import re
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

import kaldi_native_fbank as knf
import kaldiio
import numpy as np

from memsv_cli.atomic import atomic_path, write_lines_atomic, write_text_atomic
from memsv_cli.data.audio import (
    AudioError,
    note_interrupt,
    raise_if_interrupted,
    read_audio,
    stop_on_sigterm,
)
from memsv_cli.data.kaldi_dir import (
    DataDir,
    c_sorted,
    load_data_dir,
    utt2spk_to_spk2utt,
    write_spk2utt,
    write_table,
)
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

    @classmethod
    def from_kaldi_conf(cls, path: str | Path) -> FbankConfig:
        """Read the ``fbank.conf`` that :meth:`kaldi_conf` wrote (extract-fbank's output dir).

        Raises:
            InputError: an unreadable file, a line that is not ``--name=value``, an option this
                implementation does not have, or a value that is not a number.
        """
        fields = {
            "sample-frequency": ("sample_rate", int),
            "num-mel-bins": ("num_mel_bins", int),
            "frame-length": ("frame_length_ms", float),
            "frame-shift": ("frame_shift_ms", float),
            "dither": ("dither", float),
            "low-freq": ("low_freq_hz", float),
            "high-freq": ("high_freq_hz", float),
        }
        values: dict[str, float | int] = {}
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(path, f"cannot read the fbank options ({err})") from None
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            name, sep, value = text.removeprefix("--").partition("=")
            if not text.startswith("--") or not sep:
                raise InputError(path, f"expected --name=value, got {text!r}", number)
            if name not in fields and name != "energy-floor":
                raise InputError(path, f"unsupported fbank option --{name}={value}", number)
            try:
                number_value = float(value)
            except ValueError:
                raise InputError(path, f"--{name}: not a number: {value!r}", number) from None
            if name == "energy-floor":  # memsv always uses 0 (no floor on the log-Mel energies)
                if number_value != 0.0:
                    raise InputError(
                        path, f"unsupported fbank option --{name}={value} (memsv uses 0)", number
                    )
                continue
            key, kind = fields[name]
            values[key] = kind(number_value)
        cfg = cls(**values)  # type: ignore[arg-type]
        cfg.validate()
        return cfg


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
    nj: int  # the --nj the run was split for (a job of another split is never reused)
    ark: str
    scp: str  # feats.JOB.scp: renamed into place when the job is complete (the job's completion marker)
    record: str  # feats.JOB.json: what the job produced, and the fingerprint of what it was asked
    wav_scp_path: str
    entries: tuple[tuple[int, str, str], ...]  # (wav.scp line, utterance, spec)
    cfg: FbankConfig
    backend: str
    skip_bad: bool

    def fingerprint(self) -> str:
        """Hash of everything the job's ark is a function of, except the audio bytes themselves."""
        what = [_RECORD_FORMAT, asdict(self.cfg), self.backend, self.nj, self.index, self.ark, self.entries]
        return hashlib.sha256(json.dumps(what).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _JobResult:
    frames: dict[str, int]  # utterance -> frames written
    samples: int  # audio samples read (for the summary's duration)
    bad: tuple[tuple[str, str], ...]  # (utterance, reason) left out with skip_bad


@dataclass(frozen=True)
class FbankSummary:
    """What :func:`extract_fbank` produced: counts, and audio duration in seconds."""

    out_dir: Path
    num_utts: int
    num_frames: int
    audio_seconds: float
    num_jobs: int
    num_bad: int = 0  # utterances left out with skip_bad (listed in OUT_DIR/bad_utts)
    num_reused_jobs: int = 0  # jobs complete from an earlier, unfinished run


_RECORD_FORMAT = 1  # bump when what a job writes changes: records of another format are not reused
_JOB_ARK = re.compile(r"^feats(\.\d+)?\.ark$")


def audio_fbank(spec: str, cfg: FbankConfig, backend: str = "kaldi-native") -> tuple[int, np.ndarray]:
    """(samples read, ``(frames, num_mel_bins)`` float32 features) of one wav.scp entry.

    The one path from audio to features for extract-fbank and for embedding audio directly
    (``extract-embeddings`` on a wav.scp), so both give the same matrices.

    Raises:
        AudioError: audio that cannot be used (see :func:`read_audio`), or shorter than one frame.
    """
    samples = read_audio(spec, sample_rate=cfg.sample_rate)
    return len(samples), fbank_of_samples(samples, cfg, backend)


def fbank_of_samples(samples: np.ndarray, cfg: FbankConfig, backend: str = "kaldi-native") -> np.ndarray:
    """:func:`compute_fbank` that refuses audio shorter than one frame (:class:`AudioError`)."""
    feats = compute_fbank(samples, cfg, backend)
    if feats.shape[0] == 0:
        raise AudioError(f"{len(samples)} samples is shorter than one {cfg.frame_length_ms:g} ms frame")
    return feats


def _utterance_features(job: _Job, spec: str) -> tuple[int, np.ndarray]:
    """(samples read, features) of one wav.scp entry; AudioError for audio that cannot be used."""
    return audio_fbank(spec, job.cfg, job.backend)


def _run_job(job: _Job, report: Report) -> _JobResult:
    """Compute one job's features into its ark, then its record, then rename its scp into place.

    ``report(1)`` is called per utterance. A bad utterance raises :class:`InputError` (file, line,
    utterance), or with ``job.skip_bad`` is left out and listed in the result.
    """
    frames: dict[str, int] = {}
    bad: list[tuple[str, str]] = []
    total = 0
    with atomic_path(job.scp) as tmp_scp:  # the scp appears only once the ark and the record are complete
        with kaldiio.WriteHelper(f"ark,scp:{job.ark},{tmp_scp}") as writer:
            for line, utt, spec in job.entries:
                try:
                    n_samples, feats = _utterance_features(job, spec)
                except AudioError as err:
                    raise_if_interrupted(err)
                    if not job.skip_bad:
                        raise InputError(job.wav_scp_path, f"utterance {utt!r}: {err}", line) from None
                    bad.append((utt, str(err)))
                else:
                    writer(utt, feats)
                    frames[utt] = int(feats.shape[0])
                    total += n_samples
                report(1)
        result = _JobResult(frames, total, tuple(bad))
        record = {"fingerprint": job.fingerprint(), "nj": job.nj, "ark_bytes": os.path.getsize(job.ark)}
        record |= {"samples": total, "frames": list(frames.items()), "bad": bad}
        write_text_atomic(job.record, json.dumps(record))
    return result


def _load_record(job: _Job) -> _JobResult | None:
    """The result of ``job`` from an earlier run, or None when it must be (re)done.

    A job is reused when its scp exists (it completed), its record's fingerprint matches (same options,
    same entries, same ark path), its ark still has the size it was written with, and it skipped nothing
    unless this run skips bad utterances too.
    """
    try:
        if not Path(job.scp).is_file():
            return None
        record = json.loads(Path(job.record).read_text(encoding="utf-8"))
        if record["fingerprint"] != job.fingerprint() or (record["bad"] and not job.skip_bad):
            return None
        if os.path.getsize(job.ark) != record["ark_bytes"]:  # a lost or cut ark (FileNotFoundError: redo)
            return None
        frames = {str(utt): int(n) for utt, n in record["frames"]}
        bad = tuple((str(utt), str(reason)) for utt, reason in record["bad"])
        return _JobResult(frames, int(record["samples"]), bad)
    except (OSError, ValueError, KeyError, TypeError):  # missing, partial or foreign record: redo
        return None


def _reusable_jobs(jobs: list[_Job], out_dir: Path, notify: Callable[[str], None]) -> dict[int, _JobResult]:
    """Results of the jobs an earlier unfinished run completed; files of every other job are removed.

    A different ``--nj`` splits the utterances differently, so nothing is reused (and ``notify`` says so).
    """
    nj = jobs[0].nj
    wanted = {job.record for job in jobs}
    old_nj: set[int] = set()
    for path in list(out_dir.glob("feats.*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            old_nj.add(int(json.loads(path.read_text(encoding="utf-8"))["nj"]))
        if str(path) not in wanted:
            _remove_job_files(path)
    if old_nj - {nj}:
        notify(
            f"{out_dir} holds an unfinished run with --nj {max(old_nj - {nj})}: starting over with --nj {nj}"
        )
    done: dict[int, _JobResult] = {}
    for job in jobs:
        result = _load_record(job) if not old_nj - {nj} else None
        if result is None:
            _remove_job_files(Path(job.record))
        else:
            done[job.index] = result
    if done:
        notify(f"resuming the unfinished run in {out_dir}: {len(done)} of {len(jobs)} jobs already complete")
    return done


def _remove_job_files(record: Path) -> None:
    """Remove a job's record and its scp (``feats.JOB.json`` -> ``feats.JOB.scp``); the ark is rewritten."""
    _remove_quietly(record.with_suffix(".scp"))
    _remove_quietly(record)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _remove_temporaries(directory: Path, pattern: str) -> None:
    """Remove temporary files (``atomic_path`` names) a killed worker could not clean up.

    Only called while the directory's lock is held, so no other run is writing them.
    """
    for path in directory.glob(pattern):
        _remove_quietly(path)


def split_jobs(n_items: int, nj: int) -> list[range]:
    """Contiguous, near-equal index ranges (Kaldi ``split_scp.pl`` style); empty ranges dropped."""
    nj = max(1, min(nj, n_items))
    bounds = [round(i * n_items / nj) for i in range(nj + 1)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _copy_data_files(data_dir: Path, out_dir: Path, keep: Mapping[str, str] | None = None) -> None:
    """Copy utt2spk, spk2utt and trials/; with ``keep`` (utt2spk of the utterances written), utt2spk and
    spk2utt are written for those utterances only (Kaldi ``fix_data_dir.sh`` after skipped ones)."""
    if keep is not None:
        write_table(out_dir / "utt2spk", keep)
        write_spk2utt(out_dir / "spk2utt", utt2spk_to_spk2utt(keep))
    else:
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


def write_bad_utts(path: Path, bad: Sequence[tuple[str, str]]) -> None:
    """``bad_utts``: one ``<utterance> <reason>`` line per left-out utterance, C-sorted, atomically."""
    reasons = dict(bad)
    write_lines_atomic(path, [f"{utt} {' '.join(reasons[utt].split())}" for utt in c_sorted(reasons)])


def extract_fbank(
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: FbankConfig | None = None,
    *,
    nj: int = 1,
    backend: str = "kaldi-native",
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> FbankSummary:
    """Compute fbank features for every utterance of a data directory (the ``extract-fbank`` stage).

    Args:
        data_dir: Kaldi data directory (``wav.scp``, ``utt2spk``; validated first).
        out_dir: output directory (created); see the module docstring for its files. Held with
            :func:`memsv_cli.lock.hold_directory` while the stage runs: one run per output directory.
        cfg: fbank options.
        nj: number of jobs, each in its own worker process, each writing its own ``feats.JOB.ark``.
        backend: ``kaldi-native`` or ``torchaudio``.
        skip_bad: leave out utterances whose audio cannot be used and list them in ``OUT_DIR/bad_utts``
            (without it the first one is an error).
        progress: called as ``progress(done, total)`` in utterances while the work runs.
        notify: called with a one-line notice when an unfinished earlier run is resumed or discarded.

    Raises:
        MemsvError / InputError: bad options or input (naming file, line and utterance); the jobs that
            completed are kept, so that a rerun with the same ``nj`` redoes only the others.
            :class:`~memsv_cli.lock.DirectoryInUseError` when another run holds ``out_dir``.
        OSError: writing failed (disk full, permissions), also inside a worker.
        On any error or KeyboardInterrupt no ``feats.scp`` exists and no unfinished job leaves its ark.
    """
    cfg = cfg or FbankConfig()
    _check_options(cfg, nj, backend)
    data_dir = Path(data_dir)
    data = load_data_dir(data_dir)
    if data_dir.resolve() == Path(out_dir).resolve():
        raise MemsvError(f"{Path(out_dir).resolve()}: output directory must differ from the data directory")
    with hold_directory(out_dir, "output directory"):  # creates it
        out_dir = Path(out_dir).resolve()
        # The scp marks completion: drop the old one before touching any ark it may point to.
        for name in ("feats.scp", "utt2num_frames", "bad_utts"):
            _remove_quietly(out_dir / name)
        _remove_temporaries(out_dir, ".feats.*.tmp")
        entries = [(line, utt, spec) for line, (utt, spec) in enumerate(data.wav_scp.items(), start=1)]
        jobs = _make_jobs(entries, nj, out_dir, str(data_dir / "wav.scp"), cfg, backend, skip_bad)
        done = _reusable_jobs(jobs, out_dir, notify or (lambda message: None))
        results = _run_pending(jobs, done, progress)
        summary = _write_outputs(jobs, results, data, out_dir)
        # The run is complete: job parts go (a later run starts afresh), as do arks of another --nj.
        for job in jobs:
            _remove_job_files(Path(job.record))
        used = {Path(job.ark).name for job in jobs}
        for f in out_dir.iterdir():
            if _JOB_ARK.match(f.name) and f.name not in used:
                _remove_quietly(f)
    return replace(summary, num_reused_jobs=len(done))


def _check_options(cfg: FbankConfig, nj: int, backend: str) -> None:
    cfg.validate()
    if backend not in BACKENDS:
        raise MemsvError(f"unknown fbank backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torchaudio" and not torchaudio_available():
        raise MemsvError("--backend torchaudio: torchaudio does not import here (use kaldi-native)")
    if nj < 1:
        raise MemsvError(f"--nj must be at least 1, got {nj}")


def _make_jobs(
    entries: list[tuple[int, str, str]],
    nj: int,
    out_dir: Path,
    wav_scp_path: str,
    cfg: FbankConfig,
    backend: str,
    skip_bad: bool,
) -> list[_Job]:
    """Split the ``(line, utterance, spec)`` entries into contiguous jobs writing under ``out_dir``."""
    ranges = split_jobs(len(entries), nj)
    single = len(ranges) == 1
    return [
        _Job(
            index=j,
            nj=nj,
            ark=str(out_dir / ("feats.ark" if single else f"feats.{j}.ark")),
            scp=str(out_dir / f"feats.{j}.scp"),
            record=str(out_dir / f"feats.{j}.json"),
            wav_scp_path=wav_scp_path,
            entries=tuple(entries[i] for i in r),
            cfg=cfg,
            backend=backend,
            skip_bad=skip_bad,
        )
        for j, r in enumerate(ranges, start=1)
    ]


def _run_pending(
    jobs: list[_Job], done: dict[int, _JobResult], progress: Callable[[int, int], None] | None
) -> dict[int, _JobResult]:
    """Run the jobs not in ``done``; returns every job's result.

    A job that did not complete (error, Ctrl-C, killed worker) leaves no ark; complete ones stay. Input
    errors are raised after the other jobs ran to their end, as the first failed job's one line.
    """
    pending = [job for job in jobs if job.index not in done]
    report = progress_counter(
        sum(len(job.entries) for job in jobs),
        sum(len(job.entries) for job in jobs if job.index in done),
        progress,
    )
    try:
        results, errors = run_jobs(pending, _run_job, report, stage="extract-fbank")
    finally:
        for job in pending:
            if not Path(job.scp).exists():
                _remove_quietly(Path(job.ark))
        if jobs:
            _remove_temporaries(Path(jobs[0].scp).parent, ".feats.*.tmp")
    if errors:
        raise MemsvError(failure_line(errors, len(jobs) - len(errors), len(jobs), "jobs"))
    return {**done, **results}


def _write_outputs(
    jobs: list[_Job], results: dict[int, _JobResult], data: DataDir, out_dir: Path
) -> FbankSummary:
    """Assemble the outputs from the job parts, ``feats.scp`` last (the completion marker)."""
    utt2frames: dict[str, int] = {}
    bad: list[tuple[str, str]] = []
    scp_lines: list[str] = []
    for job in jobs:
        utt2frames.update(results[job.index].frames)
        bad += results[job.index].bad
        scp_lines += Path(job.scp).read_text(encoding="utf-8").splitlines()
    order = {utt: i for i, utt in enumerate(c_sorted(utt2frames))}
    scp_lines.sort(key=lambda ln: order[ln.split(maxsplit=1)[0]])
    if bad:
        write_bad_utts(out_dir / "bad_utts", bad)
        if not utt2frames:
            raise MemsvError(
                f"{data.path / 'wav.scp'}: none of its {len(bad)} utterances could be read "
                f"(reasons in {out_dir / 'bad_utts'})"
            )
    keep = {utt: data.utt2spk[utt] for utt in utt2frames} if bad else None
    _copy_data_files(data.path, out_dir, keep)
    cfg = jobs[0].cfg
    write_text_atomic(out_dir / "fbank.conf", cfg.kaldi_conf())
    write_lines_atomic(out_dir / "utt2num_frames", [f"{u} {utt2frames[u]}" for u in c_sorted(utt2frames)])
    write_lines_atomic(out_dir / "feats.scp", scp_lines)  # last: the completion marker
    samples = sum(results[job.index].samples for job in jobs)
    return FbankSummary(
        out_dir, len(utt2frames), sum(utt2frames.values()), samples / cfg.sample_rate, len(jobs), len(bad)
    )


# ---------------------------------------------------------------------------------------------------
# Jobs in worker processes (extract-fbank, make-shards)

Report = Callable[[int], None]  # report(k): k more utterances done
_JobT = TypeVar("_JobT")
_ResultT = TypeVar("_ResultT")


def progress_counter(total: int, done: int, progress: Callable[[int, int], None] | None) -> Report:
    """A ``report(k)`` that adds ``k`` to ``done`` and calls ``progress(done, total)`` (shown at once)."""
    count = done

    def report(k: int) -> None:
        nonlocal count
        count += k
        if progress is not None:
            progress(count, total)

    report(0)
    return report


def failure_line(errors: Mapping[int, str], complete: int, total: int, unit: str) -> str:
    """One line for failed jobs/shards: the first one's error, how many others failed, what was kept."""
    line = errors[min(errors)]
    if len(errors) > 1:
        line += f" ({len(errors) - 1} more failed)"
    if complete:
        line += f" [{complete} of {total} {unit} complete and kept: a rerun redoes only the others]"
    return line


def run_jobs(
    jobs: Sequence[_JobT], run: Callable[[_JobT, Report], _ResultT], report: Report, *, stage: str
) -> tuple[dict[int, _ResultT], dict[int, str]]:
    """Run ``run(job, report)`` for each job (``job.index`` names it): in this process for one job, else
    each in its own worker process.

    Returns:
        (results, errors) by job index; ``errors`` holds the one-line message of each job that raised a
        :class:`MemsvError`. Such a job does not stop the others: their work is complete and kept.

    Raises:
        OSError (disk full, ...), RuntimeError (a bug in a worker, with its traceback), MemsvError (a
        worker died without reporting), KeyboardInterrupt: at once, after stopping every worker.
    """
    if len(jobs) > 1:
        return _run_parallel(jobs, run, report, stage)
    results: dict[int, _ResultT] = {}
    errors: dict[int, str] = {}
    for job in jobs:
        try:
            results[job.index] = run(job, report)  # type: ignore[attr-defined]
        except MemsvError as err:
            errors[job.index] = str(err)  # type: ignore[attr-defined]
    return results, errors


def _os_error(
    errno_: int | None, strerror: str | None, filename: object, filename2: object, text: str
) -> OSError:
    """Rebuild a worker's ``OSError`` in the parent (``OSError(errno, ...)`` picks the subclass)."""
    if errno_ is None:
        return OSError(text)
    return OSError(errno_, strerror, filename, None, filename2)


def _worker_main(run, job, progress_queue, result_queue) -> None:  # noqa: ANN001 - mp queues
    """Body of one worker process: run the job, send back ``(index, kind, payload)``.

    ``kind`` is ``ok`` (payload: the job's result), ``input`` (a user error: its one-line message),
    ``os`` (an ``OSError`` such as a full disk: its errno, strerror, filename, filename2), ``interrupt``
    (a pipe command of the job died of the Ctrl-C: the parent stops as interrupted even if its own
    SIGINT has not been handled yet) or ``bug`` (anything else, with its traceback as text). Errors are
    sent as plain values because ``InputError`` (and library ``OSError`` subclasses) take other
    constructor arguments and do not survive unpickling.

    Ctrl-C reaches the whole process group; a worker carries on (its parent stops it), so that only the
    parent reports the interrupt, but kills the pipe command it runs (each runs in a process group of
    its own, which the Ctrl-C does not reach) and starts none after it (:func:`audio.note_interrupt`).
    Stopped by its parent (SIGTERM), it takes its pipe command along too (:func:`audio.stop_on_sigterm`).
    A run that inherited SIGINT ignored (started in the background by a non-interactive shell) keeps
    ignoring it, as Kaldi's tools would.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, note_interrupt)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        result_queue.put((job.index, "ok", run(job, progress_queue.put)))
    except KeyboardInterrupt:  # a pipe command of the job died of the Ctrl-C (audio.PipeInterrupted)
        result_queue.put((job.index, "interrupt", None))
    except MemsvError as err:
        result_queue.put((job.index, "input", str(err)))
    except OSError as err:
        result_queue.put((job.index, "os", (err.errno, err.strerror, err.filename, err.filename2, str(err))))
    except Exception:
        import traceback

        result_queue.put((job.index, "bug", traceback.format_exc()))


def _run_parallel(
    jobs: Sequence[_JobT], run: Callable[[_JobT, Report], _ResultT], report: Report, stage: str
) -> tuple[dict[int, _ResultT], dict[int, str]]:
    """:func:`run_jobs` with one worker process per job.

    A worker that dies without reporting (killed, out of memory) is an error too, never a hang.
    """
    # fork where the platform has it (as torch's DataLoader does): workers start in milliseconds instead of
    # re-importing the CLI (typer, torch) as spawn would. The workers only run numpy, soundfile, tarfile and
    # kaldi-native-fbank, none of which relies on threads the parent may have started.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    progress_queue, result_queue = ctx.Queue(), ctx.Queue()
    procs = {
        job.index: ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main, args=(run, job, progress_queue, result_queue), daemon=True
        )
        for job in jobs
    }
    results: dict[int, _ResultT] = {}
    errors: dict[int, str] = {}
    try:
        for proc in procs.values():
            proc.start()
        while len(results) + len(errors) < len(jobs):
            with contextlib.suppress(queue_module.Empty):
                while True:
                    report(progress_queue.get(timeout=0.05))
            with contextlib.suppress(queue_module.Empty):
                while True:
                    index, kind, payload = result_queue.get_nowait()
                    if kind == "interrupt":
                        raise KeyboardInterrupt
                    if kind == "os":
                        raise _os_error(*payload)
                    if kind == "bug":
                        raise RuntimeError(f"{stage} job {index} failed:\n{payload}")
                    (results if kind == "ok" else errors)[index] = payload
            for index, proc in procs.items():
                # Checked after draining the results: a worker reports, then exits 0.
                reported = index in results or index in errors
                if not reported and proc.exitcode not in (None, 0) and result_queue.empty():
                    raise MemsvError(
                        f"{stage} job {index} died (exit code {proc.exitcode}; out of memory or killed)"
                    )
        with contextlib.suppress(queue_module.Empty):
            while True:
                report(progress_queue.get_nowait())
        return results, errors
    finally:
        # After an error or Ctrl-C the other workers must not keep writing.
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
        for proc in procs.values():
            if proc.pid is not None:
                proc.join()
