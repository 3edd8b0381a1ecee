"""``ablate train``: LightningCLI for ``ImageClassifier`` x any DataModule, with a run folder and resume.

    ablate train --config ablations/configs/digits_tiny.yaml --model.init_args.model cttt_tiny --trainer.max_epochs 5

Every option is a config key (``--print_config`` prints a YAML that runs again unchanged). The run folder
(``--run_dir``, default ``runs/<model>-<data>-<hash of the config>``) gets ``config.yaml``, ``metrics.csv``,
``summary.json``, ``predictions.npz`` and ``checkpoints/``; running the same command again resumes from
``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from datamodules import ImageDataModule
from lightning_modules import compat, init_from, run_folder
from lightning_modules.callbacks import (
    EpochSeeder, EvaluationSchedule, FiniteLossCheck, Interrupted, Preemption, RunRecorder, StepCheckpoint, TargetLoss,
)
from lightning_modules.checkpoints import AtomicCheckpointIO, resume_checkpoint
from lightning_modules.classifier import ImageClassifier
from lightning_modules.optim import checkpoint_bytes
from lightning_modules.ranges import PositiveFinite, PositiveInt

from .. import identity, runlock
from .messages import OutOfMemory, error_line
from .run_setup import (
    AlreadyCompleted, RunFolderError, RunSession, check_resume, is_rank_zero, named_run_dir, preflight, run_dir_for,
)
from .trainer_options import HeldLines, check_devices, check_trainer, device_defaults, silenced


class RunFolderConfig(SaveConfigCallback):
    """Saves the resolved config as ``<run_dir>/config.yaml`` when training first starts, and never again: a resume
    has the same result-affecting settings (``check_resume``): the file stays the first's."""

    def __init__(self, *args, run_dir: Path, **kwargs):
        super().__init__(*args, overwrite=True, **kwargs)
        self.run_dir = run_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        path = self.run_dir / run_folder.CONFIG
        if trainer.is_global_zero and not path.exists():  # written beside, then renamed over: never half a config
            run_folder.atomic_write(path, self.parser.dump(self.config))


class AblateCLI(LightningCLI):
    """`ablate train`'s options and run folder; ``session`` is the command's hold on the folder (``main``'s)."""

    def __init__(self, *args, session: RunSession | None = None, **kwargs):
        self.session = session if session is not None else RunSession()
        super().__init__(*args, **kwargs)

    def settings(self) -> dict[str, Any]:
        """This command's result-affecting settings, read back from the YAML that config.yaml is written as."""
        defaults = self.parser.get_defaults()  # `ablate train`'s own options: a later one's default is no setting
        identity.TOP_LEVEL_DEFAULTS.update({k: v for k, v in vars(defaults).items() if not hasattr(v, "__dict__")})
        # a named folder's record of its source counts: a resume needs not the source (init_from.py)
        return identity.result_settings(yaml.safe_load(self.parser.dump(self.config)), self.config.run_dir)

    def before_instantiate_classes(self) -> None:
        """Refuse what can be refused before anything is built: trainer ranges, a run folder in use, a resume with
        other settings; and stop here when the run is already completed."""
        check_trainer(self.config.trainer)
        settings = self.settings()
        self.run_dir = run_dir_for(self.config, settings)
        self.session.open(self.run_dir)
        if is_rank_zero():
            check_resume(self.run_dir, settings)
        self.source_identity = settings.get(init_from.OPTION)  # what the folder hash counts the source as

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer gets the run-folder callbacks; they need the parsed config and the built model."""
        config, model = self.config, self.model
        # last.ckpt, or the newest good one (damaged ones set aside); None: a fresh start
        self.resume = resume_checkpoint(run_folder.checkpoints(self.run_dir))
        if model.hparams.init_from is not None:  # a resume restores its own weights: its source is not read
            if self.resume is None:  # a bad source is refused here, before the folder holds a run
                model.load_init_from(self.source_identity)
            else:
                model.init_record = init_from.recorded(self.run_dir)
        self.session.set_up()
        trainer_config = {**self.config_init.get("trainer", {}), **kwargs}
        user_callbacks = _as_list(trainer_config.get("callbacks"))
        preflight(self.run_dir, checkpoint_bytes(model, averaged=any(isinstance(c, WeightAveraging)
                                                                     for c in user_callbacks)))
        self.recorder = RunRecorder(
            self.run_dir, echo=not sys.stderr.isatty(),
            extra={"model": model.hparams.model, "run_dir": str(self.run_dir), "seed": config.seed_everything,
                   "backbone": dataclasses.asdict(model.backbone.cfg)},  # the built shape, budget-matched or not
            wandb_open=self._wandb_run if config.wandb.enabled else None,
        )
        self.preemption = Preemption(run_folder.last_checkpoint(self.run_dir), self.recorder,
                                     eval_every=config.eval_every_n_steps)
        # without a validation split (val_fraction 0) best.ckpt is the last epoch: the test set never chooses
        monitor = "val/acc" if getattr(self.datamodule, "val_fraction", 1) > 0 else None
        held = HeldLines()  # Lightning's device lines wait until the data are set up (HeldLines)
        callbacks = [
            held,
            RunFolderConfig(self.parser, config, run_dir=self.run_dir),
            EpochSeeder(config.seed_everything),
            FiniteLossCheck(),
            # saved at the end of the training epoch, after RunRecorder has written the epoch's metrics row: a kill
            # in between repeats the epoch on resume and its row is replaced, never lost or doubled
            # one name per checkpoint, replaced in place: never a best-v1.ckpt beside best.ckpt
            ModelCheckpoint(dirpath=run_folder.checkpoints(self.run_dir), filename=Path(run_folder.BEST_CHECKPOINT).stem,
                            monitor=monitor, mode="max",
                            save_last=True, save_on_train_epoch_end=True, enable_version_counter=False),
            self.recorder,
            self.preemption,
            EvaluationSchedule(config.eval_every_n_steps),
        ]
        if config.checkpoint_every_n_steps is not None:  # never in front of an evaluation (StepCheckpoint)
            callbacks.append(StepCheckpoint(run_folder.last_checkpoint(self.run_dir), config.checkpoint_every_n_steps,
                                            eval_every=config.eval_every_n_steps))
        if config.target_loss is not None:  # after the recorder: it saves last.ckpt after the stop's row is written
            callbacks.append(TargetLoss(config.target_loss, run_folder.last_checkpoint(self.run_dir)))
        check_devices(trainer_config, torch.cuda.device_count())
        ours = device_defaults(trainer_config, torch.cuda.is_available(), torch.cuda.device_count())
        ours["callbacks"] = [*user_callbacks, *callbacks]  # the user's first
        ours["plugins"] = [*_as_list(trainer_config.get("plugins")), AtomicCheckpointIO()]
        # the run folder's log is always a logger; W&B, when enabled, gets the same rows from the recorder
        loggers = trainer_config.get("logger")
        ours["logger"] = [self.recorder.logger, *([] if loggers in (True, False) else _as_list(loggers))]
        with held.holding():
            trainer = super().instantiate_trainer(**{**kwargs, **ours})
        self.session.write_failed = functools.partial(self.recorder.write_summary, trainer, model, "failed")
        return trainer

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
        parser.add_argument("--checkpoint_every_n_steps", type=PositiveInt | None, default=None,
                            help="also save last.ckpt every N steps (long epochs)")
        parser.add_argument("--eval_every_n_steps", type=PositiveInt | None, default=None,
                            help="also evaluate (a metrics.csv row) after every K-th training step, besides steps "
                                 "1, 2, 4, 8, ... and each epoch's end")
        parser.add_argument("--target_loss", type=PositiveFinite | None, default=None,
                            help="stop at the first evaluation whose clean training loss (train_eval/loss) is at or "
                                 "below this; the test then runs on the model there (summary.json's target)")
        parser.link_arguments("seed_everything", "data.init_args.seed")  # one seed: init, subset, order, augmentation
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.init_args.image_size", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")


def _as_list(value: Any) -> list[Any]:
    """A Trainer option that takes one item or a list of them, as a list (None: none)."""
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def _cli(cls: type[AblateCLI], argv: list[str] | None, session: RunSession | None = None) -> AblateCLI:
    with silenced(compat.seed_logger()):  # no "Seed set to 0": the seed is in config.yaml
        return cls(
            ImageClassifier, ImageDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
            save_config_callback=None, args=argv, auto_configure_optimizers=False, session=session,
            parser_kwargs={"default_env": False, "prog": "ablate train", "exit_on_error": False},
            seed_everything_default=0,
            trainer_defaults={"enable_progress_bar": sys.stderr.isatty(), "enable_model_summary": sys.stderr.isatty()},
        )


class _Parser(Exception):
    def __init__(self, parser):
        self.parser = parser


class _ParserOnly(AblateCLI):
    def parse_arguments(self, parser, args) -> None:
        raise _Parser(parser)


@functools.cache
def training_parser():
    """`ablate train`'s parser, built as for a run but nothing parsed or built: for checking a sweep's overrides
    (built once per process: it introspects every Trainer, model and data signature)."""
    try:
        _cli(_ParserOnly, [])
    except _Parser as built:
        return built.parser
    raise RuntimeError("LightningCLI parsed without calling parse_arguments")


USER_ERRORS = (ArgumentError, ValueError, FileNotFoundError, FloatingPointError, NotADirectoryError, PermissionError,
               RunFolderError, runlock.RunFolderBusy, MemoryError)
EXIT_INTERRUPTED = 3  # SIGTERM/SIGUSR1: last.ckpt saved, summary "interrupted"; the same command resumes


def main(argv: list[str] | None = None) -> int:
    """Train, then test; a bad value or a failed run ends with one line on stderr and exit code 2, a run stopped
    by SIGTERM/SIGUSR1 with code 3 after saving ``last.ckpt`` (the same command resumes it); any other error is
    written down as the run's failure (a crash) and raised."""
    # `ablate train ...` hands LightningCLI its arguments while sys.argv still holds them: DDP relaunches each rank
    # from sys.argv, so it stays, and the warning about having both is noise.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # EpochSeeder makes the training loader resume mid-epoch (its sampler skips the batches already trained)
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    args = list(sys.argv[1:] if argv is None else argv)
    session = RunSession(run_dir=named_run_dir(args))
    try:
        return _train(argv, session)
    except AlreadyCompleted as done:
        print(done, file=sys.stderr)
        return 0
    except BaseException as err:
        if isinstance(err, SystemExit) and not err.code:  # --help, --print_config
            raise
        refused = isinstance(err, USER_ERRORS)
        # Lightning ends a fit that Ctrl+C stopped with sys.exit(1): the KeyboardInterrupt is the cause
        cause = err.__context__ if isinstance(err, SystemExit) and err.__context__ is not None else err
        line = error_line(err, args, training_parser) if refused else f"{type(cause).__name__}: {cause}"
        session.record_failure(cause, line)
        if not refused:
            raise
        print(f"ablate train: error: {line}", file=sys.stderr)
        return 2
    finally:
        session.close()


def _train(argv: list[str] | None, session: RunSession) -> int:
    cli = _cli(AblateCLI, argv, session)
    trainer, model, data, run_dir = cli.trainer, cli.model, cli.datamodule, cli.run_dir
    try:
        trainer.fit(model, datamodule=data, ckpt_path=str(cli.resume) if cli.resume else None, weights_only=True)
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
        raise oom from None
    cli.recorder.write_summary(trainer, model, "completed", final={k: float(v) for k, v in final.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
