"""The run folder and the sweep folder: the one module that knows their files and how they are written and read.

A run folder holds ``config.yaml`` (the resolved `ablate train` config), ``metrics.csv`` (a row per evaluation),
``summary.json`` (status, failure kind and reason, params, FLOPs, final and best metrics), ``predictions.npz`` (the
final test's prediction for every test image) and ``checkpoints/``; a
sweep folder holds its runs' folders and ``manifest.json``. Every write is atomic, so a reader never sees half a
file; readers here never change what they read.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable

if TYPE_CHECKING:
    import numpy as np

CONFIG = "config.yaml"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
PREDICTIONS = "predictions.npz"
MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"  # ablate train's ModelCheckpoint (filename: its stem): the best validation accuracy
LOG = "train.log"

# How a run failed, in summary.json's "failure". Only those that may go differently on another try are retried by
# a sweep: a crash, a process that died without a word (lost node, SIGKILL), out of memory on a shared GPU.
RETRYABLE = ("crash", "lost", "oom")
FAILURE_KINDS = (*RETRYABLE, "config", "non_finite", "disk")


def checkpoints(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def last_checkpoint(run_dir: Path) -> Path:
    """Where a run saves to resume from (``ModelCheckpoint(save_last=True)``'s name, and preemption's); once the run
    is completed, its final model: the one its test, predictions and summary report, and what another run starting
    from this one loads (``init_from``)."""
    return checkpoints(run_dir) / LAST_CHECKPOINT


def atomic_write(path: Path, content: str | Callable[[BinaryIO], None]) -> None:
    """Write ``content`` (text, or a function that writes to a binary file) to a temporary file beside ``path``,
    fsync, and rename it over: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- summary.json --------------------------------------------------------------------------------------------
def load_summary(run_dir: Path) -> dict[str, Any] | None:
    """``summary.json`` as a dict, None when there is none; ValueError when it does not read back as a summary."""
    try:
        text = (Path(run_dir) / SUMMARY).read_bytes().decode()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError as err:
        raise ValueError(str(err)) from None
    summary = json.loads(text)  # json.JSONDecodeError is a ValueError
    if not isinstance(summary, dict) or "status" not in summary:
        raise ValueError("no status entry")
    return summary


def summary_status(run_dir: Path) -> str | None:
    """The status summary.json records, or None when there is none or it cannot be read."""
    try:
        summary = load_summary(run_dir)
    except ValueError:
        return None
    return None if summary is None else summary["status"]


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / SUMMARY, json.dumps(summary, indent=2, default=str) + "\n")


def failure_kind(err: BaseException) -> str:
    """The failure kind of an exception that ended a run (see ``FAILURE_KINDS``)."""
    import torch

    text = str(err).lower()
    if isinstance(err, FloatingPointError):
        return "non_finite"
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
            isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)):
        return "oom"
    if isinstance(err, (FileNotFoundError, NotADirectoryError, PermissionError)):
        return "config"
    if isinstance(err, OSError):  # the run folder is unwritable or full
        return "disk"
    if isinstance(err, (ValueError, TypeError, KeyError)) or type(err).__name__ == "ArgumentError":
        return "config"
    return "crash"


def record_failure(run_dir: Path, kind: str, reason: str) -> None:
    """Mark the run failed with ``kind`` and ``reason``, keeping what its summary already says; a completed
    run is never marked failed."""
    if kind not in FAILURE_KINDS:
        raise ValueError(f"failure kind {kind!r} is not one of {FAILURE_KINDS}")
    try:
        summary = load_summary(run_dir) or {}
    except ValueError:
        summary = {}
    if summary.get("status") == "completed":
        return
    write_summary(run_dir, {**summary, "status": "failed", "failure": kind, "reason": reason})


# --- predictions.npz -----------------------------------------------------------------------------------------
def write_predictions(run_dir: Path, arrays: dict[str, np.ndarray]) -> Path:
    """The final test's per-image record (``target``, ``pred``, ``loss``: arrays in the test set's order, so two
    runs' predictions pair image by image for paired tests), written atomically."""
    import numpy as np

    path = Path(run_dir) / PREDICTIONS
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def read_predictions(run_dir: Path) -> dict[str, np.ndarray] | None:
    """``predictions.npz`` as a dict of numpy arrays (``target``, ``pred``, ``loss``), None when there is none."""
    import numpy as np

    path = Path(run_dir) / PREDICTIONS
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


# --- metrics.csv ---------------------------------------------------------------------------------------------
def read_rows(run_dir: Path) -> list[dict[str, float | None]]:
    """The metrics rows, as numbers (an empty cell is None)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: (float(v) if v not in (None, "") else None) for k, v in row.items()} for row in csv.DictReader(f)]


def write_rows(run_dir: Path, rows: list[dict[str, Any]], first: Iterable[str] = ("epoch", "step")) -> None:
    """Every column any row has, ``first`` leading, the rest in the order they first appear."""
    columns = list(first)
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = [",".join(columns)] + [",".join(_cell(row.get(k)) for k in columns) for row in rows]
    atomic_write(Path(run_dir) / METRICS, "\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


# --- the sweep folder ----------------------------------------------------------------------------------------
def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write(Path(folder) / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def is_run(path: Path) -> bool:
    return (Path(path) / METRICS).exists() and (Path(path) / CONFIG).exists()


def run_folders(folder: Path) -> list[Path]:
    """The run folder given, or every run folder below ``folder`` (a sweep's, or any hand-made collection)."""
    folder = Path(folder)
    if is_run(folder):
        return [folder]
    return sorted(p.parent for p in folder.rglob(METRICS) if is_run(p.parent) and CHECKPOINTS not in p.parts)
