"""One ``emotune sweep`` per experiment folder at a time: an exclusive lock on ``<storage.path>/<name>``.

Why ``fcntl.flock`` and not ``O_CREAT | O_EXCL``: the lock must survive SIGKILL *correctly*, that is, disappear with
the killed process so that the re-run resumes (``Tuner.restore``) without anyone deleting anything. The kernel drops
a flock when the last descriptor of its open file description closes, which happens on every kind of process exit:
SIGKILL, the OOM killer, a segfault. An ``O_EXCL`` lock file outlives a killed holder as a *held* lock, so taking it
over needs a liveness guess (pid reuse, containers with their own pid namespaces, other hosts) and a second atomic
step that two racing takers can both win. With flock the kernel answers "is the holder alive?" and there is no
takeover race: whoever gets the flock holds the lock.

The lock file ``<storage.path>/<name>/.emotune.lock`` records the holder (pid, host, start time, process start ticks,
boot id, command) so that a refused run names it. A file left by a killed holder is not held by anyone; the next run
takes it over and warns, saying whether the old pid is gone or now belongs to another process (the start time in
``/proc/<pid>/stat`` differs).

What keeps it exclusive:

- The descriptor is close-on-exec (Python's default, PEP 446), so processes the driver starts (raylet, GCS, Ray
  workers) never inherit the lock and cannot keep it after the driver dies.
- Release unlinks the file while still holding the flock, then closes it. A racer that opened the old file before
  the unlink then holds a flock on an unlinked inode, so acquire checks that the path still names the inode it
  locked, and retries otherwise.
- The holder never opens the lock file a second time: on NFS, Linux emulates flock with POSIX record locks, which a
  process loses as soon as it closes *any* descriptor of the file.
- flock belongs to the open file description, so a second acquire inside the same process fails too.

Where flock is not supported (``ENOLCK`` on an NFS mount without a lock manager, some FUSE filesystems) the lock
falls back to the holder record: a run refuses while the recorded holder is alive on this host (pid and start time
match) or runs on another host, and warns that exclusion is best effort. Object-store storage (``s3://``, ``gs://``)
has no locks at all: the sweep logs that it runs unlocked and does not pretend otherwise.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".emotune.lock"
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}  # errno.ENOTSUP == EOPNOTSUPP on Linux


class SweepLockedError(ValueError):
    """Another live run holds the sweep's experiment folder (a user error: the CLI exits 2)."""


def _warn(message: str) -> None:
    print(f"emotune: warning: {message}", file=sys.stderr, flush=True)


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), None where unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def holder_record() -> dict:
    """What this process writes into a lock it holds."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(), "start_ticks": _start_ticks(pid),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join([Path(sys.executable).name, *sys.argv])[:1000]}


def holder_state(record: dict) -> str:
    """``alive``, ``dead``, ``reused`` (the pid now names another process) or ``other-host`` (cannot tell)."""
    if record.get("host") != socket.gethostname():
        return "other-host"
    boot = _boot_id()
    if record.get("boot_id") and boot and record["boot_id"] != boot:
        return "dead"  # the host rebooted since
    pid = int(record.get("pid", -1))
    if pid <= 0 or not _pid_alive(pid):
        return "dead"
    now = _start_ticks(pid)
    if record.get("start_ticks") is not None and now is not None and now != record["start_ticks"]:
        return "reused"
    return "alive"


def describe(record: dict) -> str:
    """``pid 123 on host h (started 2025-01-01T00:00:00Z: python -m cluster.cli sweep x.yaml)``."""
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} (started {record.get('started', '?')}: "
            f"{record.get('command', '?')})")


def _read(fd: int) -> dict:
    try:
        text = os.pread(fd, 1 << 16, 0).decode("utf-8", "replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {"command": "unreadable lock record"}


def _write(fd: int, record: dict) -> None:
    data = json.dumps(record, indent=1).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


class SweepLock:
    """An exclusive lock on one experiment folder; a context manager (released on return, exception, Ctrl-C).

    Args:
        folder: The experiment folder ``<storage.path>/<name>``; created if missing.
        name: The sweep name, for messages.

    Raises:
        SweepLockedError: (from :meth:`acquire`) another live process holds the folder; the message names it.
    """

    def __init__(self, folder: Path | str, name: str | None = None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.name = name or self.folder.name
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> SweepLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this SweepLock is already held; release it first")
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(50):  # a retry happens only when a holder released (unlinked) between our open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                message = self._held_message(fd)
                os.close(fd)
                raise SweepLockedError(message) from None
            except OSError as err:
                if err.errno not in _NO_LOCKS:
                    os.close(fd)
                    raise
                return self._acquire_unlocked(fd, err)
            if self._same_file(fd):
                break
            os.close(fd)
        else:
            raise RuntimeError(f"{self.path}: could not lock after 50 tries; the file keeps being replaced")
        previous = _read(fd)
        if previous:
            state = holder_state(previous)
            why = {"dead": "that process is gone", "reused": "its pid now belongs to another process",
                   "other-host": "its host released the lock (the process ended or the host lost its lease)",
                   "alive": "that process is alive but no longer holds the lock (did someone delete and recreate "
                            "the lock file?)"}[state]
            _warn(f"taking over the stale lock {self.path} of sweep {self.name!r} left by {describe(previous)}: "
                  f"{why}; resuming from the experiment folder")
        _write(fd, holder_record())
        self._fd, self.held = fd, True
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)

    def _held_message(self, fd: int) -> str:
        record = _read(fd)
        for _ in range(20):  # the holder may have its flock but not yet its record written: wait up to 1 s
            if record:
                break
            time.sleep(0.05)
            record = _read(fd)
        fix = (f"wait for it to finish, or stop it (`kill {record.get('pid', 'PID')}` on {record.get('host', '?')}) "
               f"and run this again to resume; to run both at once give this sweep another `name`")
        if not record:
            return (f"sweep {self.name!r} is already running: its experiment folder lock {self.path} is held by a "
                    f"process that has not written its record (`fuser -v {self.path}` names it); {fix}")
        if holder_state(record) in ("dead", "reused"):
            return (f"sweep {self.name!r}: {self.path} is still locked although its recorded holder "
                    f"{describe(record)} is gone; a process it forked still holds the lock (`fuser -v {self.path}` "
                    f"names it); stop that process and run this again to resume")
        return f"sweep {self.name!r} is already running: {describe(record)} holds {self.path}; {fix}"

    def _acquire_unlocked(self, fd: int, err: OSError) -> SweepLock:
        """The filesystem refuses locks: go by the holder record (best effort, a race window remains)."""
        previous = _read(fd)
        state = holder_state(previous) if previous else "dead"
        if state in ("alive", "other-host"):
            os.close(fd)
            hint = (f"; if that process is gone, delete {self.path}" if state == "other-host" else "")
            raise SweepLockedError(f"sweep {self.name!r} is already running: {describe(previous)} holds "
                                   f"{self.path}; wait for it to finish or stop it, then run this again{hint}")
        _warn(f"{self.path}: the filesystem does not support locks ({os.strerror(err.errno)}); only the lock record "
              f"guards sweep {self.name!r} (best effort: two runs started in the same instant can both pass)"
              + (f"; taking over the record of {describe(previous)}" if previous else ""))
        _write(fd, holder_record())
        self._fd, self.held = fd, True
        return self

    def release(self) -> None:
        """Unlink the lock file, then drop the lock (in this order, see the module docstring). Idempotent."""
        fd, self._fd, self.held = self._fd, None, False
        if fd is None:
            return
        try:
            if self._same_file(fd) and _read(fd).get("pid") == os.getpid():
                os.unlink(self.path)
        except OSError:
            pass  # a leftover record is taken over by the next run
        finally:
            os.close(fd)  # drops the flock

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class _Unlocked:
    """The no-op stand-in for storage that cannot be locked (object stores)."""

    held = False

    def __enter__(self) -> _Unlocked:
        return self

    def __exit__(self, *exc) -> None:
        return None


def lock_experiment(storage: str | Path, name: str) -> SweepLock | _Unlocked:
    """The lock of sweep ``name`` under ``storage`` (``storage.path``), to use as ``with lock_experiment(...):``.

    Object-store URIs (``s3://...``) have no atomic exclusive create or lock: the sweep runs unlocked, and says so.
    """
    if "://" in str(storage) and not str(storage).startswith("file://"):
        _warn(f"storage.path {storage} is an object store, which has no locks: sweep {name!r} runs without the "
              f"experiment lock (best effort: do not start two runs of this sweep at once)")
        return _Unlocked()
    folder = Path(str(storage).removeprefix("file://")) / name
    return SweepLock(folder, name)
