"""Callbacks that make a run a record: a local run folder, exact resume, and a loud stop on a non-finite loss."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn
import numpy as np
import torch

METRIC_COLUMNS = (
    "epoch", "step", "train/loss", "train_eval/loss", "train_eval/acc", "val/loss", "val/acc", "val/acc5",
    "test/loss", "test/acc", "test/acc5", "gap/loss", "gap/acc", "lr", "epoch_time", "images_per_s",
)


def atomic_write(path: Path, content: str | Callable[[BinaryIO], None]) -> None:
    """Write ``content`` (text, or a function that writes to a binary file) to a temporary file beside ``path``,
    fsync, and rename it over: readers never see half a file."""
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


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value.item() if torch.is_tensor(value) else value)
    return value


def _floats(row: dict[str, Any]) -> dict[str, float | None]:
    """A metrics row (read back from CSV as strings, or fresh) as numbers."""
    return {k: (float(v) if v not in (None, "") else None) for k, v in row.items()}


class EpochSeeder(L.Callback):
    """Seed every RNG from (seed, epoch) at the start of each epoch.

    Data order, augmentation, MixUp and stochastic depth of epoch k then do not depend on what ran before, so a
    run resumed from the checkpoint at the end of epoch k-1 repeats epoch k exactly as an uninterrupted run does.

    A checkpoint saved mid-epoch (preemption, ``--checkpoint_every_n_steps``) resumes exactly too: the sampler
    skips the batches already trained in that epoch (Lightning restarts a plain DataLoader from its first batch)
    and the epoch's running metrics (the mean training loss) are restored from the checkpoint. Before every
    training step the global RNG (CPU and CUDA) is seeded from (seed, step, rank), so MixUp, CutMix and stochastic
    depth draw the same numbers in a resumed run whatever the data path or the number of loader workers.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._trainer: L.Trainer | None = None
        self._metric_states: dict[str, Any] = {}
        self._fresh_iterator = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = (self.seed * 1_000_003 + trainer.current_epoch * 7919 + trainer.global_rank) % 2**31
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if self._fresh_iterator:  # first epoch after a resume: as an uninterrupted run, iterate after seeding
            self._fresh_iterator = False
            self._restart_iterator(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        torch.manual_seed((self.seed * 1_000_003 + trainer.global_step * 104_729 + trainer.global_rank) % 2**63)

    @staticmethod
    def _restart_iterator(trainer: L.Trainer) -> None:
        """Lightning creates the training iterator of a resumed fit once, before the sampler is told the epoch;
        with loader workers that iterator has already drawn epoch 0's indices. A new one follows ``set_epoch``."""
        fetcher = trainer.fit_loop._data_fetcher
        if fetcher is not None:
            iter(fetcher)

    def state_dict(self) -> dict[str, Any]:
        """The running state of the module's metrics, so that an epoch's mean survives a mid-epoch save."""
        from torchmetrics import Metric

        module = self._trainer.lightning_module if self._trainer is not None else None
        states: dict[str, Any] = {}
        for name, metric in (module.named_modules() if module is not None else ()):
            if isinstance(metric, Metric) and metric._update_count and all(
                    torch.is_tensor(getattr(metric, k)) for k in metric._defaults):
                states[name] = {"count": metric._update_count,
                                **{k: getattr(metric, k).detach().cpu().clone() for k in metric._defaults}}
        return {"metrics": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._metric_states = state_dict.get("metrics", {})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        states, self._metric_states = self._metric_states, {}
        mid_epoch = 0 < done < trainer.num_training_batches
        self._fresh_iterator = trainer.current_epoch > 0 and not mid_epoch  # resumed at an epoch's end
        if not mid_epoch:
            return
        from datamodules.base import SeededShuffle

        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, SeededShuffle) and trainer.world_size == 1:
            sampler.set_epoch(trainer.current_epoch)
            sampler.skip = done * loader.batch_size
            self._restart_iterator(trainer)
        modules = dict(pl_module.named_modules())
        for name, state in states.items():
            if name in modules:
                metric = modules[name]
                for key, value in state.items():
                    if key != "count":
                        setattr(metric, key, value.to(getattr(metric, key).device))
                metric._update_count, metric._computed = state["count"], None


class FiniteLossCheck(L.Callback):
    """Stop the run when the training loss is NaN or infinite, checked every ``every`` steps (one sync each)."""

    def __init__(self, every: int = 25):
        self.every = every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % self.every == 0 or batch_idx + 1 == trainer.num_training_batches:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None and not torch.isfinite(loss).item():
                raise FloatingPointError(
                    f"training loss became {loss.item()} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                    "lower the learning rate (--model.init_args.lr) or clip gradients (--trainer.gradient_clip_val 1.0)"
                )


class RunRecorder(L.Callback):
    """Writes ``metrics.csv`` (a row per epoch) and ``summary.json`` (atomically) into the run folder.

    The summary says ``running`` while training, then ``completed`` or ``failed`` with the reason.
    """

    def __init__(self, run_dir: str | Path, extra: dict[str, Any] | None = None, echo: bool = False):
        self.run_dir = Path(run_dir)
        self.extra = extra or {}
        self.echo = echo
        self.start = time.time()
        self.epoch_start = time.time()
        self.samples = 0
        self.rows: list[dict[str, Any]] = []

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and stage == "fit":
            self.rows = self._read_rows()
            self.write_summary(trainer, pl_module, "running")

    def _read_rows(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        with open(self.metrics_path) as f:
            return [dict(row) for row in csv.DictReader(f)]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start = time.time()
        self.samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.samples += len(batch[1]) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        elapsed = time.time() - self.epoch_start
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                               "lr": trainer.optimizers[0].param_groups[0]["lr"], "epoch_time": round(elapsed, 3),
                               "images_per_s": round(self.samples / elapsed, 2) if elapsed > 0 else None}
        for key in METRIC_COLUMNS:
            if key not in row and key in metrics:
                row[key] = _scalar(metrics[key])
        # an epoch repeated after a resume replaces its earlier row
        self.rows = [r for r in self.rows if int(float(r["epoch"])) < trainer.current_epoch] + [row]
        self._write_rows()
        if self.echo:
            shown = {k: row.get(k) for k in ("train/loss", "train_eval/loss", "val/acc", "test/acc") if row.get(k) is not None}
            print(f"epoch {row['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
                  + f", {row['images_per_s']} img/s", flush=True)
        self.write_summary(trainer, pl_module, "running")

    def _write_rows(self) -> None:
        lines = [",".join(METRIC_COLUMNS)]
        for row in self.rows:
            lines.append(",".join("" if row.get(k) in (None, "") else str(row[k]) for k in METRIC_COLUMNS))
        atomic_write(self.metrics_path, "\n".join(lines) + "\n")

    def write_summary(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str, reason: str | None = None,
                      final: dict[str, Any] | None = None) -> None:
        if not trainer.is_global_zero:
            return
        scored = [r for r in self.rows if r.get("val/acc") not in (None, "")]
        best = _floats(max(scored, key=lambda r: float(r["val/acc"]))) if scored else None
        last = _floats(self.rows[-1]) if self.rows else {}
        summary = {
            "status": status,
            "reason": reason,
            "params": getattr(pl_module, "params", None),
            "flops": getattr(pl_module, "macs", None),
            "epochs": len(self.rows),
            "wall_time": round(time.time() - self.start, 2),
            "final": {**last, **(final or {})},
            "best": best,
            **self.extra,
        }
        atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, Interrupted):
            return  # saved and recorded as interrupted
        self.write_summary(trainer, pl_module, "failed", reason=f"{type(exception).__name__}: {exception}")


class Interrupted(Exception):
    """Raised by ``Preemption`` after it has saved the run: ends ``trainer.fit`` without the epoch-end hooks."""


class Preemption(L.Callback):
    """SIGTERM or SIGUSR1 (how SLURM announces preemption or the time limit) stops the run cleanly at the next
    batch end: ``last.ckpt`` is saved (atomically), ``summary.json`` says ``interrupted`` with the signal,
    ``Interrupted`` ends the fit, and ``ablate train`` exits with code 3. Running the same command again resumes
    from that checkpoint, mid-epoch and exactly (``EpochSeeder``); under SLURM with auto-requeue (``--requeue``,
    Lightning's ``SLURMEnvironment``) the job is requeued first.

    The handlers are installed at ``on_train_start``, after Lightning's own, which would otherwise end the run with
    an exception (SIGTERM) or save an ``hpc_ckpt`` outside the run folder (SIGUSR1)."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self, checkpoint: str | Path, recorder: "RunRecorder | None" = None):
        self.checkpoint = Path(checkpoint)
        self.recorder = recorder
        self.received: str | None = None
        self.stopped_by: str | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                signal.signal(getattr(signal, name), self._handle)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # every rank must stop at the same batch: one small all-reduce of the flag (a no-op on one process)
        received = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not received or self.stopped_by:
            return
        self.stopped_by = self.received or "SIGTERM"
        trainer.save_checkpoint(self.checkpoint)
        if self.recorder is not None:
            self.recorder.write_summary(trainer, pl_module, "interrupted", reason=f"received {self.stopped_by}; "
                                        "run the same command again to resume from last.ckpt")
        if trainer.is_global_zero:
            print(f"received {self.stopped_by}: saved {self.checkpoint}, stopping", file=sys.stderr, flush=True)
            self._requeue(trainer)
        # not `trainer.should_stop`: that would run the epoch-end hooks on half an epoch (a metrics row, a
        # checkpoint that claims the epoch finished)
        raise Interrupted(self.stopped_by)

    @staticmethod
    def _requeue(trainer: L.Trainer) -> None:
        """As Lightning's SLURM handler does: requeue this job when SLURM auto-requeue is on."""
        from lightning.fabric.plugins.environments import SLURMEnvironment

        environment = trainer._accelerator_connector.cluster_environment
        if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
            return
        array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
        if job:
            try:
                subprocess.call(["scontrol", "requeue", job])
            except OSError as err:  # the checkpoint is saved either way; a manual resubmit resumes it
                print(f"could not requeue SLURM job {job}: {err}", file=sys.stderr, flush=True)


class EMA(WeightAveraging):
    """Exponential moving average of the weights (the paper fine-tunes with 0.9999), evaluated and saved in place
    of the raw weights: ``--trainer.callbacks+=lightning_modules.callbacks.EMA --trainer.callbacks.decay=0.9999``."""

    def __init__(self, decay: float = 0.9999):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay={decay} must be in (0, 1), e.g. 0.9999")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
