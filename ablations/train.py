"""``ablate train``: LightningCLI for ``ImageClassifier`` x any DataModule, with a run folder and resume.

    ablate train --config ablations/configs/digits_tiny.yaml --model.init_args.model cttt_tiny --trainer.max_epochs 5

Every option is a config key (``--print_config`` prints a YAML that runs again unchanged). The run folder
(``--run_dir``, default ``runs/<model>-<data>-<hash of the config>``) gets ``config.yaml``, ``metrics.csv``,
``summary.json``, ``predictions.npz`` and ``checkpoints/``; running the same command again resumes from
``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from datamodules import ImageDataModule
from lightning_modules import run_folder
from lightning_modules.callbacks import (
    EpochSeeder, EvaluationSchedule, FiniteLossCheck, Interrupted, Preemption, RunRecorder, StepCheckpoint, TargetLoss,
)
from lightning_modules.checkpoints import AtomicCheckpointIO, read_summary, resume_checkpoint
from lightning_modules.classifier import ImageClassifier
from lightning_modules.ranges import DESCRIPTIONS, NonNegativeFinite, PositiveFinite, PositiveInt

from . import runlock


class RunFolderConfig(SaveConfigCallback):
    """Saves the resolved config as ``<run_dir>/config.yaml`` when training first starts, and never again: a resume
    has the same result-affecting settings (``AblateCLI.before_instantiate_classes``): the file stays the first's."""

    def __init__(self, *args, run_dir: Path, **kwargs):
        super().__init__(*args, overwrite=True, **kwargs)
        self.run_dir = run_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        path = self.run_dir / run_folder.CONFIG
        if trainer.is_global_zero and not path.exists():  # written beside, then renamed over: never half a config
            run_folder.atomic_write(path, self.parser.dump(self.config))


# --- what a run's result depends on: ablations.identity, one definition for the run-folder hash, the sweep's run
# ids, the resume check and the analysis
from .identity import NOT_RESULT, affects_result, result_settings, settings_diff, settings_hash  # noqa: E402,F401


class AlreadyCompleted(Exception):
    """The run folder holds this run, completed: nothing to do."""


_HELD: list[int] = []  # run-folder locks this process holds; released when `main` returns (or by the OS at exit)
_CREATED: list[Path] = []  # run folders this process made and has not yet set a run up in: removed on refusal


class AblateCLI(LightningCLI):
    def _set_seed(self) -> None:
        """Lightning's seeding without its "Seed set to" line (the seed is in config.yaml): a refused command
        prints only its error."""
        from lightning.fabric.utilities.seed import seed_everything

        seed = self.config.seed_everything
        if seed is not False:
            self.config.seed_everything = seed_everything(None if seed is True else seed, workers=True, verbose=False)

    def settings(self) -> dict[str, Any]:
        """This command's result-affecting settings, read back from the YAML that config.yaml is written as."""
        from . import identity

        defaults = self.parser.get_defaults()  # `ablate train`'s own options: a later one's default is no setting
        identity.TOP_LEVEL_DEFAULTS.update({k: v for k, v in vars(defaults).items() if not hasattr(v, "__dict__")})
        return result_settings(yaml.safe_load(self.parser.dump(self.config)))

    def before_instantiate_classes(self) -> None:
        """Refuse what can be refused before anything is built: trainer ranges, a run folder in use, a resume with
        other settings; and stop here when the run is already completed."""
        config = self.config
        check_trainer(config.trainer)
        settings = self.settings()
        name = f"{config.model.init_args.model}-{config.data.class_path.rsplit('.', 1)[-1].replace('DataModule', '').lower()}"
        self.run_dir = Path(config.run_dir or Path(config.runs_root) / f"{name}-{settings_hash(settings)}")
        if not is_rank_zero():
            return
        if not self.run_dir.exists():
            _CREATED.append(self.run_dir)
        writable(self.run_dir)
        _HELD.append(runlock.acquire(self.run_dir))
        saved = self.run_dir / "config.yaml"
        if saved.exists():
            differ = settings_diff(result_settings(yaml.safe_load(saved.read_text()) or {}), settings)
            if differ:
                raise ForeignRunFolder(
                    f"run folder {self.run_dir} holds a run with other settings ({'; '.join(differ)}); a resume must "
                    "repeat them: choose a new --run_dir for these settings")
        summary = read_summary(self.run_dir)  # an unreadable one is set aside: the run is not completed
        if summary is not None and summary.get("status") == "completed":
            raise AlreadyCompleted(f"{self.run_dir} is already completed; delete its summary.json to run it again")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer gets the run-folder callbacks; they need the parsed config and the built model."""
        config, model = self.config, self.model
        if self.run_dir in _CREATED:  # model and data are built: from here on the folder is this run's record
            _CREATED.remove(self.run_dir)
        preflight(self.run_dir, getattr(model, "params", 0))
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
        callbacks = [
            RunFolderConfig(self.parser, config, run_dir=self.run_dir),
            EpochSeeder(config.seed_everything),
            FiniteLossCheck(),
            # saved at the end of the training epoch, after RunRecorder has written the epoch's metrics row: a kill
            # in between repeats the epoch on resume and its row is replaced, never lost or doubled
            # one name per checkpoint, replaced in place: never a best-v1.ckpt beside best.ckpt
            ModelCheckpoint(dirpath=run_folder.checkpoints(self.run_dir), filename="best", monitor=monitor, mode="max",
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
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        check_devices(trainer_config, torch.cuda.device_count())
        plugins = trainer_config.get("plugins") or []
        trainer_config["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
        trainer_config.update(device_defaults(trainer_config, torch.cuda.is_available(), torch.cuda.device_count()))
        # the run folder's log is always a logger; W&B, when enabled, gets the same rows from the recorder
        loggers = trainer_config.get("logger")
        loggers = [] if loggers in (None, True, False) else loggers if isinstance(loggers, list) else [loggers]
        trainer_config["logger"] = [self.recorder.logger, *loggers]
        held = HeldLines()  # Lightning's device lines wait until the data are set up (HeldLines)
        with held.holding():
            return self._instantiate_trainer(trainer_config, [held, *callbacks])

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


class HeldLines(L.Callback, logging.Filter):
    """Lightning's lines while the Trainer is built ("GPU available: ...", "TPU available: ...") held back, and
    printed once the data are set up (this callback's ``setup``, after the DataModule's): a command refused before
    training, for data missing or a split that cannot be made, prints its one error line and nothing before it."""

    LOGGER = "lightning.pytorch.utilities.rank_zero"

    def __init__(self):
        logging.Filter.__init__(self)
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    @contextlib.contextmanager
    def holding(self):
        log = logging.getLogger(self.LOGGER)
        log.addFilter(self)
        try:
            yield
        finally:
            log.removeFilter(self)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        records, self.records = self.records, []
        for record in records:
            logging.getLogger(record.name).handle(record)


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


# Lightning declares the Trainer's options with wide types; these are the ranges a finite, scheduled run needs.
TRAINER_RANGES = {"max_epochs": PositiveInt, "accumulate_grad_batches": PositiveInt,
                  "check_val_every_n_epoch": PositiveInt, "gradient_clip_val": NonNegativeFinite}


def check_trainer(trainer) -> None:
    """``--trainer.max_epochs 0`` would mark an untrained model completed, ``-1`` train forever: refused in one line
    (unset keeps Lightning's default)."""
    for key, kind in TRAINER_RANGES.items():
        value = trainer.get(key)
        if value is None:
            continue
        try:
            ok = not isinstance(value, bool) and kind(value) is not None and (kind is not PositiveInt or value == int(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(invalid(f"trainer.{key}", value, DESCRIPTIONS[kind.__name__]))
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    names = {"accelerator": ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())),
             "strategy": ("auto", *StrategyRegistry.available_strategies())}
    for key, valid in names.items():  # a name (not an instance) that Lightning would refuse after the set-up
        value = trainer.get(key)
        if isinstance(value, str) and value not in valid:
            raise ValueError(invalid(f"trainer.{key}", value, "one of " + ", ".join(valid)))


def invalid(option: str, value: Any, valid: str) -> str:
    """The one line for a bad value: the option as typed, the value, and what would be valid."""
    return f"--{option} {value} is not valid; expected {valid}"


def is_rank_zero() -> bool:
    """The process that owns the run folder: not a DDP rank that Lightning, torchrun or SLURM started beside it."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


class RunFolderError(OSError):
    """The run folder cannot hold the run (unwritable, or too little free space)."""


class ForeignRunFolder(RunFolderError):
    """The run folder holds a run with other result-affecting settings: refused, and that run left as it is."""


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


def preflight(run_dir: Path, params: int) -> None:
    """Fail in a second, not after hours: the run folder must be writable and have room for a few checkpoints
    (weights + AdamW's two moments in fp32, x3 for last/best/the temporary copy), at least ``MIN_FREE_BYTES``."""
    writable(run_dir)
    need = max(MIN_FREE_BYTES, 3 * 3 * 4 * int(params or 0))
    free = free_bytes(run_dir)
    if free < need:
        raise RunFolderError(f"run folder {run_dir} has {free / 2**20:.0f} MiB free, a run needs at least "
                      f"{need / 2**20:.0f} MiB for its checkpoints; free space or choose another --run_dir")


USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, NotADirectoryError, PermissionError, RunFolderError,
               runlock.RunFolderBusy, MemoryError)
EXIT_INTERRUPTED = 3  # SIGTERM/SIGUSR1: last.ckpt saved, summary "interrupted"; the same command resumes


def main(argv: list[str] | None = None) -> int:
    """Train, then test; a bad value or a failed run ends with one line on stderr and exit code 2, a run stopped
    by SIGTERM/SIGUSR1 with code 3 after saving ``last.ckpt`` (the same command resumes it)."""
    # `ablate train ...` hands LightningCLI its arguments while sys.argv still holds them: DDP relaunches each rank
    # from sys.argv, so it stays, and the warning about having both is noise.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # EpochSeeder makes the training loader resume mid-epoch (its sampler skips the batches already trained)
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _train(argv)
    except AlreadyCompleted as done:
        print(done, file=sys.stderr)
        return 0
    except (ArgumentError, *USER_ERRORS) as err:
        line = one_line(err)
        if str(err).startswith("Problems parsing config"):  # YAML syntax: name the file(s) and where
            files = [a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
                     for i, a in enumerate(args) if a == "--config" or a.startswith("--config=")]
            files = [f for f in files if not _loads(f)] or files  # the file(s) at fault, not every --config
            text = str(err).removeprefix("Problems parsing config:")
            where = " ".join(part.strip() for part in text.splitlines()).replace('in "<unicode string>", ', "at ")
            line = f"YAML error in --config {', '.join(files) or '(config)'}: {where}"
        line = with_closest_option(line, args)
        print(f"ablate train: error: {line}", file=sys.stderr)
        _record_failure(argv, err, line)
        return 2
    finally:
        while _HELD:
            runlock.release(_HELD.pop())
        while _CREATED:  # a command refused before training leaves no folder behind
            _remove_if_unused(_CREATED.pop())


def _loads(path: str) -> bool:
    """Whether ``path`` reads as YAML (a missing file is another error: not the one at fault here)."""
    try:
        yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError:
        return False
    except (OSError, ValueError):
        pass
    return True


def _remove_if_unused(run_dir: Path) -> None:
    if run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == [runlock.LOCK_NAME]:
        (run_dir / runlock.LOCK_NAME).unlink(missing_ok=True)
        run_dir.rmdir()


LINKED = {"data.init_args.seed": "seed_everything"}  # set through the option a user types (add_arguments_to_parser)


PLAIN_TYPES = {"bool": "true or false", "NoneType": "null", "float": "a number", "int": "an integer",
               "str": "a string", "tuple": "a list", "list": "a list", "dict": "a mapping"}


def out_of_range(text: str) -> str | None:
    """``--<option> <value> is not valid; expected <what>`` from jsonargparse's report of a value that the option's
    type refused (a range of ``lightning_modules.ranges``, a Literal, a bool, a number that does not parse), else
    None. The innermost ``Parser key`` is the option; what follows it says what was expected and given."""
    keys = re.findall(r'Parser key "([^"]+)"', text)
    if not keys or "is not accepted" in text:
        return None
    lines = text[text.rindex('Parser key "'):].splitlines()
    depth = len(text[:text.rindex('Parser key "')].rsplit("\n", 1)[-1])  # the innermost key's indentation
    block = [line for line in lines[1:] if line.strip()]
    cut = next((i for i, line in enumerate(block) if len(line) - len(line.lstrip()) <= depth), len(block))
    inner = "\n".join(block[:cut])
    expected = []
    for kind, literal, plain in re.findall(r"Not of type (\w+)|Expected a typing\.Literal\[(.*?)\]|Expected a <class '(\w+)'>",
                                           inner):
        if kind:
            expected.append(DESCRIPTIONS.get(kind, kind))
        elif literal:
            expected.append("one of " + ", ".join(c.strip(" '\"") for c in literal.split(",")))
        else:
            expected.append(PLAIN_TYPES.get(plain, plain))
    if not expected:
        return None
    given = (re.findall(r"^\s*Given value: (.*)$", inner, re.M) or re.findall(r"Got value: (.*)$", inner, re.M)
             or re.findall(r"Not of type \w+: (.+?) (?:does not conform|not an? (?:number|integer))", inner)
             or re.findall(r": '(.*)'$", inner, re.M)
             or ["?"])[0]
    given = re.sub(r"^NestedArg\(key='[^']*', val='(.*)'\)$", r"\1", given.strip())
    option = ".init_args.".join(keys)
    return invalid(LINKED.get(option, option), given, " or ".join(dict.fromkeys(expected)))


def _record_failure(argv: list[str] | None, err: BaseException, line: str) -> None:
    """A run that stops with an error says why in its summary.json, when its folder was named (as a sweep
    does): the kind decides whether a sweep tries it again. Only in a folder this process owns (its lock, or the
    lock its sweep handed down): a refusal because another process holds the folder, or because the folder holds
    a run with other settings, leaves that run's record alone."""
    import argparse

    if isinstance(err, (runlock.RunFolderBusy, ForeignRunFolder)):
        return
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--run_dir")
    run_dir = parser.parse_known_args(argv if argv is not None else sys.argv[1:])[0].run_dir
    if not (run_dir and Path(run_dir).is_dir()) or Path(run_dir) in _CREATED:
        return  # a folder this command made and refused before setting a run up in holds no run to mark failed
    try:
        lock = None if _HELD else runlock.acquire(Path(run_dir))
    except runlock.RunFolderBusy:
        return
    try:
        run_folder.record_failure(Path(run_dir), run_folder.failure_kind(err), line)
    finally:
        runlock.release(lock)


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
    ranged = out_of_range(text)
    if ranged:
        return ranged
    skip = ("Expected a <class", "Given value", "Subtypes:", "Errors:", "Does not validate", "Problem with given",
            "Not a valid subclass", "Subclass types expect", "a class path", "a dict with")
    reasons = [line.strip().removeprefix("- ") for line in text.splitlines()[1:]
               if line.strip() and not line.strip().removeprefix("- ").startswith(skip)]
    reason = reasons[-1] if reasons else (text.splitlines() or [type(err).__name__])[0]
    return f"{key}: {reason}" if key else reason


def flat_keys(config: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"a": {"b": 1}}`` -> ``["a.b"]``: the options a config sets."""
    keys = []
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        keys += flat_keys(value, name) if isinstance(value, dict) and value else [name]
    return keys


def _initials(name: str) -> str:
    return "".join(word[0] for word in name.split("_") if word)


def closest_option(key: str, options: list[str]) -> str | None:
    """The option a mistyped ``key`` most likely meant (with or without ``init_args``): a name spelled alike, or
    an abbreviation of it beside it (``learning_rate`` for ``lr``); None when none is close."""
    import difflib

    plain = key.replace(".init_args.", ".")
    table = {option.replace(".init_args.", "."): option for option in options}
    parent, _, leaf = plain.rpartition(".")

    def score(candidate: str) -> float:
        other_parent, _, other_leaf = candidate.rpartition(".")
        if other_parent == parent and "_" in leaf + other_leaf and other_leaf != leaf and (
                _initials(leaf) == other_leaf or _initials(other_leaf) == leaf):
            return 1.0
        return difflib.SequenceMatcher(None, plain, candidate).ratio()

    best = max(table, key=score, default=None)
    return table[best] if best is not None and score(best) >= 0.6 else None


def is_option(key: str, options: list[str]) -> bool:
    """Whether ``key`` is an option, or a parent of options (it may be a class the other options pick)."""
    plain = key.replace(".init_args.", ".")
    return any(o == plain or o.startswith(plain + ".") for o in (o.replace(".init_args.", ".") for o in options))


UNKNOWN_OPTION = re.compile(r"Option '([^']+)' is not accepted|does not accept option '([^']+)'|"
                            r"unrecognized arguments: (\S+)|No action for key \"([^\"]+)\"")


def with_closest_option(line: str, args: list[str]) -> str:
    """An unknown option's line with the option it most likely meant, as a sweep's check names it: the keys
    typed on the command line and in ``--config`` files that are no option of `ablate train` (with the classes
    they pick) are looked up among those that are."""
    found = UNKNOWN_OPTION.search(line)
    if not found or "closest option" in line:
        return line
    named = next(g for g in found.groups() if g).lstrip("-").split("=", 1)[0].split(".")[-1]  # its last part
    typed = [a[2:].split("=", 1)[0] for a in args if a.startswith("--") and not a.startswith("--config")]
    for i, a in enumerate(args):
        path = a.split("=", 1)[1] if a.startswith("--config=") else args[i + 1] if a == "--config" and i + 1 < len(args) else None
        try:
            loaded = yaml.safe_load(Path(path).read_text()) if path else None
        except (OSError, yaml.YAMLError):
            loaded = None
        typed += flat_keys(loaded) if isinstance(loaded, dict) else []
    parser = training_parser()
    options = flat_keys(parser.get_defaults().as_dict())
    keep = [a for a in args if not (a.startswith("--") and named in a[2:].split("=", 1)[0].split("."))]
    try:  # the options of the classes the command picks (model.init_args.*, data.init_args.*)
        options += flat_keys(parser.parse_args(keep).as_dict())
    except Exception:  # noqa: BLE001  the command has another error too: the defaults' options only
        pass
    for key in typed:
        if named in key.split(".") and not is_option(key, options):
            close = closest_option(key, options)
            if close:
                return f"{line}; the closest option is --{close}"
    return line


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


def _cli(cls: type[AblateCLI], argv: list[str] | None) -> AblateCLI:
    return cls(
        ImageClassifier, ImageDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
        save_config_callback=None, args=argv, auto_configure_optimizers=False,
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


def _train(argv: list[str] | None) -> int:
    cli = _cli(AblateCLI, argv)
    trainer, model, data, run_dir = cli.trainer, cli.model, cli.datamodule, cli.run_dir
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
