"""One `ablate train` command's hold on its run folder, from naming it to letting it go.

``main`` makes a ``RunSession`` for the command and hands it to the CLI, which opens the folder it resolves (made,
checked writable, locked), checks that a resume repeats the run's settings, and marks the run set up once the model
and data are built. ``RunSession.record_failure`` is the one place a failed run is written down; ``close`` releases
the lock and removes a folder this command made but never set a run up in. The folder's files are
``lightning_modules.run_folder``'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

from lightning_modules import run_folder
from lightning_modules.checkpoints import read_summary

from .. import runlock
from ..identity import result_settings, settings_diff, settings_hash


class AlreadyCompleted(Exception):
    """The run folder holds this run, completed: nothing to do."""


class RunFolderError(OSError):
    """The run folder cannot hold the run (unwritable, or too little free space)."""


class ForeignRunFolder(RunFolderError):
    """The run folder holds a run with other result-affecting settings: refused, and that run left as it is."""


def is_rank_zero() -> bool:
    """The process that owns the run folder: not a DDP rank that Lightning, torchrun or SLURM started beside it."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def run_dir_for(config: Any, settings: dict[str, Any]) -> Path:
    """``--run_dir``, or ``<runs_root>/<model>-<data>-<hash of the result settings>``."""
    data = config.data.class_path.rsplit(".", 1)[-1].replace("DataModule", "").lower()
    name = f"{config.model.init_args.model}-{data}"
    return Path(config.run_dir or Path(config.runs_root) / f"{name}-{settings_hash(settings)}")


def check_resume(run_dir: Path, settings: dict[str, Any]) -> None:
    """A folder that holds a run with other settings is refused (``ForeignRunFolder``); one whose run is completed
    ends the command (``AlreadyCompleted``)."""
    saved = run_dir / run_folder.CONFIG
    if saved.exists():
        differ = settings_diff(result_settings(yaml.safe_load(saved.read_text()) or {}, run_dir), settings)
        if differ:
            raise ForeignRunFolder(
                f"run folder {run_dir} holds a run with other settings ({'; '.join(differ)}); a resume must "
                "repeat them: choose a new --run_dir for these settings")
    summary = read_summary(run_dir)  # an unreadable one is set aside: the run is not completed
    if summary is not None and summary.get("status") == "completed":
        raise AlreadyCompleted(f"{run_dir} is already completed; delete its summary.json to run it again")


MIN_FREE_BYTES = 100 * 2**20  # below this a run would fail at its first checkpoint


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RunFolderError(f"run folder {run_dir} is not writable ({err.strerror or err}); "
                             "choose another with --run_dir or --runs_root") from None


def preflight(run_dir: Path, checkpoint_bytes: int) -> None:
    """Fail in a second, not after hours: the run folder must be writable and have room for a few checkpoints
    (``checkpoint_bytes`` each: weights and the chosen optimizer's real state, ``lightning_modules.optim``; x3 for
    last/best/the temporary copy), at least ``MIN_FREE_BYTES``."""
    writable(run_dir)
    need = max(MIN_FREE_BYTES, 3 * int(checkpoint_bytes or 0))
    free = free_bytes(run_dir)
    if free < need:
        raise RunFolderError(f"run folder {run_dir} has {free / 2**20:.0f} MiB free, a run needs at least "
                             f"{need / 2**20:.0f} MiB for its checkpoints; free space or choose another --run_dir")


def named_run_dir(args: list[str]) -> Path | None:
    """The folder ``--run_dir`` names, read before LightningCLI parses anything: a command refused while parsing
    (as a sweep's run may be) is still written down in the folder its sweep made."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--run_dir")
    named = parser.parse_known_args(args)[0].run_dir
    return Path(named) if named else None


@dataclasses.dataclass
class RunSession:
    """The run folder as one command holds it: opened by the CLI, closed by ``main`` in its ``finally``."""

    run_dir: Path | None = None  # named by --run_dir, then the folder the CLI resolved
    lock: int | None = None  # this process's lock on the folder (rank zero only)
    created: bool = False  # made by this command, and no run set up in it yet: removed when the command ends
    write_failed: Callable[..., None] | None = None  # the recorder's failed summary, once the Trainer is built

    def open(self, run_dir: Path) -> None:
        """Take the folder for this command: made if missing, checked writable, locked (on rank zero only; the
        other DDP ranks share rank zero's)."""
        self.run_dir = run_dir
        if not is_rank_zero():
            return
        self.created = not run_dir.exists()
        writable(run_dir)
        self.lock = runlock.acquire(run_dir)

    def set_up(self) -> None:
        """Model and data are built: from here on the folder is this run's record, kept whatever happens."""
        self.created = False

    def record_failure(self, err: BaseException, line: str) -> None:
        """Say why the run failed in its summary.json (the kind decides whether a sweep tries it again). Only in a
        folder this process owns (its lock, or the lock its sweep handed down) that holds a run: a refusal because
        another process holds the folder, or because it holds a run with other settings, leaves that run alone."""
        if isinstance(err, (runlock.RunFolderBusy, ForeignRunFolder)) or not is_rank_zero():
            return
        if self.run_dir is None or self.created or not self.run_dir.is_dir():
            return
        kind = run_folder.failure_kind(err)
        if self.write_failed is not None:  # the recorder's summary: params, metrics and wall time as of now
            self.write_failed(reason=line, failure=kind)
            return
        try:
            lock = None if self.lock is not None else runlock.acquire(self.run_dir)
        except runlock.RunFolderBusy:
            return
        try:
            run_folder.record_failure(self.run_dir, kind, line)
        finally:
            runlock.release(lock)

    def close(self) -> None:
        """Release the lock; a folder made by a command refused before training is removed (it holds only the lock)."""
        runlock.release(self.lock)
        self.lock = None
        run_dir = self.run_dir
        if self.created and run_dir is not None and run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == [runlock.LOCK_NAME]:
            (run_dir / runlock.LOCK_NAME).unlink(missing_ok=True)
            run_dir.rmdir()
        self.created = False
