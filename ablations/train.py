"""``ablate train``: LightningCLI for ``ImageClassifier`` x any DataModule, with a run folder and resume.

    ablate train --config ablations/configs/digits_tiny.yaml --model.init_args.model cttt_tiny --trainer.max_epochs 5

Every option is a config key (``--print_config`` prints a YAML that runs again unchanged). The run folder
(``--run_dir``, default ``runs/<model>-<data>-<hash of the config>``) gets ``config.yaml``, ``metrics.csv``,
``summary.json`` and ``checkpoints/``; running the same command again resumes from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from datamodules import ImageDataModule
from lightning_modules.callbacks import EpochSeeder, FiniteLossCheck, RunRecorder
from lightning_modules.classifier import ImageClassifier


class RunFolderConfig(SaveConfigCallback):
    """Saves the resolved config as ``<run_dir>/config.yaml`` (overwriting on resume: same command, same file)."""

    def __init__(self, *args, run_dir: Path, **kwargs):
        super().__init__(*args, overwrite=True, **kwargs)
        self.run_dir = run_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, self.run_dir / "config.yaml", overwrite=True, multifile=False)


def wandb_mode() -> str:
    """``WANDB_MODE`` if set; online when credentials are configured; offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


class AblateCLI(LightningCLI):
    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer gets the run-folder callbacks; they need the parsed config and the built model."""
        config, model = self.config, self.model
        self.run_dir = Path(config.run_dir or Path(config.runs_root) / run_name(config))
        self.recorder = RunRecorder(
            self.run_dir, echo=not sys.stderr.isatty(),
            extra={"model": model.hparams.model, "run_dir": str(self.run_dir), "seed": config.seed_everything},
        )
        callbacks = [
            RunFolderConfig(self.parser, config, run_dir=self.run_dir),
            EpochSeeder(config.seed_everything),
            FiniteLossCheck(),
            ModelCheckpoint(dirpath=self.run_dir / "checkpoints", filename="best", monitor="val/acc", mode="max",
                            save_last=True, every_n_train_steps=config.checkpoint_every_n_steps),
            self.recorder,
        ]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        trainer_config.update(device_defaults(trainer_config, torch.cuda.is_available(), torch.cuda.device_count()))
        if config.wandb.enabled:
            trainer_config["logger"] = self._wandb_logger()
        return self._instantiate_trainer(trainer_config, callbacks)

    def _wandb_logger(self):
        from lightning.pytorch.loggers import WandbLogger

        config, model = self.config, self.model
        logger = WandbLogger(
            project=config.wandb.project, group=config.wandb.group, name=self.run_dir.name,
            job_type=str(getattr(model.backbone, "layout", model.hparams.model)), tags=config.wandb.tags,
            save_dir=str(self.run_dir), mode=wandb_mode(), id=_config_hash(config.as_dict()), resume="allow",
        )
        logger.log_hyperparams({**config.as_dict(), "params": model.params, "flops": model.macs})
        return logger

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


def _config_hash(config: dict[str, Any]) -> str:
    keep = {k: v for k, v in config.items() if k not in ("run_dir", "runs_root", "config", "wandb")}
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_name(config) -> str:
    data = config.data.class_path.rsplit(".", 1)[-1].replace("DataModule", "").lower()
    return f"{config.model.init_args.model}-{data}-{_config_hash(config.as_dict())}"


USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, NotADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    """Train, then test; a bad value or a failed run ends with one line on stderr and exit code 2."""
    # `ablate train ...` hands LightningCLI its arguments while sys.argv still holds them: DDP relaunches each rank
    # from sys.argv, so it stays, and the warning about having both is noise.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        return _train(argv)
    except (ArgumentError, *USER_ERRORS) as err:
        print(f"ablate train: error: {one_line(err)}", file=sys.stderr)
        return 2


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
    skip = ("Expected a <class", "Given value", "Subtypes:", "Errors:", "Does not validate", "Problem with given")
    reasons = [line.strip(" -") for line in text.splitlines()[1:] if line.strip() and not line.strip(" -").startswith(skip)]
    reason = reasons[-1] if reasons else (text.splitlines() or [type(err).__name__])[0]
    return f"{key}: {reason}" if key else reason


def _train(argv: list[str] | None) -> int:
    cli = AblateCLI(
        ImageClassifier, ImageDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
        save_config_callback=None, args=argv, auto_configure_optimizers=False,
        parser_kwargs={"default_env": False, "prog": "ablate train", "exit_on_error": False},
        seed_everything_default=0,
        trainer_defaults={"enable_progress_bar": sys.stderr.isatty(), "enable_model_summary": sys.stderr.isatty()},
    )
    trainer, model, data, run_dir = cli.trainer, cli.model, cli.datamodule, cli.run_dir
    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "completed":
        print(f"{run_dir} is already completed; delete its summary.json to run it again", file=sys.stderr)
        return 0
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.fit(model, datamodule=data, ckpt_path=str(last) if last.exists() else None)
    if trainer.interrupted or trainer.state.status.value != "finished":
        return 1
    final = trainer.test(model, datamodule=data, verbose=False)[0]
    cli.recorder.write_summary(trainer, model, "completed", final={k: float(v) for k, v in final.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
