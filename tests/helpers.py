"""Callbacks that tests inject through ``--trainer.callbacks+=tests.helpers.X``."""

import errno
import io as io_module
import json
import os
import signal as signal_module
from pathlib import Path

import lightning as L
import torch


class KillOnce(L.Callback):
    """Send ``signal`` (default SIGKILL) to this process the first time it reaches ``at`` in ``epoch``; the
    marker file makes the re-run go through. ``at``:

    - ``train``: after training batch ``batch``;
    - ``validation``: after validation batch ``batch`` of the first validation loader;
    - ``checkpoint``: when a checkpoint is about to be written (at an epoch's end: after its metrics row);
    - ``checkpoint_write``: half-way through writing a checkpoint file (half its bytes are on disk);
    - ``test``: when the final test starts (whatever ``epoch`` says: after training, the epoch is the last one's).
    """

    def __init__(self, epoch: int, batch: int = 0, marker: str = "killed", at: str = "train", signal: str = "SIGKILL"):
        self.epoch, self.batch, self.marker, self.at = epoch, batch, Path(marker), at
        self.signal = getattr(signal_module, signal)

    def _fire(self, trainer, where: str) -> None:
        if self.at == where and (trainer.current_epoch == self.epoch or where == "test") and not self.marker.exists():
            self.marker.write_text(where)
            os.kill(os.getpid(), self.signal)

    def setup(self, trainer, pl_module, stage):
        if self.at == "checkpoint_write":
            io = trainer.strategy.checkpoint_io
            original = io.write

            def half_then_die(checkpoint, f):
                if trainer.current_epoch == self.epoch and not self.marker.exists():
                    buffer = io_module.BytesIO()
                    original(checkpoint, buffer)
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                    self._fire(trainer, "checkpoint_write")
                original(checkpoint, f)

            io.write = half_then_die

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch:
            self._fire(trainer, "train")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.batch and dataloader_idx == 0 and not trainer.sanity_checking:
            self._fire(trainer, "validation")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._fire(trainer, "checkpoint")

    def on_test_start(self, trainer, pl_module):
        self._fire(trainer, "test")


class OutOfMemoryAt(L.Callback):
    """Raise CUDA's out-of-memory error in the first training batch, as a batch too large for the GPU would."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.15 GiB total)")


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


class DiskFullOnSave(L.Callback):
    """The disk fills up during training: every checkpoint write fails with ENOSPC after a few bytes."""

    def setup(self, trainer, pl_module, stage):
        def no_space(checkpoint, f):
            f.write(b"PK")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        trainer.strategy.checkpoint_io.write = no_space


from lightning_modules.classifier import ImageClassifier  # noqa: E402


class WithErrorRate(ImageClassifier):
    """The study's classifier with one more metric, logged the ordinary way and declared nowhere else."""

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.log("val/err", 1 - self.trainer.callback_metrics["val/acc"])


class CrashOnce(L.Callback):
    """A crash that another try does not repeat (as a flaky node would): raises in the first training batch
    until the marker file exists."""

    def __init__(self, marker: str):
        self.marker = Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.marker.exists():
            self.marker.write_text("crashed")
            raise RuntimeError("segfault-like crash of a flaky node")



class BlasThreads(L.Callback):
    """Write the thread counts of this process's BLAS pools (numpy's OpenBLAS, torch's) to ``path`` at set-up."""

    def __init__(self, path: str):
        self.path = Path(path)

    def setup(self, trainer, pl_module, stage):
        from threadpoolctl import threadpool_info

        counts = sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
        self.path.write_text(json.dumps(counts))
