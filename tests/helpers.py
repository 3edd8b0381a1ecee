"""Callbacks that tests inject through ``--trainer.callbacks+=tests.helpers.X``."""

import json
import os
import signal
from pathlib import Path

import lightning as L


class KillOnce(L.Callback):
    """SIGKILL this process at (epoch, batch) the first time; the marker file makes the re-run go through."""

    def __init__(self, epoch: int, batch: int, marker: str):
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch and not self.marker.exists():
            self.marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)


class RankReport(L.Callback):
    """Each rank writes what it saw, before torchmetrics synchronises: batches trained, local val counts."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.train_batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_batches += 1

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        acc = pl_module.eval_metrics["val"]["acc"]
        seen = int((acc.tp + acc.fn).sum())  # micro accuracy's local state: one tp or fn per sample
        report = {"rank": trainer.global_rank, "train_batches": self.train_batches, "val_seen": seen,
                  "val_correct": int(acc.tp.sum()), "epoch": trainer.current_epoch}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.json").write_text(json.dumps(report))
