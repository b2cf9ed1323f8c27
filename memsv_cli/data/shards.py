"""Tar shards of raw audio (WeSpeaker's ``shard`` data type): the ``make-shards`` stage and the reader.

Files written by :func:`make_shards` (``OUT_DIR``)::

    shards/shard_000000.tar ...  ``utts_per_shard`` utterances each (the last one fewer), in a seeded
                                 global shuffle, so that a shard mixes speakers. Each utterance is two
                                 members: ``<key>.wav`` (16-bit PCM mono WAV bytes) then ``<key>.spk`` (the
                                 speaker id, UTF-8, no newline); keys keep their ``/``
                                 (``id10001/1zcIwhmdeo4/00001.wav``).
    shard.list                   absolute shard paths, one per line, in shard order; the completion
                                 marker: removed first, written (atomically) last
    utt2spk, spk2utt             restricted to the utterances in the shards
    utt2num_samples              utterance -> samples, C-sorted (plan crops, count an epoch, no tar opened)
    bad_utts                     with ``skip_bad``: ``<utt> <reason>`` for each utterance left out

The shuffle sorts the keys by a keyed hash of ``(seed, key)`` (BLAKE2b): the order is a pure function of
the seed and the set of keys, whatever the Python/numpy version, so a rerun assigns every utterance to
the same shard. Members carry mtime 0, uid/gid 0 and mode 0644: a shard's bytes are a function of its
utterances. Resuming: shard N is written as ``.shard_N.tar.*.tmp``, then its record ``shard_N.json``
(utterances, sample counts, skipped ones and a fingerprint of its entries) is written and the tar renamed
into place; a rerun after a failure or Ctrl-C reuses every shard whose tar and matching record exist (any
``nj``) and writes only the others. After success the records are removed: a later run starts afresh.

Reading API (training's shard pipeline)::

    read_shard_list(path) -> list[Path]          # shard.list; one-line InputError for missing shards/empty
    iter_shard(path, skip=0) -> Iterator[ShardSample | BadSample]
    decode_wav(data, sample_rate=16000) -> np.ndarray   # float32 in the int16 range, like read_audio
    shard_utterance_count(path) -> int           # utterances in a shard, from its headers alone

:func:`iter_shard` streams one tar front to back with the standard library's ``tarfile`` on the opened
file (nothing is extracted to disk). Consecutive members with the same key (the name up to its last
``.``) form one utterance, which yields one item: a :class:`ShardSample` when it has exactly one
``.wav`` and one ``.spk`` regular-file member, else a :class:`BadSample` saying what is wrong. The first
``skip`` utterances are passed over from their headers alone: their data is seeked over, never read (a
resumed epoch fast-forwards this way), so ``iter_shard(p, skip=n)`` yields what ``iter_shard(p)`` yields
after its first ``n`` items. A truncated or corrupt tar yields the utterances read before the damage,
then one :class:`BadSample` for what could not be read (its ``key`` is the damaged utterance, or ``""``
when the damage lies between utterances), then stops. ``tarfile`` alone would stop silently at a
truncated or corrupt header; the end-of-archive block is checked to tell that from a complete shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from memsv_cli.atomic import atomic_path, write_lines_atomic, write_text_atomic
from memsv_cli.data.audio import INT16_SCALE, AudioError, raise_if_interrupted, read_audio
from memsv_cli.data.fbank import Report, failure_line, progress_counter, run_jobs, write_bad_utts
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

# ---------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class ShardSample:
    """One utterance from a shard; ``wav`` is the member's raw WAV bytes (decode with :func:`decode_wav`)."""

    key: str
    spk: str
    wav: bytes


@dataclass(frozen=True)
class BadSample:
    """A part of a shard that could not be read (corrupt or truncated tar, missing ``.spk``, ...).

    ``key`` is the utterance concerned, or ``""`` when the damage is not inside one; ``reason`` is one line.
    """

    key: str
    shard: str
    reason: str


def read_shard_list(path: str | Path) -> list[Path]:
    """The shard paths of a ``shard.list`` (relative ones as written, i.e. relative to the working dir).

    Raises:
        InputError: missing or non-UTF-8 list, blank line, a shard that is not a file, no shards.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    shards = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry:
            raise InputError(path, "empty line", number)
        if not Path(entry).is_file():
            raise InputError(path, f"no such shard {entry}", number)
        shards.append(Path(entry))
    if not shards:
        raise InputError(path, "empty: no shards")
    return shards


def _split_name(name: str) -> tuple[str, str]:
    """Member name -> (utterance key, extension): ``id1/v/00001.wav`` -> (``id1/v/00001``, ``wav``)."""
    key, dot, ext = name.rpartition(".")
    return (key, ext) if dot and "/" not in ext else (name, "")


class _Utterance:
    """The members of one utterance read so far (consecutive members sharing a key)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.parts: dict[str, bytes] = {}
        self.problems: list[str] = []

    def add(self, ext: str, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        """Read one member's data (``tarfile.ReadError`` when it is cut short)."""
        if not info.isreg():
            self.problems.append(f"member {info.name} is not a regular file")
        elif ext not in ("wav", "spk"):
            self.problems.append(f"unexpected member {info.name}")
        elif ext in self.parts:
            self.problems.append(f"duplicate member {info.name}")
        else:
            self.parts[ext] = tar.extractfile(info).read()  # type: ignore[union-attr]

    def item(self, shard: str) -> ShardSample | BadSample:
        problems = self.problems + [f"no .{ext} member" for ext in ("wav", "spk") if ext not in self.parts]
        spk = ""
        if "spk" in self.parts:
            try:
                spk = self.parts["spk"].decode("utf-8").strip()
            except UnicodeDecodeError:
                problems.append(".spk member is not UTF-8")
            else:
                if not spk:
                    problems.append("empty .spk member")
        if problems:
            return BadSample(self.key, shard, "; ".join(problems))
        return ShardSample(self.key, spk, self.parts["wav"])


def _end_damage(tar: tarfile.TarFile, f: io.BufferedReader, after: str | None) -> str | None:
    """None when the members ended at an end-of-archive (zero) block, else what is wrong there.

    ``tarfile`` stops silently at a truncated or invalid header in the middle of an archive.
    """
    try:
        f.seek(tar.offset)
        block = f.read(tarfile.BLOCKSIZE)
    except OSError as err:
        return f"cannot read the end of the tar: {err.strerror or err}"
    if len(block) == tarfile.BLOCKSIZE and block.count(0) == tarfile.BLOCKSIZE:
        return None
    where = f"after {after!r}" if after is not None else "at its start"
    problem = (
        "truncated (no end-of-archive block)" if len(block) < tarfile.BLOCKSIZE else "corrupt member header"
    )
    return f"tar {problem} {where}"


def iter_shard(path: str | Path, skip: int = 0) -> Iterator[ShardSample | BadSample]:
    """Stream the utterances of one tar shard in file order (see the module docstring).

    Args:
        path: the shard.
        skip: utterances to pass over first, from their headers alone (their data is seeked over).

    Yields:
        One :class:`ShardSample` or :class:`BadSample` per utterance after the first ``skip``; after
        damage, one :class:`BadSample` for it, then nothing more.
    """
    shard = str(path)
    try:
        with open(path, "rb") as f:
            try:
                tar = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 - reads f, which the `with` closes
            except tarfile.TarError as err:
                yield BadSample("", shard, f"not a tar file: {err}")
                return
            yield from _walk(tar, f, shard, skip)
    except OSError as err:  # opening it; read errors inside are reported by _walk
        yield BadSample("", shard, f"cannot open shard: {err.strerror or err}")


def _walk(
    tar: tarfile.TarFile, f: io.BufferedReader, shard: str, skip: int
) -> Iterator[ShardSample | BadSample]:
    """The body of :func:`iter_shard` on an opened tar."""
    current: _Utterance | None = None
    position = 0  # utterances begun so far (skipped ones included)
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, OSError) as err:  # the previous member's data is cut short, or a bad header
            if current is not None and position <= skip:  # skipped, so its data was never read: it is the one
                yield BadSample(current.key, shard, f"truncated or corrupt tar: {err}")
                return
            where = f"after {current.key!r}" if current is not None else "at its start"
            damage: str | None = f"truncated or corrupt tar {where}: {err}"
            break
        if info is None:
            damage = _end_damage(tar, f, current.key if current is not None else None)
            break
        tar.members.clear()  # TarFile keeps every header it read; a shard is read once, front to back
        key, ext = _split_name(info.name)
        if current is None or key != current.key:
            if current is not None and position > skip:
                yield current.item(shard)
            current, position = _Utterance(key), position + 1
        if position > skip:
            try:
                current.add(ext, info, tar)
            except (tarfile.TarError, OSError) as err:
                yield BadSample(key, shard, f"truncated or unreadable member {info.name}: {err}")
                return
    if current is not None and position > skip:
        yield current.item(shard)
    if damage is not None:
        yield BadSample("", shard, damage)


def _headers(path: str | Path) -> tuple[list[tarfile.TarInfo], str | None]:
    """Every member header of a shard, read without its data, and the damage at the end (None: clean).

    Raises:
        MemsvError: the shard cannot be opened or read (one line naming it).
    """
    infos: list[tarfile.TarInfo] = []
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for info in iter(tar.next, None):
                tar.members.clear()
                infos.append(info)
            damage = _end_damage(tar, f, _split_name(infos[-1].name)[0] if infos else None)
    except (tarfile.TarError, OSError) as err:
        raise MemsvError(f"{path}: unreadable shard: {err}") from None
    return infos, damage


def shard_utterance_count(path: str | Path) -> int:
    """Utterances (runs of members sharing a key) in a shard, from its headers alone.

    Raises:
        MemsvError: the shard cannot be opened or is truncated/corrupt (one line naming it).
    """
    infos, damage = _headers(path)
    if damage is not None:
        raise MemsvError(f"{path}: {damage}")
    keys = [_split_name(info.name)[0] for info in infos]
    return sum(1 for i, key in enumerate(keys) if i == 0 or key != keys[i - 1])


def wav_members(path: str | Path) -> tuple[list[tuple[str, int, int]], str | None]:
    """``(key, data offset, size in bytes)`` of every regular ``.wav`` member, in file order, from the
    headers alone (random access for the training stream), and the damage found at the end (None:
    clean). A shard that cannot be opened at all raises :class:`MemsvError`."""
    infos, damage = _headers(path)
    members = []
    for info in infos:
        key, ext = _split_name(info.name)
        if ext == "wav" and info.isreg():
            members.append((key, info.offset_data, info.size))
    return members, damage


def decode_wav(data: bytes, sample_rate: int = 16000) -> np.ndarray:
    """Decode a shard's WAV bytes to mono float32 samples in the int16 range (as :func:`read_audio`).

    Raises:
        AudioError: undecodable or empty data, another sample rate (Hz), more than one channel.
    """
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = f.samplerate
            samples = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"cannot decode WAV data: {' '.join(str(err).split())}") from None
    if rate != sample_rate:
        raise AudioError(f"sample rate {rate} Hz, expected {sample_rate} Hz")
    if samples.shape[1] != 1:
        raise AudioError(f"{samples.shape[1]} channels, expected mono")
    if samples.shape[0] == 0:
        raise AudioError("empty audio (0 samples)")
    return samples[:, 0] * np.float32(INT16_SCALE)


def encode_wav(samples: np.ndarray, sample_rate: int = 16000) -> bytes:
    """16-bit PCM mono WAV bytes of samples in the int16 range (rounded and clipped to int16).

    Integer-valued input (what :func:`read_audio` returns for 16-bit sources) round-trips bit-exactly
    through :func:`decode_wav`: the int16 values are written as they are, not rescaled by libsndfile.
    """
    pcm = np.clip(np.rint(np.asarray(samples, dtype=np.float64)), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# Writing: the make-shards stage

_RECORD_FORMAT = 1  # bump when what a shard holds changes: records of another format are not reused


@dataclass(frozen=True)
class _Shard:
    index: int  # 0-based, as in the file name
    tar: str
    record: str  # shard_N.json next to the tar: written before the tar is renamed into place
    entries: tuple[tuple[int, str, str, str], ...]  # (wav.scp line, utterance, speaker, spec)
    sample_rate: int

    def fingerprint(self) -> str:
        """Hash of what the shard is a function of, except the audio bytes themselves."""
        what = [_RECORD_FORMAT, self.sample_rate, self.entries]
        return hashlib.sha256(json.dumps(what).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _ShardResult:
    utts: tuple[tuple[str, int], ...]  # (utterance, samples) in the shard, in shard order
    bad: tuple[tuple[str, str], ...]  # (utterance, reason) left out with skip_bad


@dataclass(frozen=True)
class _Job:
    index: int  # 1-based
    shards: tuple[_Shard, ...]
    wav_scp_path: str
    skip_bad: bool


@dataclass(frozen=True)
class _JobOutcome:
    done: dict[int, _ShardResult]  # shard index -> result
    errors: dict[int, str]  # shard index -> one-line error (the job went on with its next shard)


@dataclass(frozen=True)
class ShardSummary:
    """What :func:`make_shards` produced; durations in seconds."""

    out_dir: Path
    shard_list: Path
    num_shards: int
    num_utts: int
    audio_seconds: float
    num_jobs: int
    num_bad: int = 0  # utterances left out with skip_bad (OUT_DIR/bad_utts)
    num_reused_shards: int = 0  # shards complete from an earlier, unfinished run


def shard_order(keys: Iterable[str], seed: int) -> list[str]:
    """The keys in the seeded global shuffle: sorted by BLAKE2b of ``(seed, key)`` (see module docstring)."""
    salt = f"{seed}\n".encode()
    return sorted(keys, key=lambda k: (hashlib.blake2b(salt + k.encode("utf-8"), digest_size=16).digest(), k))


def _read_pcm16(spec: str, sample_rate: int) -> np.ndarray:
    """A wav.scp entry as int16-valued samples (AudioError for unusable audio)."""
    return np.clip(np.rint(read_audio(spec, sample_rate=sample_rate)), -32768, 32767)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: the bytes depend on the data
    tar.addfile(info, io.BytesIO(data))


def _write_shard(shard: _Shard, job: _Job, report: Report) -> _ShardResult:
    """Write one shard under a temporary name, then its record, then rename the tar into place."""
    utts: list[tuple[str, int]] = []
    bad: list[tuple[str, str]] = []
    with atomic_path(shard.tar) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for line, key, spk, spec in shard.entries:
                try:
                    pcm = _read_pcm16(spec, shard.sample_rate)
                except AudioError as err:
                    raise_if_interrupted(err)
                    if not job.skip_bad:
                        raise InputError(job.wav_scp_path, f"utterance {key!r}: {err}", line) from None
                    bad.append((key, str(err)))
                else:
                    _add_member(tar, f"{key}.wav", encode_wav(pcm, shard.sample_rate))
                    _add_member(tar, f"{key}.spk", spk.encode("utf-8"))
                    utts.append((key, len(pcm)))
                report(1)
        record = {
            "fingerprint": shard.fingerprint(),
            "tar_bytes": tmp.stat().st_size,
            "utts": utts,
            "bad": bad,
        }
        write_text_atomic(shard.record, json.dumps(record))
    return _ShardResult(tuple(utts), tuple(bad))


def _run_job(job: _Job, report: Report) -> _JobOutcome:
    """Write a job's shards in turn; a bad utterance fails its shard only (the job goes on)."""
    done: dict[int, _ShardResult] = {}
    errors: dict[int, str] = {}
    for shard in job.shards:
        try:
            done[shard.index] = _write_shard(shard, job, report)
        except MemsvError as err:
            errors[shard.index] = str(err)
    return _JobOutcome(done, errors)


def _load_record(shard: _Shard, skip_bad: bool) -> _ShardResult | None:
    """The result of a complete shard of an earlier run, or None when it must be (re)written.

    A shard is reused when its tar exists with the size it was written with, its record's fingerprint
    matches (same utterances, speakers, wav.scp values and rate) and it skipped nothing unless this run
    skips bad utterances too.
    """
    try:
        if not Path(shard.tar).is_file():
            return None
        record = json.loads(Path(shard.record).read_text(encoding="utf-8"))
        if record["fingerprint"] != shard.fingerprint() or (record["bad"] and not skip_bad):
            return None
        if Path(shard.tar).stat().st_size != record["tar_bytes"]:  # cut or replaced since
            return None
        utts = tuple((str(key), int(n)) for key, n in record["utts"])
        return _ShardResult(utts, tuple((str(key), str(reason)) for key, reason in record["bad"]))
    except (OSError, ValueError, KeyError, TypeError):  # missing, partial or foreign record: redo
        return None


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _plan(data: DataDir, shard_dir: Path, utts_per_shard: int, seed: int, sample_rate: int) -> list[_Shard]:
    """Cut the shuffled utterances into shards of ``utts_per_shard`` (the same cut on every rerun)."""
    lines = {utt: number for number, utt in enumerate(data.wav_scp, start=1)}
    order = shard_order(data.wav_scp, seed)
    shards = []
    for index, start in enumerate(range(0, len(order), utts_per_shard)):
        keys = order[start : start + utts_per_shard]
        entries = tuple((lines[k], k, data.utt2spk[k], data.wav_scp[k]) for k in keys)
        name = f"shard_{index:06d}"
        shards.append(
            _Shard(
                index, str(shard_dir / f"{name}.tar"), str(shard_dir / f"{name}.json"), entries, sample_rate
            )
        )
    return shards


def _reusable(shards: list[_Shard], skip_bad: bool, notify: Callable[[str], None]) -> dict[int, _ShardResult]:
    """Results of the shards an earlier unfinished run completed; the files of all others are removed."""
    done: dict[int, _ShardResult] = {}
    for shard in shards:
        result = _load_record(shard, skip_bad)
        if result is None:
            _remove_quietly(Path(shard.tar))
            _remove_quietly(Path(shard.record))
        else:
            done[shard.index] = result
    if done:
        where = Path(shards[0].tar).parent.parent
        notify(
            f"resuming the unfinished run in {where}: {len(done)} of {len(shards)} shards already complete"
        )
    return done


def make_shards(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    utts_per_shard: int = 1000,
    nj: int = 1,
    seed: int = 777,
    skip_bad: bool = False,
    sample_rate: int = 16000,
    progress: Callable[[int, int], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> ShardSummary:
    """Write the utterances of a data directory into tar shards (the ``make-shards`` stage).

    Args:
        data_dir: Kaldi data directory (``wav.scp``: paths or pipes; ``utt2spk``); validated first.
        out_dir: output directory (created; see the module docstring), held with
            :func:`memsv_cli.lock.hold_directory` while the stage runs.
        utts_per_shard: utterances per shard (the last shard holds the rest).
        nj: worker processes; shards are dealt round robin to them. Any ``nj`` gives the same shards.
        seed: seed of the global shuffle.
        skip_bad: leave out utterances whose audio cannot be used, listed in ``OUT_DIR/bad_utts``
            (without it each is an error).
        sample_rate: the required rate in Hz (audio at another rate is bad).
        progress: called as ``progress(done, total)`` in utterances.
        notify: called with a one-line notice when an unfinished earlier run is resumed.

    Raises:
        MemsvError / InputError: bad options or input (naming file, line and utterance), raised after
            every other shard was written; complete shards are kept, so a rerun writes only the others.
            :class:`~memsv_cli.lock.DirectoryInUseError` when another run holds ``out_dir``.
        OSError: reading or writing failed (disk full, permissions), also in a worker.
        On any error or KeyboardInterrupt no ``shard.list`` exists and no temporary tar is left.
    """
    if utts_per_shard < 1:
        raise MemsvError(f"--utts-per-shard must be at least 1, got {utts_per_shard}")
    if nj < 1:
        raise MemsvError(f"--nj must be at least 1, got {nj}")
    data_dir = Path(data_dir)
    data = load_data_dir(data_dir)
    if data_dir.resolve() == Path(out_dir).resolve():
        raise MemsvError(f"{Path(out_dir).resolve()}: output directory must differ from the data directory")
    with hold_directory(out_dir, "output directory"):
        out_dir = Path(out_dir).resolve()
        for name in ("shard.list", "bad_utts"):  # the marker first: nothing below may look finished
            _remove_quietly(out_dir / name)
        shard_dir = out_dir / "shards"
        shard_dir.mkdir(exist_ok=True)
        shards = _plan(data, shard_dir, utts_per_shard, seed, sample_rate)
        done = _reusable(shards, skip_bad, notify or (lambda message: None))
        pending = [shard for shard in shards if shard.index not in done]
        jobs = [
            _Job(j + 1, tuple(pending[j::nj]), str(data_dir / "wav.scp"), skip_bad)
            for j in range(min(nj, len(pending)))
        ]
        results = _run_pending(jobs, shards, done, progress)
        summary = _write_outputs(shards, results, data, out_dir, sample_rate, len(jobs))
        _remove_leftovers(shard_dir, shards)
    return replace(summary, num_reused_shards=len(done))


def _run_pending(
    jobs: list[_Job],
    shards: list[_Shard],
    done: dict[int, _ShardResult],
    progress: Callable[[int, int], None] | None,
) -> dict[int, _ShardResult]:
    """Run the jobs; returns every shard's result, or raises the first failed shard's one line."""
    total = sum(len(shard.entries) for shard in shards)
    report = progress_counter(total, sum(len(shards[i].entries) for i in done), progress)
    try:
        outcomes, job_errors = run_jobs(jobs, _run_job, report, stage="make-shards")
    finally:
        # A worker stopped mid-shard (Ctrl-C, an error elsewhere) cannot remove its temporary tar.
        if shards:
            for path in Path(shards[0].tar).parent.glob(".shard_*.tmp"):
                _remove_quietly(path)
    results = dict(done)
    errors: dict[int, str] = {}
    for outcome in outcomes.values():
        results.update(outcome.done)
        errors.update(outcome.errors)
    for index, message in job_errors.items():  # outside any one shard: charged to the job's first
        errors[jobs[index - 1].shards[0].index] = message
    if errors:
        raise MemsvError(failure_line(errors, len(results), len(shards), "shards"))
    return results


def _write_outputs(
    shards: list[_Shard],
    results: dict[int, _ShardResult],
    data: DataDir,
    out_dir: Path,
    sample_rate: int,
    num_jobs: int,
) -> ShardSummary:
    """utt2spk, spk2utt, utt2num_samples, bad_utts, then ``shard.list`` (the completion marker)."""
    utt2samples: dict[str, int] = {}
    bad: list[tuple[str, str]] = []
    for shard in shards:
        utt2samples.update(results[shard.index].utts)
        bad += results[shard.index].bad
    if bad:
        write_bad_utts(out_dir / "bad_utts", bad)
        if not utt2samples:
            raise MemsvError(
                f"{data.path / 'wav.scp'}: none of its {len(bad)} utterances could be read "
                f"(reasons in {out_dir / 'bad_utts'})"
            )
    keep = {utt: data.utt2spk[utt] for utt in utt2samples}
    write_table(out_dir / "utt2spk", keep)
    write_spk2utt(out_dir / "spk2utt", utt2spk_to_spk2utt(keep))
    write_lines_atomic(out_dir / "utt2num_samples", [f"{u} {utt2samples[u]}" for u in c_sorted(utt2samples)])
    write_lines_atomic(out_dir / "shard.list", [shard.tar for shard in shards])  # last
    seconds = sum(utt2samples.values()) / sample_rate
    return ShardSummary(
        out_dir, out_dir / "shard.list", len(shards), len(utt2samples), seconds, num_jobs, len(bad)
    )


def _remove_leftovers(shard_dir: Path, shards: list[_Shard]) -> None:
    """After success: the records (a later run starts afresh) and shards of an earlier, larger split."""
    listed = {Path(shard.tar).name for shard in shards}
    for path in shard_dir.iterdir():
        if path.name.startswith("shard_") and (path.suffix == ".json" or path.name not in listed):
            _remove_quietly(path)
