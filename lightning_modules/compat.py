"""Every reach into Lightning's or PyTorch's private state, in one place. Each has no public equivalent; each is
exercised by ``tests/test_compat.py``, which fails when a new release moves it."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from torch import nn


def restart_train_iterator(trainer: L.Trainer) -> None:
    """Lightning creates the training iterator of a resumed fit once, before the sampler is told the epoch; with
    loader workers that iterator has already drawn epoch 0's indices. A new one follows ``set_epoch``."""
    fetcher = trainer.fit_loop._data_fetcher
    if fetcher is not None:
        iter(fetcher)


def cluster_environment(trainer: L.Trainer) -> Any:
    """The cluster environment Lightning chose (SLURM, torchelastic, ...), as its own SIGUSR1 handler reads it."""
    return trainer._accelerator_connector.cluster_environment


def validate_after_batch(trainer: L.Trainer, batch_idx: int, validate: bool) -> None:
    """Make the training loop validate after this batch, or else only after the epoch's last one. Lightning
    validates after batch ``i`` when ``(i + 1) % trainer.val_check_batch == 0``; ``val_check_interval`` only
    offers a fixed period."""
    trainer.val_check_batch = batch_idx + 1 if validate else trainer.num_training_batches


def seed_logger() -> logging.Logger:
    """The logger of Lightning's "Seed set to N" line. LightningCLI seeds with the line on and offers no switch; a
    filter on this logger (named after the module that logs it) keeps a refused command to its one error line."""
    return logging.getLogger("lightning.fabric.utilities.seed")


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module.compile()`` was called on it (in place; the module keeps its class and state-dict keys)."""
    return module._compiled_call_impl is not None
