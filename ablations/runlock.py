"""One process owns a run folder: an exclusive ``flock`` on ``<run_dir>/lock``, held open for the run's life.

The operating system releases the lock when its holder dies (SIGKILL, a lost node on NFSv4 after its lease), so a
lock never goes stale and nothing has to guess whether a pid is alive. The lock file stays in the folder; its text
(pid, host) only names the holder in messages. A sweep takes the lock, then hands the same open file to its
training process (``ABLATE_RUN_LOCK_FD``): if the sweep is killed, the training child still holds the lock and a
second sweep sees the run as running instead of starting it again.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

LOCK_NAME = "lock"
INHERITED = "ABLATE_RUN_LOCK_FD"  # a lock fd handed down by the sweep that took it


class RunFolderBusy(OSError):
    """Another process holds the run folder."""


def holder(run_dir: Path) -> str:
    """Who holds the lock, as the holder wrote it: ``pid 1234 on host node7``."""
    try:
        owner = json.loads((Path(run_dir) / LOCK_NAME).read_text())
        return f"pid {owner['pid']} on host {owner['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _stamp(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)


def try_acquire(run_dir: Path) -> int | None:
    """The locked fd of ``<run_dir>/lock`` (created with the folder), or None when another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    _stamp(fd)
    return fd


def acquire(run_dir: Path) -> int:
    """Lock the run folder for this process, or take over the lock the parent sweep handed down; raises
    ``RunFolderBusy`` naming the holder when another process has it."""
    inherited = os.environ.get(INHERITED)
    if inherited:
        fd = int(inherited)
        try:
            same = os.fstat(fd).st_ino == os.stat(Path(run_dir) / LOCK_NAME).st_ino
        except (OSError, ValueError):
            same = False
        if same:  # the sweep's open file: already locked, and now held by this process too
            os.environ.pop(INHERITED)
            _stamp(fd)
            return fd
    fd = try_acquire(run_dir)
    if fd is None:
        raise RunFolderBusy(f"run folder {run_dir} is in use by {holder(run_dir)} (its lock file {LOCK_NAME}); wait "
                            "for that run to end, or choose another --run_dir")
    return fd


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds the run folder (tested by trying the lock, never by reading a pid)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
