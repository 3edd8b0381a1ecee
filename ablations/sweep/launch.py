"""How a sweep starts one training process: ``(ablate train args, log file, slot env, run lock fd) -> exit code``.

``in_new_process`` starts ``python -m ablations.cli train`` (GPU slots and SLURM tasks). ``forked`` forks the run
from a server process that imported torch, Lightning and the training code once for the whole sweep: a fresh
interpreter pays ~5 s of imports per run, a large share of a small CPU run. Each forked run is still its own
process, with its own environment, seed, run folder, log and exit code: a crash or a kill ends that run only, and
it keeps its run's lock (handed over as the same open file) if the sweep dies. multiprocessing imports the sweep's
``__main__`` in the server, so only a program whose main module is safe to import forks: ``ablate sweep`` does;
``run_sweep(..., fork=True)`` from a script needs its ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from multiprocessing import reduction
from pathlib import Path
from typing import Callable

from .. import runlock

Launcher = Callable[[list[str], Path, dict[str, str], int], int]
TRAIN_PROGRAM = [sys.executable, "-m", "ablations.cli", "train"]
PRELOAD = ["torch", "lightning", "ablations.training.cli"]  # what every run imports; the fork server holds it
SERVER_LOST = 255  # multiprocessing's exit code for a forked process whose server is gone


def in_new_process(args: list[str], log: Path, env: dict[str, str], lock: int) -> int:
    """A new interpreter running ``ablate train``; the lock is inherited as an open file."""
    with open(log, "a") as out:
        proc = subprocess.Popen([*TRAIN_PROGRAM, *args], stdout=out, stderr=subprocess.STDOUT, pass_fds=(lock,),
                                env={**os.environ, **env, runlock.INHERITED: str(lock)})
        return proc.wait()


class _HandedFd:
    """An open file given to the forked run: sent with the process as the same open file (SCM_RIGHTS), so the
    run holds the very lock the sweep took."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _received_fd, (reduction.DupFd(self.fd),)


def _received_fd(handed) -> int:
    return handed.detach()


def _train_forked(args: list[str], log: str, environ: dict[str, str], cwd: str, lock: int) -> None:
    """The forked run: this sweep's environment and working directory as of now (the server's are those of its
    start), output to the run's log, then ``ablate train``."""
    import torch
    from threadpoolctl import threadpool_limits

    from ablations.training.cli import main

    os.environ.clear()
    os.environ.update({**environ, runlock.INHERITED: str(lock)})
    os.chdir(cwd)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    if environ.get("OMP_NUM_THREADS"):  # read when the server loaded OpenMP and BLAS: their pools are resized here
        threadpool_limits(int(environ["OMP_NUM_THREADS"]))
        torch.set_num_threads(int(environ["OMP_NUM_THREADS"]))
    # as `ablate train` would see it: Lightning relaunches a DDP run's other ranks from sys.argv and __main__
    sys.argv = [sys.argv[0], "train", *args]
    sys.exit(main(args))


def _fork_server() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_fork_server() -> None:
    """Start the fork server now, so that its imports overlap the sweep's own set-up (checking every override)."""
    from multiprocessing import forkserver

    _fork_server()
    forkserver.ensure_running()


def forked(args: list[str], log: Path, env: dict[str, str], lock: int) -> int:
    """``ablate train`` in a process forked from the fork server (started on first use, preloaded with
    ``PRELOAD``). Exit code as a subprocess's: negative for a signal."""
    proc = _fork_server().Process(target=_train_forked, name=f"ablate train {log.parent.name}",
                           args=(args, str(log), {**os.environ, **env}, os.getcwd(), _HandedFd(lock)))
    proc.start()
    proc.join()
    if proc.exitcode == SERVER_LOST:  # the fork server died (it reports the runs' ends), the run may still train
        while not _ended(proc.pid):
            time.sleep(1)
        return -signal.SIGKILL  # its exit code went with the server; its summary says how it ended
    return proc.exitcode


def _ended(pid: int) -> bool:
    """Whether a process that is not our child has exited (a zombie no one reaps counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:  # no /proc (macOS)
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True


def can_fork() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()
