"""The Trainer's options as `ablate train` sets and checks them: ranges a finite run needs, names Lightning knows,
GPUs that exist, the device defaults (precision, SyncBatchNorm), and Lightning's device lines held back until the
data are set up. Everything here is refused before anything is built or trained."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import lightning as L

from lightning_modules.ranges import DESCRIPTIONS, NonNegativeFinite, PositiveInt

from .messages import invalid

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


@contextlib.contextmanager
def silenced(log: logging.Logger):
    """Every record of ``log`` dropped while inside (Lightning's "Seed set to 0": a refused command prints only its
    error)."""

    def drop(record: logging.LogRecord) -> bool:
        return False

    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


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

