"""Callbacks that make a run a record: a local run folder, exact resume, and a loud stop on a non-finite loss."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.loggers import Logger
from torch.optim.swa_utils import get_ema_multi_avg_fn
import numpy as np
import torch

from . import compat, curves, run_folder


def _scalar(value: Any) -> float | None:
    return None if value is None else float(value.item() if torch.is_tensor(value) else value)


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
            compat.restart_train_iterator(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        torch.manual_seed((self.seed * 1_000_003 + trainer.global_step * 104_729 + trainer.global_rank) % 2**63)

    def state_dict(self) -> dict[str, Any]:
        """The running state of the module's metrics, so that an epoch's mean survives a mid-epoch save."""
        from torchmetrics import Metric

        module = self._trainer.lightning_module if self._trainer is not None else None
        states: dict[str, Any] = {}
        for name, metric in (module.named_modules() if module is not None else ()):
            if isinstance(metric, Metric) and metric.update_called and all(
                    torch.is_tensor(v) for v in metric.metric_state.values()):
                states[name] = {k: v.detach().cpu().clone() for k, v in metric.metric_state.items()}
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
            compat.restart_train_iterator(trainer)
        modules = dict(pl_module.named_modules())
        for name, state in states.items():
            if name in modules:
                metric = modules[name]
                metric.reset()
                metric.merge_state({k: v.to(metric.device) for k, v in state.items() if k != "count"})


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


def evaluation_due(step: int, batch_idx: int, batches: int | float, every: int | None = None) -> bool:
    """Whether the run evaluates after training step ``step`` (batch ``batch_idx`` of an epoch of ``batches``):
    after steps 1, 2, 4, 8, ..., at an epoch's end, and (``every``) after every ``every``-th step. One rule for
    ``EvaluationSchedule``, which makes the evaluations, and ``Preemption``, which must never stop in front of one."""
    return step & (step - 1) == 0 or batch_idx + 1 == batches or bool(every and step % every == 0)


class EvaluationSchedule(L.Callback):
    """Evaluate after training steps 1, 2, 4, 8, ... as well as at every epoch's end: a run's curves start near
    chance and are dense where the loss falls fastest, so any two runs' clean training losses cross (equal-loss
    accuracy needs a crossing) however few epochs the run has. ``every`` (``--eval_every_n_steps``) adds an
    evaluation after every ``every``-th step, for curves that stay dense late in long epochs."""

    def __init__(self, every: int | None = None):
        self.every = every

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        step = trainer.global_step + 1  # the step this batch completes
        compat.validate_after_batch(trainer, batch_idx, evaluation_due(step, batch_idx, float("inf"), self.every))


class TargetLoss(L.Callback):
    """Stop training at the first evaluation whose clean training loss (``train_eval/loss``) is at or below
    ``loss`` (``--target_loss``), so that runs can be compared at equal training loss; the test then runs on the
    model at that step. The step and epoch are recorded (``record``, summary.json's ``target``).

    The stop is exact on resume. Setting ``trainer.should_stop`` after a mid-epoch evaluation ends the epoch there:
    no later batch or evaluation, but the epoch-end hooks run (``RunRecorder`` adds the epoch's training metrics to
    the stop's row). ``last.ckpt`` is then saved here, after that row and holding the stop: ``ModelCheckpoint``
    saves it at an epoch's end only with a new best checkpoint. A run killed after that save (during the test)
    resumes with ``trainer.should_stop`` set as the checkpoint is read (``load_state_dict``), so the fit returns at
    once and the test runs on the model at the stop; a run killed before it resumes from an earlier checkpoint and
    reaches the same stop again."""

    def __init__(self, loss: float, checkpoint: str | Path):
        self.loss = float(loss)
        self.checkpoint = Path(checkpoint)
        self.step: int | None = None
        self.epoch: int | None = None
        self._trainer: L.Trainer | None = None
        self._save_at_epoch_end = False

    @property
    def reached(self) -> bool:
        return self.step is not None

    def record(self) -> dict[str, Any]:
        return {"loss": self.loss, "reached": self.reached, "step": self.step, "epoch": self.epoch}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer  # set up before a checkpoint is read: load_state_dict can stop the fit

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After the evaluation's metrics are logged (``on_validation_epoch_end`` runs callbacks before the module)."""
        if trainer.sanity_checking or self.reached:
            return
        value = trainer.callback_metrics.get("train_eval/loss")
        # the metric is synchronised across ranks; the decision is too, so that every rank stops at this step
        if trainer.strategy.reduce_boolean_decision(value is not None and float(value) <= self.loss, all=False):
            self.step, self.epoch = trainer.global_step, trainer.current_epoch
            self._save_at_epoch_end = True
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._save_at_epoch_end:
            self._save_at_epoch_end = False
            trainer.save_checkpoint(self.checkpoint, weights_only=False)

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "step": self.step, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step, self.epoch = state_dict.get("step"), state_dict.get("epoch")
        if self.reached and self._trainer is not None:
            self._trainer.should_stop = True  # read before the fit loop starts: it trains no further


class RunLog(Logger):
    """The run folder's metrics, received as every Lightning logger receives them: whatever the module logs
    reaches ``metrics.csv`` (and W&B through ``RunRecorder``), with no list of names to keep in step."""

    def __init__(self, recorder: "RunRecorder"):
        super().__init__()
        self.recorder = recorder

    @property
    def name(self) -> str:
        return "run_folder"

    @property
    def version(self) -> str:
        return self.recorder.run_dir.name

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """config.yaml is the run's configuration; the module's flat hyperparameters add nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.recorder.record({k: v for k, v in metrics.items() if k != "epoch"})


class RunRecorder(L.Callback):
    """Writes ``metrics.csv`` and ``summary.json`` (atomically, through ``run_folder``) and, when given one, the
    same rows to a W&B run.

    ``metrics.csv`` has a row per evaluation (``EvaluationSchedule``), keyed by training step: every metric the
    module logged there (through ``RunLog``), and at an epoch's end the epoch's training metrics, learning rate,
    epoch time and images/s (logged too, so that W&B's history has them). The summary says ``running`` while
    training, then ``completed``, or ``failed`` with the failure kind and reason (``run_folder.FAILURE_KINDS``,
    written when `ablate train` records the failure: ``RunSession.record_failure``); it
    records the target loss's stop (``TargetLoss``) and whether the run converged (``write_summary``). The final
    test's per-image predictions go to ``predictions.npz``.
    """

    def __init__(self, run_dir: str | Path, extra: dict[str, Any] | None = None, echo: bool = False,
                 wandb_open: Callable[[], Any] | None = None):
        self.run_dir = Path(run_dir)
        self.extra = extra or {}
        self.echo = echo
        self.wandb_open = wandb_open  # opens the W&B run when training starts
        self.wandb_run = None
        self.logger = RunLog(self)
        self.start = time.time()
        self.epoch_start = time.time()
        self.samples = 0
        self.rows: list[dict[str, Any]] = []
        self.total_steps: int | float | None = None  # the run's training budget in optimizer steps
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if trainer.is_global_zero and stage == "fit":
            self.rows = run_folder.read_rows(self.run_dir)
            self.write_summary(trainer, pl_module, "running")
            if self.wandb_open is not None and self.wandb_run is None:
                self.wandb_run = self.wandb_open()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """The W&B run ends with the test, after ``predictions.npz`` is uploaded. (Lightning tears down a fit or a test
        that finished, before it says so in ``trainer.state``; after an exception it calls no teardown, and W&B's
        exit hook ends the run with the process's exit code.)"""
        if self.wandb_run is not None and stage == "test":
            self.wandb_run.finish(exit_code=0)
            self.wandb_run = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.total_steps = trainer.estimated_stepping_batches  # as the learning-rate schedule has it

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run repeats what came after its checkpoint: those rows are recorded again."""
        self.rows = [r for r in self.rows if r["step"] <= trainer.global_step]

    def record(self, metrics: dict[str, Any], epoch_end: bool = False) -> None:
        """Merge ``metrics`` into the row of the current training step (only while fitting, on rank zero)."""
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        row = {k: _scalar(v) for k, v in metrics.items()}
        step = trainer.global_step
        if self.rows and self.rows[-1]["step"] == step:
            self.rows[-1].update(row)
        else:
            self.rows.append({"epoch": trainer.current_epoch, "step": step, **row})
        run_folder.write_rows(self.run_dir, self.rows)
        if self.wandb_run is not None:
            self.wandb_run.log({**row, "epoch": trainer.current_epoch, "trainer/global_step": step})

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start = time.time()
        self.samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.samples += len(batch[1]) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Runs before the epoch's checkpoint is saved: a kill in between repeats the epoch and replaces its rows."""
        elapsed = time.time() - self.epoch_start
        timing = {"lr": trainer.optimizers[0].param_groups[0]["lr"], "epoch_time": round(elapsed, 3),
                  "images_per_s": round(self.samples / elapsed, 2) if elapsed > 0 else 0.0}
        pl_module.log_dict(timing, on_epoch=True, rank_zero_only=True)
        # everything logged is current at an epoch's end (the training loss is only computed now)
        self.record({**trainer.callback_metrics, **timing})
        if self.echo and trainer.is_global_zero and self.rows:
            row = self.rows[-1]
            shown = {k: row.get(k) for k in ("train/loss", "train_eval/loss", "val/acc", "test/acc") if row.get(k) is not None}
            print(f"epoch {row['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
                  + f", {row['images_per_s']} img/s", flush=True)
        self.write_summary(trainer, pl_module, "running")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final test's per-image predictions (gathered by the module) go to ``predictions.npz``, and to W&B."""
        predictions = getattr(pl_module, "test_predictions", None)
        if not trainer.is_global_zero or predictions is None:
            return
        path = run_folder.write_predictions(self.run_dir, predictions)
        if self.wandb_run is not None:
            self.wandb_run.save(str(path), base_path=str(self.run_dir), policy="now")

    def write_summary(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str, reason: str | None = None,
                      final: dict[str, Any] | None = None, failure: str | None = None) -> None:
        """``target``: the ``TargetLoss`` record (None without ``--target_loss``). ``convergence``: how far the clean
        training loss still fell at the end of the budget (``curves.convergence``), for a completed run trained to
        its budget; None otherwise (a run stopped at its target loss was not)."""
        if not trainer.is_global_zero:
            return
        scored = [r for r in self.rows if r.get("val/acc") is not None]
        epoch_ends = [r for r in self.rows if r.get("train/loss") is not None]
        target = next((c for c in trainer.callbacks if isinstance(c, TargetLoss)), None)
        converged = None
        if status == "completed" and not (target is not None and target.reached):
            evaluations = [r for r in self.rows if r.get("train_eval/loss") is not None]
            converged = curves.convergence([r["step"] for r in evaluations], [r["train_eval/loss"] for r in evaluations],
                                           self.total_steps)
        summary = {
            "status": status,
            "failure": failure,
            "reason": reason,
            "params": getattr(pl_module, "params", None),
            "flops": getattr(pl_module, "macs", None),
            "init_from": getattr(pl_module, "init_record", None),  # the starting weights, resolved (init_from.py)
            "epochs": len(epoch_ends),
            "wall_time": round(time.time() - self.start, 2),
            "final": {**(epoch_ends[-1] if epoch_ends else {}), **(final or {})},
            "best": max(scored, key=lambda r: r["val/acc"]) if scored else None,
            "target": target.record() if target is not None else None,
            "convergence": converged,
            **self.extra,
        }
        run_folder.write_summary(self.run_dir, summary)


class Interrupted(Exception):
    """Raised by ``Preemption`` after it has saved the run: ends ``trainer.fit`` without the epoch-end hooks."""


class Preemption(L.Callback):
    """SIGTERM or SIGUSR1 (how SLURM announces preemption or the time limit) stops the run cleanly at the next
    batch end that no evaluation follows (see ``EvaluationSchedule``): ``last.ckpt`` is saved (atomically), ``summary.json`` says ``interrupted`` with the signal,
    ``Interrupted`` ends the fit, and ``ablate train`` exits with code 3. Running the same command again resumes
    from that checkpoint, mid-epoch and exactly (``EpochSeeder``); under SLURM with auto-requeue (``--requeue``,
    Lightning's ``SLURMEnvironment``) the job is requeued first.

    The handlers are installed at ``on_train_start``, after Lightning's own, which would otherwise end the run with
    an exception (SIGTERM) or save an ``hpc_ckpt`` outside the run folder (SIGUSR1)."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self, checkpoint: str | Path, recorder: "RunRecorder | None" = None, eval_every: int | None = None):
        self.checkpoint = Path(checkpoint)
        self.recorder = recorder
        self.eval_every = eval_every  # EvaluationSchedule's: the steps an evaluation follows
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
        if evaluation_due(trainer.global_step, batch_idx, trainer.num_training_batches, self.eval_every):
            return  # a resumed run would skip this step's evaluation (as Lightning does): stop after the next batch
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

        environment = compat.cluster_environment(trainer)
        if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
            return
        array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
        if job:
            try:
                subprocess.call(["scontrol", "requeue", job])
            except OSError as err:  # the checkpoint is saved either way; a manual resubmit resumes it
                print(f"could not requeue SLURM job {job}: {err}", file=sys.stderr, flush=True)


class StepCheckpoint(L.Callback):
    """``--checkpoint_every_n_steps N``: save ``last.ckpt`` after every N-th training step, or, when an evaluation
    follows that step, after the first later one that none follows (as ``Preemption`` stops). Lightning resumes a
    checkpoint saved after a batch as if that batch's evaluation had run: saved in front of an evaluation, the
    resumed run would lose its metrics row, and a ``TargetLoss`` stop there."""

    def __init__(self, checkpoint: str | Path, every: int, eval_every: int | None = None):
        self.checkpoint = Path(checkpoint)
        self.every = every
        self.eval_every = eval_every
        self.saved = 0  # the step of the last save (or of the start)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.saved = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step // self.every > self.saved // self.every and not evaluation_due(
                step, batch_idx, trainer.num_training_batches, self.eval_every):
            trainer.save_checkpoint(self.checkpoint, weights_only=False)
            self.saved = step


class EMA(WeightAveraging):
    """Exponential moving average of the weights (the paper fine-tunes with 0.9999), evaluated and saved in place
    of the raw weights: ``--trainer.callbacks+=lightning_modules.callbacks.EMA --trainer.callbacks.decay=0.9999``."""

    def __init__(self, decay: float = 0.9999):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay={decay} must be in (0, 1), e.g. 0.9999")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
