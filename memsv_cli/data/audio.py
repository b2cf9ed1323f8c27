"""Reading ``wav.scp`` entries: a file path, or a Kaldi pipe command ending in ``|``.

Pipe commands (``ffmpeg -i x.m4a -f wav - |``, ``sox x.wav -t wav - speed 1.1 |``) are run through the
shell, as Kaldi does, and their standard output is decoded as a WAV/FLAC stream with soundfile. Tools
that write WAV to a pipe cannot seek back to fill in the RIFF/data sizes (ffmpeg writes 0xFFFFFFFF, sox
a placeholder); such headers are repaired from the real byte count before decoding.

Samples come back in Kaldi's scale: float32 in the int16 range [-32768, 32767], which is what
``compute-fbank-feats`` and WeSpeaker (``waveform * (1 << 15)``) feed to the fbank.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from memsv_cli.errors import MemsvError

INT16_SCALE = 32768.0


class AudioError(MemsvError):
    """An utterance's audio cannot be used; the caller adds the wav.scp file, line and key."""


class PipeInterrupted(AudioError):
    """A pipe command died of SIGINT: Ctrl-C reached the process group, the audio may be fine.

    The data stages stop as interrupted (:func:`raise_if_interrupted`) instead of reporting, or with
    ``--skip-bad`` listing, a bad utterance; training skips the sample as any unreadable one (its main
    process handles the signal itself)."""


def raise_if_interrupted(err: AudioError) -> None:
    """Turn a :class:`PipeInterrupted` into the ``KeyboardInterrupt`` it stands for."""
    if isinstance(err, PipeInterrupted):
        raise KeyboardInterrupt from None


# Set in a data-stage worker when Ctrl-C reaches its process group (fbank._worker_main's handler): no pipe
# command may start after it. Otherwise a command forked just after the Ctrl-C (e.g. ``sleep 60; cat x.wav
# |``) would outlive the stopped run.
_interrupted = False
# Process groups of the pipe commands this process is running. Each command runs in a group of its own, so
# that everything it starts can be stopped at once: a shell that gets Ctrl-C while its child survives it (a
# tool that handles SIGINT, as ffmpeg does, or a child that had just exited 0) carries on with its next
# command, which the Ctrl-C never reached, and killing only the shell would leave that command running.
_pipe_groups: set[int] = set()


def kill_pipe_commands() -> None:
    """SIGKILL every process of every pipe command this process is running."""
    for pgid in list(_pipe_groups):
        _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # gone already
        os.killpg(pgid, signal.SIGKILL)


def note_interrupt(signum: int, frame: object) -> None:
    """SIGINT handler of a data-stage worker: stop the pipe commands it runs and start none from now on
    (its parent stops the run; :func:`_run_pipe` raises :class:`PipeInterrupted` instead)."""
    global _interrupted
    _interrupted = True
    kill_pipe_commands()


def stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM handler of a data-stage worker (its parent stops it after another job failed or after
    Ctrl-C): take its pipe commands along, then exit as SIGTERM's default action would (status 143)."""
    kill_pipe_commands()
    os._exit(128 + signal.SIGTERM)


def is_pipe(spec: str) -> bool:
    """True for a Kaldi pipe entry (``<command> |``)."""
    return spec.rstrip().endswith("|")


def _run_pipe(spec: str) -> bytes:
    command = spec.rstrip()[:-1].strip()
    if not command:
        raise AudioError("empty pipe command")
    if _interrupted:
        raise PipeInterrupted("run interrupted (SIGINT) before the pipe command started")
    returncode, stdout, stderr = _run_in_own_group(command)
    # Stopped by the Ctrl-C (killed by our handler, or by SIGINT itself; 128 + 2: a shell reporting a child
    # killed by it). Without this, a worker could report "pipe command failed" before its parent sees it.
    if _interrupted or returncode in (-signal.SIGINT, 128 + signal.SIGINT):
        raise PipeInterrupted("pipe command interrupted (SIGINT)")
    if returncode != 0:
        last = (stderr.decode("utf-8", "replace").strip().splitlines() or ["(no message)"])[-1]
        raise AudioError(f"pipe command failed with exit status {returncode}: {last}")
    if not stdout:
        raise AudioError("pipe command wrote no audio to stdout")
    return stdout


def _run_in_own_group(command: str) -> tuple[int, bytes, bytes]:
    """Run ``command`` through the shell in a process group of its own; returns (exit status, stdout,
    stderr). Whatever interrupts the wait (Ctrl-C's ``KeyboardInterrupt`` in a one-job run) kills the
    whole group first, so nothing the command started outlives the run."""
    # Popen's process_group exists from Python 3.11; setpgid in the child before exec is the same call
    own: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    proc = subprocess.Popen(
        command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **own
    )
    _pipe_groups.add(proc.pid)
    try:
        if _interrupted:  # the Ctrl-C came between the check in _run_pipe and the line above
            kill_pipe_commands()
        stdout, stderr = _communicate(proc)
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    finally:
        _pipe_groups.discard(proc.pid)
    return proc.returncode, stdout, stderr


def _communicate(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """``proc.communicate()`` in 0.1-s slices. Python runs signal handlers only in the main thread, when
    it returns to bytecode; a signal the kernel hands to another thread (a worker's queue feeder thread)
    does not interrupt this thread's wait, so without slices Ctrl-C's and SIGTERM's handlers would wait
    for the pipe command to end by itself (a hang for a command that ignores SIGINT)."""
    while True:
        try:
            return proc.communicate(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue  # documented: retrying loses no output


def _repair_streamed_wav(data: bytes) -> bytes:
    """Set the RIFF and ``data`` chunk sizes of a streamed WAV to the actual byte count.

    Only touches canonical RIFF/WAVE streams; the ``data`` chunk is taken to run to the end of the
    stream, which is what a tool writing to a pipe means by an unknown size.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    buf = bytearray(data)
    pos = 12
    while pos + 8 <= len(buf):
        chunk_id = bytes(buf[pos : pos + 4])
        size = struct.unpack_from("<I", buf, pos + 4)[0]
        if chunk_id == b"data":
            struct.pack_into("<I", buf, pos + 4, len(buf) - pos - 8)
            struct.pack_into("<I", buf, 4, len(buf) - 8)
            return bytes(buf)
        pos += 8 + size + (size & 1)
    return data


def _decode(source: str | io.BytesIO) -> tuple[np.ndarray, int]:
    with sf.SoundFile(source) as f:
        rate = f.samplerate
        data = f.read(dtype="float32", always_2d=True)
    return data, rate


def read_audio(spec: str, *, sample_rate: int = 16000, resample: bool = False) -> np.ndarray:
    """Read one ``wav.scp`` value as mono samples.

    Args:
        spec: a file path (WAV, FLAC, anything libsndfile reads) or a pipe command ending in ``|``.
        sample_rate: the required rate in Hz; audio at another rate is an error (resample with sox or
            ffmpeg when preparing the data, as Kaldi recipes do, rather than silently here).
        resample: instead of refusing another rate, resample to ``sample_rate`` with soxr (quality HQ,
            the resampler of sox): for single files given to ``memsv embed`` / ``similarity``.

    Returns:
        float32 array of shape ``(samples,)`` in the int16 range.

    Raises:
        AudioError: missing, unreadable, corrupt or empty audio, wrong rate, more than one channel,
            failing pipe command.
    """
    try:
        if is_pipe(spec):
            raw = _run_pipe(spec)
            try:
                data, rate = _decode(io.BytesIO(raw))
            except (sf.LibsndfileError, RuntimeError):
                data, rate = _decode(io.BytesIO(_repair_streamed_wav(raw)))
        else:
            path = Path(spec)
            if not path.exists():
                raise AudioError(f"no such file {spec}")
            if not path.is_file():
                raise AudioError(f"not a regular file {spec}")
            data, rate = _decode(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        what = "pipe output" if is_pipe(spec) else spec
        raise AudioError(f"cannot decode audio {what}: {err}") from None
    except OSError as err:
        raise AudioError(f"cannot read {spec}: {err.strerror or err}") from None
    if rate != sample_rate and not resample:
        raise AudioError(f"sample rate {rate} Hz, expected {sample_rate} Hz (resample with sox/ffmpeg)")
    if data.shape[1] != 1:
        raise AudioError(f"{data.shape[1]} channels, expected mono (downmix with sox/ffmpeg)")
    if data.shape[0] == 0:
        raise AudioError("empty audio (0 samples)")
    samples = data[:, 0] * np.float32(INT16_SCALE)
    if rate != sample_rate:
        import soxr

        samples = soxr.resample(samples, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
        if samples.shape[0] == 0:
            raise AudioError(f"empty audio after resampling {rate} Hz to {sample_rate} Hz")
    return samples
