"""``ablate train``: LightningCLI for ``ImageClassifier`` x any DataModule, with a run folder and resume.

    ablate train --config ablations/configs/digits_tiny.yaml --model.init_args.model cttt_tiny --trainer.max_epochs 5

Every option is a config key (``--print_config`` prints a YAML that runs again unchanged). The run folder
(``--run_dir``, default ``runs/<model>-<data>-<hash of the config>``) gets ``config.yaml``, ``metrics.csv``,
``summary.json`` and ``checkpoints/``; running the same command again resumes from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from datamodules import ImageDataModule
from lightning_modules import run_folder
from lightning_modules.callbacks import (
    EpochSeeder, EvaluationSchedule, FiniteLossCheck, Interrupted, Preemption, RunRecorder,
)
from lightning_modules.checkpoints import AtomicCheckpointIO, read_summary, resume_checkpoint
from lightning_modules.classifier import ImageClassifier


class RunFolderConfig(SaveConfigCallback):
    """Saves the resolved config as ``<run_dir>/config.yaml`` (overwriting on resume: same command, same file)."""

    def __init__(self, *args, run_dir: Path, **kwargs):
        super().__init__(*args, overwrite=True, **kwargs)
        self.run_dir = run_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:  # written beside, then renamed over: never half a config
            run_folder.atomic_write(self.run_dir / run_folder.CONFIG, self.parser.dump(self.config))


class AblateCLI(LightningCLI):
    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer gets the run-folder callbacks; they need the parsed config and the built model."""
        config, model = self.config, self.model
        self.run_dir = Path(config.run_dir or Path(config.runs_root) / run_name(config))
        self.recorder = RunRecorder(
            self.run_dir, echo=not sys.stderr.isatty(),
            extra={"model": model.hparams.model, "run_dir": str(self.run_dir), "seed": config.seed_everything},
            wandb_open=self._wandb_run if config.wandb.enabled else None,
        )
        self.preemption = Preemption(run_folder.last_checkpoint(self.run_dir), self.recorder)
        # without a validation split (val_fraction 0) best.ckpt is the last epoch: the test set never chooses
        monitor = "val/acc" if getattr(self.datamodule, "val_fraction", 1) > 0 else None
        callbacks = [
            RunFolderConfig(self.parser, config, run_dir=self.run_dir),
            EpochSeeder(config.seed_everything),
            FiniteLossCheck(),
            # saved at the end of the training epoch, after RunRecorder has written the epoch's metrics row: a kill
            # in between repeats the epoch on resume and its row is replaced, never lost or doubled
            ModelCheckpoint(dirpath=run_folder.checkpoints(self.run_dir), filename="best", monitor=monitor, mode="max",
                            save_last=True, every_n_train_steps=config.checkpoint_every_n_steps,
                            save_on_train_epoch_end=True),
            self.recorder,
            self.preemption,
            EvaluationSchedule(),
        ]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        check_devices(trainer_config, torch.cuda.device_count())
        plugins = trainer_config.get("plugins") or []
        trainer_config["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
        trainer_config.update(device_defaults(trainer_config, torch.cuda.is_available(), torch.cuda.device_count()))
        # the run folder's log is always a logger; W&B, when enabled, gets the same rows from the recorder
        loggers = trainer_config.get("logger")
        loggers = [] if loggers in (None, True, False) else loggers if isinstance(loggers, list) else [loggers]
        trainer_config["logger"] = [self.recorder.logger, *loggers]
        return self._instantiate_trainer(trainer_config, callbacks)

    def _wandb_run(self):
        """The run folder's W&B run, opened when training starts: the nested config (never the module's flat
        hyperparameters over it), params and FLOPs."""
        from lightning_modules.wandb_run import open_run

        config, model = self.config, self.model
        record = config.as_dict()
        # the values the DataModule linked into the model at instantiation, which the parsed config predates
        record["model"]["init_args"].update({k: model.hparams[k] for k in ("num_classes", "image_size", "in_chans")})
        return open_run(self.run_dir, {**record, "params": model.params, "flops": model.macs},
                        model.summaries, config.wandb.project, config.wandb.group, config.wandb.tags,
                        job_type=str(getattr(model.backbone, "layout", model.hparams.model)))

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="run folder (default runs/<model>-<data>-<config hash>)")
        parser.add_argument("--runs_root", type=str, default="runs", help="parent of default run folders")
        parser.add_argument("--wandb.enabled", type=bool, default=False, help="log to Weights & Biases too")
        parser.add_argument("--wandb.project", type=str, default="stacking-ablations")
        parser.add_argument("--wandb.group", type=str | None, default=None, help="experiment or sweep name")
        parser.add_argument("--wandb.tags", type=list[str], default=[])
        parser.add_argument("--checkpoint_every_n_steps", type=int | None, default=None,
                            help="also save last.ckpt every N steps (long epochs)")
        parser.link_arguments("seed_everything", "data.init_args.seed")  # one seed: init, subset, order, augmentation
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.init_args.image_size", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")


def device_defaults(trainer: dict[str, Any], cuda: bool, gpus: int) -> dict[str, Any]:
    """bf16-mixed when training on GPUs and no precision is given; SyncBatchNorm for multi-GPU DDP only (on CPU
    the per-process batches are small and gloo's all-reduce per BatchNorm layer would dominate)."""
    on_gpu = cuda and trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    devices = trainer.get("devices", "auto")
    count = gpus if devices in ("auto", -1, "-1") else len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    out: dict[str, Any] = {}
    if trainer.get("precision") is None:
        out["precision"] = "bf16-mixed" if on_gpu else "32-true"
    if on_gpu and count * int(trainer.get("num_nodes") or 1) > 1:
        out["sync_batchnorm"] = True
    return out


def check_devices(trainer: dict[str, Any], gpus: int) -> None:
    """Asking for more GPUs than are visible is a one-line error here, not a Lightning traceback."""
    accelerator = str(trainer.get("accelerator") or "auto")
    devices = trainer.get("devices", "auto")
    if isinstance(devices, str) and "," in devices:  # Lightning reads "0,1" as GPU indices
        devices = [int(d) for d in devices.split(",") if d.strip()]
    if accelerator not in ("gpu", "cuda") and not (accelerator == "auto" and gpus):
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"{gpus} GPU(s) are visible" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise ValueError(f"--trainer.accelerator={accelerator} asks for GPUs but {seen}; use --trainer.accelerator=cpu")
    if isinstance(devices, (list, tuple)):
        missing = [d for d in devices if int(d) >= gpus]
        if missing:
            raise ValueError(f"--trainer.devices={list(devices)} names GPU(s) {missing} but {seen}; valid indices 0..{gpus - 1}")
    elif str(devices) not in ("auto", "-1") and int(devices) > gpus:
        raise ValueError(f"--trainer.devices={devices} asks for {devices} GPUs but {seen}; use at most {gpus}")


class RunFolderError(OSError):
    """The run folder cannot hold the run (unwritable, or too little free space)."""


MIN_FREE_BYTES = 100 * 2**20  # below this a run would fail at its first checkpoint


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def preflight(run_dir: Path, params: int) -> None:
    """Fail in a second, not after hours: the run folder must be writable and have room for a few checkpoints
    (weights + AdamW's two moments in fp32, x3 for last/best/the temporary copy), at least ``MIN_FREE_BYTES``."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RunFolderError(f"run folder {run_dir} is not writable ({err.strerror or err}); "
                              "choose another with --run_dir or --runs_root") from None
    need = max(MIN_FREE_BYTES, 3 * 3 * 4 * int(params or 0))
    free = free_bytes(run_dir)
    if free < need:
        raise RunFolderError(f"run folder {run_dir} has {free / 2**20:.0f} MiB free, a run needs at least "
                      f"{need / 2**20:.0f} MiB for its checkpoints; free space or choose another --run_dir")


def _config_hash(config: dict[str, Any]) -> str:
    keep = {k: v for k, v in config.items() if k not in ("run_dir", "runs_root", "config", "wandb")}
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_name(config) -> str:
    data = config.data.class_path.rsplit(".", 1)[-1].replace("DataModule", "").lower()
    return f"{config.model.init_args.model}-{data}-{_config_hash(config.as_dict())}"


USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, NotADirectoryError, PermissionError, RunFolderError,
               MemoryError)
EXIT_INTERRUPTED = 3  # SIGTERM/SIGUSR1: last.ckpt saved, summary "interrupted"; the same command resumes


def main(argv: list[str] | None = None) -> int:
    """Train, then test; a bad value or a failed run ends with one line on stderr and exit code 2, a run stopped
    by SIGTERM/SIGUSR1 with code 3 after saving ``last.ckpt`` (the same command resumes it)."""
    # `ablate train ...` hands LightningCLI its arguments while sys.argv still holds them: DDP relaunches each rank
    # from sys.argv, so it stays, and the warning about having both is noise.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # EpochSeeder makes the training loader resume mid-epoch (its sampler skips the batches already trained)
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    try:
        return _train(argv)
    except (ArgumentError, *USER_ERRORS) as err:
        line = one_line(err)
        if str(err).startswith("Problems parsing config"):  # YAML syntax: name the file(s) and where
            files = [a.split("=", 1)[1] for a in (argv or sys.argv[1:]) if a.startswith("--config=")]
            text = str(err).removeprefix("Problems parsing config:")
            where = " ".join(part.strip() for part in text.splitlines()).replace('in "<unicode string>", ', "at ")
            line = f"YAML error in --config {', '.join(files) or '(config)'}: {where}"
        print(f"ablate train: error: {line}", file=sys.stderr)
        _record_failure(argv, err, line)
        return 2


def _record_failure(argv: list[str] | None, err: BaseException, line: str) -> None:
    """A run that stops with an error says why in its summary.json, when its folder was named (as a sweep
    does): the kind decides whether a sweep tries it again."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--run_dir")
    run_dir = parser.parse_known_args(argv if argv is not None else sys.argv[1:])[0].run_dir
    if run_dir and Path(run_dir).is_dir():
        run_folder.record_failure(Path(run_dir), run_folder.failure_kind(err), line)


def one_line(err: BaseException) -> str:
    """The line that names the bad value. jsonargparse nests a constructor's error, or a bad key, in a report of
    union subtypes; the innermost reason is the line a user needs (an unknown data set also lists the valid ones)."""
    text = str(err)
    key = text.split('"')[1] if text.startswith('Parser key "') else None
    if key == "data" and ("Expected a dot import path" in text or "either not accessible or invalid" in text):
        given = text.rsplit("Given value:", 1)[-1].strip()
        import datamodules

        valid = ", ".join(n for n in datamodules.__all__ if n.endswith("DataModule") and n != "ImageDataModule")
        return f"unknown data set {given!r}; valid data sets: {valid} (or a dotted class path)"
    skip = ("Expected a <class", "Given value", "Subtypes:", "Errors:", "Does not validate", "Problem with given",
            "Not a valid subclass", "Subclass types expect", "a class path", "a dict with")
    reasons = [line.strip(" -") for line in text.splitlines()[1:] if line.strip() and not line.strip(" -").startswith(skip)]
    reason = reasons[-1] if reasons else (text.splitlines() or [type(err).__name__])[0]
    return f"{key}: {reason}" if key else reason


class OutOfMemory(MemoryError):
    """A batch that does not fit, as one line that suggests a batch that might."""

    @classmethod
    def wrap(cls, err: BaseException, batch_size: int | None) -> "OutOfMemory | None":
        """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError ("DefaultCPUAllocator: can't allocate")."""
        text = str(err)
        if not (isinstance(err, (torch.OutOfMemoryError, MemoryError))
                or (isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()))):
            return None
        if batch_size and batch_size > 1:
            hint = (f"batch_size={batch_size} does not fit in memory; try --data.init_args.batch_size={batch_size // 2}"
                    " (per device)")
        else:
            hint = "the model does not fit in memory even at batch_size=1; choose a smaller model or image size"
        first = (text.strip().splitlines() or [type(err).__name__])[0][:160]
        return cls(f"out of memory: {hint} ({type(err).__name__}: {first})")


def _train(argv: list[str] | None) -> int:
    cli = AblateCLI(
        ImageClassifier, ImageDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
        save_config_callback=None, args=argv, auto_configure_optimizers=False,
        parser_kwargs={"default_env": False, "prog": "ablate train", "exit_on_error": False},
        seed_everything_default=0,
        trainer_defaults={"enable_progress_bar": sys.stderr.isatty(), "enable_model_summary": sys.stderr.isatty()},
    )
    trainer, model, data, run_dir = cli.trainer, cli.model, cli.datamodule, cli.run_dir
    summary = read_summary(run_dir)  # an unreadable one is set aside: the run is not completed
    if summary is not None and summary.get("status") == "completed":
        print(f"{run_dir} is already completed; delete its summary.json to run it again", file=sys.stderr)
        return 0
    preflight(run_dir, getattr(model, "params", 0))
    resume = resume_checkpoint(run_folder.checkpoints(run_dir))  # last.ckpt, or the newest good one; damaged ones set aside
    try:
        trainer.fit(model, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=True)
        if trainer.interrupted or trainer.state.status.value != "finished":
            return 1
        final = trainer.test(model, datamodule=data, verbose=False)[0]
    except Interrupted:
        return EXIT_INTERRUPTED
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise RunFolderError(f"run folder {run_dir} ran out of space ({err.strerror}); free space and run the same "
                             "command again to resume from its last complete checkpoint") from None
    except (RuntimeError, MemoryError) as err:
        oom = OutOfMemory.wrap(err, getattr(data, "batch_size", None))
        if oom is None:
            raise
        cli.recorder.write_summary(trainer, model, "failed", reason=str(oom), failure="oom")
        raise oom from None
    cli.recorder.write_summary(trainer, model, "completed", final={k: float(v) for k, v in final.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
