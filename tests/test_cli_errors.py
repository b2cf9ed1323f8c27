"""Issue 12, item 7: Ctrl-C, OS errors and concurrent runs give one line and the right exit status.

* Ctrl-C -> ``memsv <command>: interrupted`` on stderr, exit status 130, nothing half-written;
* an ``OSError`` (disk full, a file where a directory belongs, ...) -> ``memsv <command>: error: <path>:
  <problem>``, exit status 1, no traceback;
* a second run into a directory another run holds -> one line naming the holder, exit status 1
  (:mod:`memsv_cli.lock`).

The helpers at the top (``run_memsv``, ``start_memsv``, ``interrupt_memsv``, ``run_main``,
``hold_in_subprocess``, ``try_lock_in_subprocess``, ``assert_one_line``) are meant for the same tests on
other commands (``memsv train``): import them with ``from test_cli_errors import ...``.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import typer

from memsv_cli import cli
from memsv_cli.cli import main
from memsv_cli.data import fbank
from memsv_cli.errors import os_error_message
from memsv_cli.lock import LOCK_NAME, DirectoryInUseError, DirectoryLock, hold_directory, read_holder

MEMSV = [sys.executable, "-m", "memsv_cli"]
REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------
# Reusable helpers


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default action. A test run started in the
    background of a non-interactive shell (``make test &``) inherits SIGINT *ignored*; memsv would
    inherit that too (Python then installs no KeyboardInterrupt handler) and no Ctrl-C test could pass."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_memsv(args: Sequence[str], *, timeout: float = 180) -> tuple[int, str, str]:
    """Run ``memsv ARGS`` in a subprocess (SIGINT at its default action); returns (exit status, stdout,
    stderr)."""
    proc = subprocess.run(
        [*MEMSV, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
        preexec_fn=_default_sigint,
    )
    return proc.returncode, proc.stdout, proc.stderr


def start_memsv(args: Sequence[str]) -> subprocess.Popen[str]:
    """Start ``memsv ARGS`` in its own session (process group = its pid), stdout/stderr piped, SIGINT
    at its default action (:func:`_default_sigint`)."""
    return subprocess.Popen(
        [*MEMSV, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
        preexec_fn=_default_sigint,
    )


def kill_group(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the whole process group of a :func:`start_memsv` process (if any is left)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[str] | None = None, timeout: float = 60
) -> None:
    """Poll ``ready()``; fail if ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (status {proc.returncode}) before it was ready:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the process to get ready")
        time.sleep(0.02)


def interrupt_memsv(
    proc: subprocess.Popen[str], ready: Callable[[], bool], *, timeout: float = 60
) -> tuple[int, str, str]:
    """Wait until ``ready()``, then Ctrl-C: SIGINT to the process group, as a terminal sends it.

    Returns (exit status, stdout, stderr). Checks that the whole group is gone afterwards (workers and
    pipe commands included).
    """
    try:
        wait_until(ready, proc, timeout)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
        assert_group_gone(proc)
        return proc.returncode, out, err
    finally:
        kill_group(proc)
        if proc.poll() is None:
            proc.wait()


def assert_group_gone(proc: subprocess.Popen[str]) -> None:
    """Fail unless every process of ``proc``'s session has exited: its workers, and the pipe commands
    they ran, each in a process group of its own. A loaded machine can take seconds to schedule the
    workers' exits, so 30 s only bounds a failure."""
    deadline = time.monotonic() + 30
    while _session_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _session_alive(proc.pid), (
        f"processes of the interrupted run are still running: {_session_alive(proc.pid)}"
    )


def _session_alive(sid: int) -> list[str]:
    """The processes (``pid command``) of session ``sid`` that are not zombies, from ``/proc``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            command, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
            if int(rest[3]) == sid and rest[0] != "Z":  # fields 6 (session) and 3 (state) of proc(5)
                alive.append(f"{stat.parent.name} {command}")
    return alive


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``memsv_cli.cli.main`` in this process; returns (exit status, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(err: str, prefix: str, *fragments: str) -> str:
    """``err`` is exactly one line (no blank lines, no traceback) starting with ``prefix``; returns it."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), (prefix, lines[0])
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


_HOLD_SCRIPT = """
import os, sys, time
from memsv_cli.lock import hold_directory
with hold_directory(sys.argv[1], "experiment directory"):
    if sys.argv[2] == "fork":
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
        print("child", child, flush=True)
    print("held", flush=True)
    time.sleep(120)
"""

_TRY_SCRIPT = """
import sys
from memsv_cli.lock import DirectoryInUseError, hold_directory
try:
    with hold_directory(sys.argv[1]):
        print("acquired")
except DirectoryInUseError as err:
    print(err)
    sys.exit(3)
"""


def hold_in_subprocess(
    directory: Path, *, fork_child: bool = False
) -> tuple[subprocess.Popen[str], int | None]:
    """A process (own session) that holds ``directory``'s lock until killed; returns (it, forked child pid).

    With ``fork_child`` the holder forks a child that outlives it (sleeps) while holding the lock.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SCRIPT, str(directory), "fork" if fork_child else "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    child = None
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith("child "):
            child = int(line.split()[1])
        if line.strip() == "held":
            return proc, child
    pytest.fail(f"the lock holder failed: {proc.communicate()[1]}")


def try_lock_in_subprocess(directory: Path) -> tuple[int, str]:
    """Try to take ``directory``'s lock from another process: (0, "acquired") or (3, the refusal)."""
    proc = subprocess.run(
        [sys.executable, "-c", _TRY_SCRIPT, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


# ---------------------------------------------------------------------------------------------------
# Test corpora


def make_data_dir(root: Path, n_utts: int, *, seconds: float = 0.5, block_last: bool = False) -> Path:
    """A Kaldi data dir of ``n_utts`` noise WAVs; with ``block_last`` the last entry is a pipe that waits
    60 s first, so a run is reliably still working when it is interrupted or killed. The pipe touches
    :func:`blocked_started` as it starts: a Ctrl-C sent before that would miss a command that does not
    exist yet (a pipe is only stopped by a Ctrl-C that reaches it, or by SIGPIPE on its next write)."""
    rng = np.random.default_rng(0)
    data = root / "data"
    (root / "wav").mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(1, n_utts + 1):
        wav = root / "wav" / f"u{i}.wav"
        sf.write(wav, 0.1 * rng.standard_normal(int(seconds * 16000)), 16000, subtype="PCM_16")
        blocked = f"touch {blocked_started(root)}; sleep 60; cat {wav} |"
        spec = blocked if block_last and i == n_utts else str(wav)
        lines.append(f"spk/v/u{i} {spec}")
    (data / "wav.scp").write_text("".join(line + "\n" for line in lines))
    (data / "utt2spk").write_text("".join(f"spk/v/u{i} spk\n" for i in range(1, n_utts + 1)))
    return data


def blocked_started(root: Path) -> Path:
    """The file the blocked pipe of :func:`make_data_dir` ``(root, ..., block_last=True)`` touches."""
    return root / "blocked.started"


def _arks(out: Path) -> list[Path]:
    return sorted(out.glob("*.ark")) if out.is_dir() else []


def _left_over(out: Path) -> list[str]:
    """Files a failed run must not leave: feats.scp, arks, temporary files."""
    if not out.is_dir():
        return []
    return sorted(f.name for f in out.iterdir() if f.suffix in (".ark", ".tmp") or f.name == "feats.scp")


# ---------------------------------------------------------------------------------------------------
# Ctrl-C


@pytest.mark.parametrize("nj", [1, 2])
def test_ctrl_c_during_extract_fbank_exits_130_with_one_line_and_leaves_nothing(tmp_path, nj):
    data = make_data_dir(tmp_path, 4, block_last=True)
    out = tmp_path / "fbank"
    proc = start_memsv(["extract-fbank", data, out, "--nj", nj])

    def writing() -> bool:  # every job's ark exists and the job stuck at the slow pipe has written to it
        arks = _arks(out)
        complete = nj == 1 or (out / "feats.1.scp").exists()  # nj=2: job 1 (u1, u2) has finished
        started = blocked_started(tmp_path).exists()
        return len(arks) == nj and arks[-1].stat().st_size > 0 and complete and started

    code, stdout, stderr = interrupt_memsv(proc, writing)
    assert code == 130, stderr
    assert stderr == "memsv extract-fbank: interrupted\n"
    assert stdout == ""
    if nj == 1:
        assert _left_over(out) == []
        assert not out.exists()  # created by this run and left empty: removed with its lock file
    else:  # issue 13: a complete job is kept for a rerun (tests/test_data_resume.py); the unfinished one goes
        assert _left_over(out) == ["feats.1.ark"]
        assert (out / "feats.1.scp").exists()


@pytest.mark.parametrize(
    ("command", "nj", "extra"),
    [("extract-fbank", 1, []), ("extract-fbank", 2, ["--skip-bad"]), ("make-shards", 2, ["--skip-bad"])],
)
def test_a_pipe_command_killed_by_sigint_is_an_interrupt_not_a_bad_utterance(tmp_path, command, nj, extra):
    """The order in which Ctrl-C reaches the processes of a group is the kernel's: a job's pipe command
    can die of it before the parent handles its own SIGINT. That job must not report (or with
    --skip-bad, list) a bad utterance: here only the pipe's shell gets the signal, deterministically."""
    data = make_data_dir(tmp_path, 4)
    scp = (data / "wav.scp").read_text().splitlines()
    scp[-1] = "spk/v/u4 kill -INT $$; cat /dev/null |"
    (data / "wav.scp").write_text("\n".join(scp) + "\n")
    out = tmp_path / "out"
    code, stdout, stderr = run_memsv([command, data, out, "--nj", nj, *extra])
    assert (code, stdout, stderr) == (130, "", f"memsv {command}: interrupted\n")
    assert not (out / "bad_utts").exists()


@pytest.mark.parametrize("command", ["extract-fbank", "make-shards"])
def test_no_pipe_command_starts_after_a_worker_got_ctrl_c(tmp_path, command):
    """Ctrl-C reaches the processes of the group alive at that moment: a pipe command a worker forks just
    after it would never get it and outlive the stopped run (the race that made the test above fail under
    load). Here u3's pipe sends SIGINT to its worker alone, deterministically before the worker reaches
    u4's 60-s pipe: the worker must start no command after it, and the run stops as interrupted."""
    data = make_data_dir(tmp_path, 4, block_last=True)
    scp = (data / "wav.scp").read_text().splitlines()
    key, path = scp[2].split(maxsplit=1)
    scp[2] = f"{key} kill -INT $PPID; cat {path} |"  # sh's parent: the worker running job 2 (u3, u4)
    (data / "wav.scp").write_text("\n".join(scp) + "\n")
    proc = start_memsv([command, data, tmp_path / "out", "--nj", 2])
    try:
        stdout, stderr = proc.communicate(timeout=120)  # without the guard: u4's sleep, then exit 0
        assert (proc.returncode, stdout, stderr) == (130, "", f"memsv {command}: interrupted\n")
        assert not blocked_started(tmp_path).exists()
        assert_group_gone(proc)
    finally:
        kill_group(proc)
        if proc.poll() is None:
            proc.wait()


@pytest.mark.parametrize(("command", "nj"), [("extract-fbank", 1), ("extract-fbank", 2), ("make-shards", 2)])
def test_ctrl_c_stops_a_pipe_command_that_ignores_it(tmp_path, command, nj):
    """A pipe command can survive Ctrl-C: a tool that handles SIGINT (ffmpeg finishes its file), or a
    shell whose child had just exited 0 when the signal came (dash then carries on with the next command,
    which never got it: the race behind the CI failure of stop 21). Killing only the shell left such a
    command running for its full 60 s; the run must take the pipe's whole process group down."""
    data = make_data_dir(tmp_path, 4)
    scp = (data / "wav.scp").read_text().splitlines()
    key, path = scp[-1].split(maxsplit=1)
    started = blocked_started(tmp_path)
    scp[-1] = f"{key} touch {started}; (trap '' INT; exec sleep 60); cat {path} |"
    (data / "wav.scp").write_text("\n".join(scp) + "\n")
    proc = start_memsv([command, data, tmp_path / "out", "--nj", nj])
    code, stdout, stderr = interrupt_memsv(proc, started.exists)  # checks that the session is gone
    assert (code, stdout, stderr) == (130, "", f"memsv {command}: interrupted\n")


def test_ctrl_c_in_process_is_reported(tmp_path, capsys, monkeypatch):
    """typer >= 0.2x turns a KeyboardInterrupt into Exit(130) and *returns* 130 with
    standalone_mode=False; main() used to ignore that return value (exit 0, nothing printed)."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fbank, "extract_fbank", interrupted)
    code, _, err = run_main(["extract-fbank", str(tmp_path / "d"), str(tmp_path / "o")], capsys)
    assert code == 130
    assert err == "memsv extract-fbank: interrupted\n"


def test_older_click_abort_from_ctrl_c_is_reported_as_interrupt(capsys, monkeypatch):
    """click < 8.2 style: KeyboardInterrupt becomes ``Abort`` (a class of that name, from any module)."""

    class Abort(RuntimeError):
        pass

    def app(**kwargs: object) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as err:
            raise Abort() from err

    monkeypatch.setattr(cli, "app", app)
    code, _, err = run_main(["train", "--exp-dir", "x"], capsys)
    assert (code, err) == (130, "memsv train: interrupted\n")


@pytest.mark.parametrize("status", [3, 130])
def test_typer_exit_status_is_kept_and_adds_no_line(tmp_path, capsys, monkeypatch, status):
    """A command that handled Ctrl-C itself (``memsv train``: save, say so, ``typer.Exit(130)``) keeps
    its status and its one line; ``main`` adds nothing."""

    def stops(*args: object, **kwargs: object) -> None:
        print("memsv extract-fbank: stopped by SIGINT", file=sys.stderr)
        raise typer.Exit(status)

    monkeypatch.setattr(fbank, "extract_fbank", stops)
    code, _, err = run_main(["extract-fbank", str(tmp_path / "d"), str(tmp_path / "o")], capsys)
    assert (code, err) == (status, "memsv extract-fbank: stopped by SIGINT\n")


# ---------------------------------------------------------------------------------------------------
# OS errors


def test_output_dir_that_is_a_regular_file(tmp_path, capsys):
    data = make_data_dir(tmp_path, 2)
    out = tmp_path / "fbank"
    out.write_text("not a directory\n")
    code, _, err = run_main(["extract-fbank", str(data), str(out)], capsys)
    assert code == 1
    assert_one_line(err, "memsv extract-fbank: error: ", f"{out}: Not a directory")
    assert out.read_text() == "not a directory\n"


def test_output_dir_below_a_regular_file_in_a_subprocess(tmp_path):
    data = make_data_dir(tmp_path, 2)
    (tmp_path / "afile").write_text("")
    code, _, err = run_memsv(["extract-fbank", data, tmp_path / "afile" / "fbank"])
    assert code == 1
    assert_one_line(err, "memsv extract-fbank: error: ", f"{tmp_path / 'afile' / 'fbank'}: Not a directory")


def test_a_directory_where_feats_scp_belongs(tmp_path, capsys):
    data = make_data_dir(tmp_path, 2)
    (tmp_path / "fbank" / "feats.scp").mkdir(parents=True)
    code, _, err = run_main(["extract-fbank", str(data), str(tmp_path / "fbank")], capsys)
    assert code == 1
    assert_one_line(
        err, "memsv extract-fbank: error: ", f"{tmp_path / 'fbank' / 'feats.scp'}: Is a directory"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_output_dir(tmp_path, capsys):
    data = make_data_dir(tmp_path, 2)
    out = tmp_path / "fbank"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, _, err = run_main(["extract-fbank", str(data), str(out)], capsys)
    finally:
        out.chmod(0o755)
    assert code == 1
    assert_one_line(err, "memsv extract-fbank: error: ", str(out), "Permission denied")


class _FullDisk:
    """``kaldiio.WriteHelper`` whose second write fails with ENOSPC, like a disk filling up."""

    real = kaldiio.WriteHelper

    def __init__(self, spec: str, *args: object, **kwargs: object) -> None:
        self.inner = self.real(spec, *args, **kwargs)
        self.ark = spec.split(":", 1)[1].split(",")[0]
        self.writes = 0

    def __enter__(self) -> _FullDisk:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> object:
        return self.inner.__exit__(*exc)

    def __call__(self, key: str, value: np.ndarray) -> None:
        self.writes += 1
        if self.writes == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.ark)
        self.inner(key, value)


@pytest.mark.parametrize("nj", [1, 2])  # nj=2: the error crosses from a (forked) worker to the parent
def test_disk_full_while_writing_features(tmp_path, capsys, monkeypatch, nj):
    data = make_data_dir(tmp_path, 4, seconds=0.3)
    out = tmp_path / "fbank"
    monkeypatch.setattr(kaldiio, "WriteHelper", _FullDisk)
    code, _, err = run_main(["extract-fbank", str(data), str(out), "--nj", str(nj)], capsys)
    assert code == 1
    line = assert_one_line(err, f"memsv extract-fbank: error: {out}/feats.", ": No space left on device")
    assert re.fullmatch(rf"memsv extract-fbank: error: {re.escape(str(out))}/feats(\.\d)?\.ark: .*", line)
    assert _left_over(out) == []


def test_os_error_message_forms():
    assert os_error_message(FileNotFoundError(2, "No such file or directory", "/x/a")) == (
        "/x/a: No such file or directory"
    )
    assert os_error_message(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == (
        "/a -> /b: Invalid cross-device link"
    )
    assert os_error_message(OSError(errno.ENOSPC, "No space left on device", b"/x/b")) == (
        "/x/b: No space left on device"
    )
    assert os_error_message(OSError("something\nbroke")) == "something broke"
    assert os_error_message(OSError()) == "OSError"


# ---------------------------------------------------------------------------------------------------
# Concurrent runs


def test_second_extract_fbank_into_a_held_dir_is_refused_until_the_first_is_killed(tmp_path, capsys):
    out = tmp_path / "fbank"
    first = start_memsv(["extract-fbank", make_data_dir(tmp_path / "slow", 2, block_last=True), out])
    data = make_data_dir(tmp_path / "ok", 3)
    try:
        wait_until(lambda: (out / "feats.ark").exists(), first)
        code, _, err = run_main(["extract-fbank", str(data), str(out)], capsys)
        assert code == 1
        assert_one_line(
            err,
            f"memsv extract-fbank: error: output directory {out} is in use by another run: "
            f"pid {first.pid} on {socket.gethostname()} since ",
            f"(memsv extract-fbank {tmp_path / 'slow' / 'data'} {out}); wait for it or stop it",
        )
        assert (out / "feats.ark").exists()  # the refused run touched nothing of the first one
    finally:
        kill_group(first)  # SIGKILL: no clean-up, the kernel drops the lock
        first.communicate()
    assert (out / LOCK_NAME).exists() and (out / "feats.ark").exists()  # stale, left by the killed run
    code, _, err = run_main(["extract-fbank", str(data), str(out)], capsys)
    assert code == 0, err
    assert len(kaldiio.load_scp(str(out / "feats.scp"))) == 3


def test_prepare_data_into_a_held_dir_is_refused(tmp_path, capsys):
    holder, _ = hold_in_subprocess(tmp_path / "d")
    try:
        argv = ["prepare-data", "--corpus", "mini", "--out", str(tmp_path / "d"), "--num-speakers", "2"]
        code, _, err = run_main(argv, capsys)
    finally:
        kill_group(holder)
        holder.communicate()
    assert code == 1
    assert_one_line(err, "memsv prepare-data: error: ", f"pid {holder.pid}", "(", "wait for it or stop it")


# ---------------------------------------------------------------------------------------------------
# memsv_cli.lock


def test_lock_held_by_another_process_is_refused_naming_the_holder(tmp_path):
    holder, _ = hold_in_subprocess(tmp_path / "exp")
    try:
        with pytest.raises(DirectoryInUseError) as refused:
            DirectoryLock(tmp_path / "exp", "experiment directory").acquire()
        record = read_holder(tmp_path / "exp")
    finally:
        kill_group(holder)
        holder.communicate()
    assert record is not None and record.pid == holder.pid and record.host == socket.gethostname()
    assert re.fullmatch(
        rf"experiment directory {re.escape(str(tmp_path / 'exp'))} is in use by another run: "
        rf"pid {holder.pid} on {re.escape(socket.gethostname())} since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d "
        r"\(.*\); wait for it or stop it",
        str(refused.value),
    )
    assert refused.value.holder == record


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    holder, _ = hold_in_subprocess(tmp_path / "exp")
    assert try_lock_in_subprocess(tmp_path / "exp")[0] == 3
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate()
    assert read_holder(tmp_path / "exp").pid == holder.pid  # the stale record stays ...
    with hold_directory(tmp_path / "exp"):  # ... and is taken over
        assert read_holder(tmp_path / "exp").pid == os.getpid()
    assert read_holder(tmp_path / "exp") is None  # a released lock file records nobody


def test_lock_ends_with_its_holder_even_if_a_forked_child_lives_on(tmp_path):
    holder, child = hold_in_subprocess(tmp_path / "exp", fork_child=True)
    try:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the child is still alive ...
        assert try_lock_in_subprocess(tmp_path / "exp") == (0, "acquired")  # ... and holds nothing
    finally:
        kill_group(holder)
        holder.communicate()


def _release_in_child(lock: DirectoryLock) -> None:
    assert not lock.held
    lock.release()


def _exit_in_child(lock: DirectoryLock) -> None:
    pass


def test_forked_children_do_not_release_the_lock(tmp_path):
    with hold_directory(tmp_path / "exp") as lock:
        for target in (_release_in_child, _exit_in_child):  # multiprocessing workers (DataLoader-like)
            child = mp.get_context("fork").Process(target=target, args=(lock,))
            child.start()
            child.join()
            assert child.exitcode == 0
        pid = os.fork()
        if pid == 0:  # a bare fork that unwinds the hold
            try:
                lock.release()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert lock.held
        code, message = try_lock_in_subprocess(tmp_path / "exp")
        assert code == 3 and f"pid {os.getpid()} " in message
    assert try_lock_in_subprocess(tmp_path / "exp") == (0, "acquired")


def test_lock_nests_within_one_process(tmp_path):
    with hold_directory(tmp_path / "exp") as outer:
        with hold_directory(tmp_path / "exp" / ".", "again") as inner:
            assert inner.held and outer.held
        assert try_lock_in_subprocess(tmp_path / "exp")[0] == 3  # still held by the outer hold
    assert not outer.held
    assert try_lock_in_subprocess(tmp_path / "exp") == (0, "acquired")


def test_one_lock_object_cannot_be_acquired_twice(tmp_path):
    lock = DirectoryLock(tmp_path / "exp")
    lock.acquire()
    try:
        with pytest.raises(RuntimeError, match="already acquired"):
            lock.acquire()
    finally:
        lock.release()
    lock.release()  # idempotent


def test_lock_on_a_regular_file_is_not_a_directory(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError) as err:
        DirectoryLock(tmp_path / "f").acquire()
    assert os_error_message(err.value) == f"{tmp_path / 'f'}: Not a directory"


def test_created_directory_is_removed_only_when_nothing_was_written(tmp_path):
    with hold_directory(tmp_path / "a"):
        pass
    assert not (tmp_path / "a").exists()
    with hold_directory(tmp_path / "b"):
        (tmp_path / "b" / "x").write_text("")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [LOCK_NAME, "x"]
    (tmp_path / "c").mkdir()
    with hold_directory(tmp_path / "c"):
        pass
    assert (tmp_path / "c").is_dir()  # not ours to remove
    with hold_directory(tmp_path / "d", remove_if_unused=False):
        pass
    assert (tmp_path / "d").is_dir()


def test_file_system_without_flock_warns_and_proceeds(tmp_path, capsys, monkeypatch):
    import fcntl

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with hold_directory(tmp_path / "exp") as lock:
        assert lock.held
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"memsv: warning: cannot lock output directory {tmp_path / 'exp'} (")
    assert "a concurrent run into it will not be detected" in err


def test_read_only_lock_file_still_locks_without_a_record(tmp_path, monkeypatch):
    """A collaborator's lock file this user may not write: flock works on a read-only descriptor."""
    from memsv_cli import lock as lock_module

    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / LOCK_NAME).write_text("")
    read_only = os.O_RDONLY | os.O_CLOEXEC
    monkeypatch.setattr(lock_module, "_open_lock_file", lambda path: os.open(path, read_only))
    with hold_directory(tmp_path / "exp"):
        assert (tmp_path / "exp" / LOCK_NAME).read_text() == ""
        code, message = try_lock_in_subprocess(tmp_path / "exp")
    assert code == 3
    assert message.endswith("is in use by another run: holder not recorded; wait for it or stop it")
