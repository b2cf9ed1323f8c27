"""Exclusive directory locks: an output or experiment directory is written by one run at a time.

A run takes the lock with :func:`hold_directory` (or :class:`DirectoryLock`) before it writes into a
directory; a second run into the same directory stops at once with one :class:`DirectoryInUseError` line
naming the holder::

    output directory exp/fbank is in use by another run: pid 1234 on host1 since 2026-12-01 10:00:00
    (memsv extract-fbank data/train exp/fbank --nj 8); wait for it or stop it

Mechanism: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<dir>/.memsv.lock`` (created if missing, never
deleted: deleting a lock file races with a process that has just opened it). The file records the holder
(pid, host, start time, command line) as one JSON line, for the message above only; the lock itself is the
kernel's flock, which is released when the holding process exits in any way, ``kill -9`` included. A lock
file left behind by a dead run is therefore stale by construction and simply taken over. A directory the
hold created and left empty but for the lock file (a run that failed early) is removed on release; a
run that locked the file just before it was removed notices (same inode check) and locks the new one.

Decisions:

* **Re-entrant within one process.** Holding a directory the same process already holds (a stage calling
  a library function that also takes the lock) just nests: the lock goes when the last holder releases.
  Another process, including a forked child, is refused like any other run.
* **Fork.** Forked children (DataLoader/pool workers) share the parent's open lock file, which must
  never make them release it: ``os.register_at_fork`` closes the inherited descriptor in every child
  (closing one of several descriptors of a flock'd file does not unlock it, and the lock then ends with
  the parent even if a child lives on), and :meth:`DirectoryLock.release` never calls ``LOCK_UN`` from a
  process other than the one that took the lock. The descriptor is ``O_CLOEXEC``: exec'd programs
  (ffmpeg pipes, shells) never hold it.
* **torchrun.** One process per job takes the lock (rank 0); other ranks must not, or they refuse.
* **No flock** (some network/FUSE file systems: ``ENOLCK``, ``EOPNOTSUPP``, ``ENOSYS``; or no ``fcntl``
  module): the run proceeds unprotected after one warning line on stderr.
* **Scope.** One lock per directory: a run into ``exp`` and one into ``exp/sub`` do not exclude each
  other, and readers take no lock. Over NFS, Linux maps flock onto NFS byte-range locks, which work
  across hosts; the host name in the message tells which machine holds it.
* **Read-only lock file** (made by a collaborator with a stricter umask): it is locked through a
  read-only descriptor (flock needs no write access) and the holder is not recorded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from memsv_cli.errors import MemsvError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".memsv.lock"
# flock errors that mean "this file system cannot lock", not "someone holds it".
_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_BUSY = frozenset({errno.EWOULDBLOCK, errno.EAGAIN})
_COMMAND_CHARS = 300  # a recorded command line is cut to this length


@dataclass(frozen=True)
class Holder:
    """The run recorded in a lock file (what it wrote when it took the lock)."""

    pid: int | None
    host: str
    since: str
    command: str

    def describe(self) -> str:
        """``pid 1234 on host1 since 2026-12-01 10:00:00 (memsv train ...)``."""
        text = f"pid {self.pid} on {self.host or 'an unknown host'} since {self.since or 'an unknown time'}"
        if self.command:
            text += f" ({self.command})"
        if self.host == socket.gethostname() and self.pid is not None and not _pid_alive(self.pid):
            text += ", which has exited but left a process that still holds the lock"
        return text


class DirectoryInUseError(MemsvError):
    """Another run holds the directory's lock."""

    def __init__(self, path: str | Path, what: str, holder: Holder | None) -> None:
        who = holder.describe() if holder is not None else "holder not recorded"
        super().__init__(f"{what} {path} is in use by another run: {who}; wait for it or stop it")
        self.path = str(path)
        self.holder = holder


@dataclass
class _Held:
    """One directory held by this process: its lock file descriptor and how many holders nest."""

    fd: int  # -1 when the file system could not lock
    pid: int
    count: int
    remove_if_unused: bool  # the outermost acquire created the directory and may remove it again


_HELD: dict[str, _Held] = {}  # realpath of the directory -> state, in the process that took it
_REGISTRY = threading.Lock()


def _forget_in_child() -> None:
    """After fork, in the child: close inherited lock descriptors without unlocking (see module doc)."""
    global _REGISTRY
    _REGISTRY = threading.Lock()  # may have been held by another thread at fork time
    for state in _HELD.values():
        if state.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(state.fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _command_line() -> str:
    """This process's command line as a user would type it (``memsv ...`` for the CLI)."""
    argv = list(sys.argv) or ["python"]
    prog = Path(argv[0])
    if prog.name == "memsv" or (prog.name == "__main__.py" and prog.parent.name == "memsv_cli"):
        argv[0] = "memsv"
    text = shlex.join(argv)
    return text if len(text) <= _COMMAND_CHARS else text[: _COMMAND_CHARS - 3] + "..."


def read_holder(directory: str | Path) -> Holder | None:
    """The holder recorded in ``directory``'s lock file, or None (no file, nothing recorded).

    The record may be stale: only a refused :meth:`DirectoryLock.acquire` proves the lock is held.
    """
    try:
        text = (Path(directory) / LOCK_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return _parse_holder(text)


def _parse_holder(text: str) -> Holder | None:
    try:
        record = json.loads(text)
        pid = record.get("pid")
        return Holder(
            pid=int(pid) if pid is not None else None,
            host=str(record.get("host", "")),
            since=str(record.get("since", "")),
            command=str(record.get("command", "")),
        )
    except (ValueError, TypeError, AttributeError):
        return None


def _open_lock_file(lock_file: Path) -> int:
    """Open (creating) the lock file; read-only when it is someone else's and not writable."""
    try:
        return os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        if not lock_file.exists():
            raise
        return os.open(lock_file, os.O_RDONLY | os.O_CLOEXEC)


def _holder_of(fd: int) -> Holder | None:
    """Read the holder through our own descriptor.

    The holder may be a moment from writing its record (the file is empty, or still names a killed
    earlier run): retry for up to half a second before settling for what is there.
    """
    holder = None
    for _ in range(10):
        with contextlib.suppress(OSError):
            holder = _parse_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if holder is not None and (
            holder.host != socket.gethostname() or holder.pid is None or _pid_alive(holder.pid)
        ):
            return holder
        time.sleep(0.05)
    return holder


def _is_current(fd: int, lock_file: Path) -> bool:
    """True when ``fd`` is still the file at ``lock_file`` (not one removed after we opened it)."""
    try:
        st = os.stat(lock_file)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def _record_holder(fd: int, lock_file: Path) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": _command_line(),
    }
    data = (json.dumps(record) + "\n").encode("utf-8")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        return  # someone else's read-only lock file: the lock holds, the holder is not recorded
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(lock_file)) from None


class DirectoryLock:
    """An exclusive lock on a directory (created if missing); see the module docstring.

    Use as a context manager or with :meth:`acquire` / :meth:`release`. One object is one hold:
    acquiring it twice without releasing is a programming error (``RuntimeError``); two objects for
    the same directory in one process nest. ``remove_if_unused``: see :func:`hold_directory`.
    """

    def __init__(
        self, path: str | Path, what: str = "output directory", *, remove_if_unused: bool = True
    ) -> None:
        self.path = Path(path)
        self.what = what
        self.remove_if_unused = remove_if_unused
        self._key: str | None = None

    @property
    def lock_file(self) -> Path:
        """``<path>/.memsv.lock``."""
        return self.path / LOCK_NAME

    @property
    def held(self) -> bool:
        """True between a successful :meth:`acquire` and :meth:`release`, in the acquiring process."""
        state = _HELD.get(self._key) if self._key is not None else None
        return state is not None and state.pid == os.getpid()

    def acquire(self) -> None:
        """Create the directory if needed and take its lock.

        Raises:
            DirectoryInUseError: another process holds it (the message names the holder).
            OSError: the directory or lock file cannot be made (e.g. the path is a regular file:
                ``NotADirectoryError`` naming it).
        """
        if self._key is not None:
            raise RuntimeError(f"{self.path}: this DirectoryLock is already acquired")
        created = not self.path.is_dir()
        self._mkdir()
        key = os.path.realpath(self.path)
        with _REGISTRY:
            state = _HELD.get(key)
            if state is not None and state.pid == os.getpid():
                state.count += 1
            else:
                fd = self._lock()
                _HELD[key] = _Held(fd, os.getpid(), 1, created and self.remove_if_unused)
            self._key = key

    def _mkdir(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.path)) from None

    def _lock(self) -> int:
        """flock the lock file; returns its descriptor, or -1 (after a warning) where flock is missing.

        A run that created the directory removes it again when it leaves it empty; a lock taken on a
        lock file that was removed meanwhile is therefore dropped and taken again on the new file.
        """
        if fcntl is None:  # pragma: no cover - not POSIX
            self._warn("no fcntl module on this platform")
            return -1
        for _ in range(10):
            self._mkdir()
            fd = _open_lock_file(self.lock_file)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _holder_of(fd) if err.errno in _BUSY else None
                os.close(fd)
                if err.errno in _BUSY:
                    raise DirectoryInUseError(self.path, self.what, holder) from None
                if err.errno in _UNSUPPORTED:
                    self._warn(err.strerror or str(err))
                    return -1
                raise OSError(err.errno, err.strerror, str(self.lock_file)) from None
            if _is_current(fd, self.lock_file):
                break
            os.close(fd)
        else:
            raise MemsvError(f"{self.lock_file}: keeps being replaced while it is being locked")
        try:
            _record_holder(fd, self.lock_file)
        except BaseException:
            os.close(fd)  # our only descriptor: closing it releases the lock
            raise
        return fd

    def _warn(self, reason: str) -> None:
        print(
            f"memsv: warning: cannot lock {self.what} {self.path} ({reason}); "
            "a concurrent run into it will not be detected",
            file=sys.stderr,
        )

    def release(self) -> None:
        """Give the lock up (the outermost holder in this process unlocks). Idempotent.

        In a forked child this only forgets the hold: the parent keeps the lock.
        """
        key, self._key = self._key, None
        if key is None:
            return
        with _REGISTRY:
            state = _HELD.get(key)
            if state is None or state.pid != os.getpid():
                return
            state.count -= 1
            if state.count > 0:
                return
            del _HELD[key]
        if state.remove_if_unused:
            self._remove_if_unused()
        if state.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(state.fd, 0)  # the record describes a live holder only
            with contextlib.suppress(OSError):
                fcntl.flock(state.fd, fcntl.LOCK_UN)
            os.close(state.fd)

    def _remove_if_unused(self) -> None:
        """Remove the directory this hold created if it holds nothing but the lock file (a failed run).

        Done while still locked; a run that opened the old lock file meanwhile notices (``_is_current``).
        """
        with contextlib.suppress(OSError):
            if os.listdir(self.path) == [LOCK_NAME]:
                os.unlink(self.lock_file)
                os.rmdir(self.path)

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def hold_directory(
    path: str | Path, what: str = "output directory", *, remove_if_unused: bool = True
) -> Iterator[DirectoryLock]:
    """Hold ``path`` (created if missing) exclusively for the block; see :class:`DirectoryLock`.

    ``what`` names the directory in messages. With ``remove_if_unused`` (default), a directory this hold
    created is removed again at the end if nothing but the lock file was written into it.
    """
    lock = DirectoryLock(path, what, remove_if_unused=remove_if_unused)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
