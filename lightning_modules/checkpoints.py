"""Checkpoints that survive a crash: written atomically, read without executing code, set aside when damaged.

A checkpoint is written to a temporary file beside its final name and renamed over it, so a kill at any moment
leaves either the previous complete checkpoint or the new complete one. Loading uses ``weights_only=True``:
Lightning's checkpoints hold only tensors, numbers, strings and containers, so unpickling can run no code from a
checkpoint. A checkpoint or summary that does not read back is renamed to ``<name>.corrupt-<UTC time>`` (kept for
inspection, never deleted) and the run resumes from the newest good checkpoint, or starts again.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from . import run_folder
from .run_folder import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes to ``.<name>.<random>.tmp`` in the same folder, fsyncs, then renames."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_write(Path(path), lambda f: self.write(checkpoint, f))

    @staticmethod
    def write(checkpoint: dict[str, Any], f) -> None:
        """The serialisation itself (a seam for the tests that kill a process half-way through a write)."""
        torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = True) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def load_checked(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely and completely; raises when it is truncated, damaged or not a Lightning checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"state_dict", "loops", "epoch"} - set(checkpoint if isinstance(checkpoint, dict) else ())
    if missing:
        raise ValueError(f"not a training checkpoint (missing {', '.join(sorted(missing))})")
    return checkpoint


def set_aside(path: Path, why: BaseException | str) -> Path:
    """Rename a damaged file to ``<name>.corrupt-<UTC time>`` and say so in one line on stderr."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    try:
        os.replace(path, target)
    except FileNotFoundError:  # another rank of the same run set it aside first
        return target
    reason = str(why).splitlines()[0] if str(why) else type(why).__name__
    print(f"ablate train: warning: {path} is unreadable ({reason[:200]}); kept aside as {target.name}",
          file=sys.stderr, flush=True)
    return target


def resume_checkpoint(folder: Path) -> Path | None:
    """The checkpoint to resume from: ``last.ckpt`` if it reads back, else the newest other good one, else None.
    Damaged ones are set aside on the way; temporaries of interrupted writes are removed."""
    if not folder.is_dir():
        return None
    for partial in folder.glob(".*.ckpt.*.tmp"):  # a write cut short by a kill: never complete, never used
        partial.unlink(missing_ok=True)
    last = folder / run_folder.LAST_CHECKPOINT
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != last.name), key=lambda p: p.stat().st_mtime,
                    reverse=True)
    for path in ([last] if last.exists() else []) + others:
        try:
            load_checked(path)
        except Exception as err:  # any failure to read back means: do not trust it
            set_aside(path, err)
            continue
        return path
    return None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``summary.json`` as a dict, or None when there is none; an unreadable one is set aside (not completed)."""
    try:
        return run_folder.load_summary(run_dir)
    except ValueError as err:
        set_aside(run_dir / run_folder.SUMMARY, err)
        return None
