"""Declarative sweeps: a base training config plus grid axes, expanded into runs with stable ids.

A spec (YAML under ``ablations/sweeps/``)::

    name: demo
    config: ablations/configs/digits_tiny.yaml   # the base `ablate train` config
    set: {trainer.max_epochs: 6}                  # fixed overrides of the base
    budget: tiny                                  # the `layout` axis picks the budget-matched variant
    grid:
      layout: [VIT_REL, C-C-C-C, C-C-C-T, C-C-T-T, C-T-T-T]
      data.init_args.train_fraction: [0.25, 1.0]
      seed_everything: [0, 1]

Every other grid key is an ``ablate train`` option, or several joined by commas: a linked axis, whose values set
them together (``data.init_args.train_fraction,target_loss: [[0.5, 0.1], [1.0, 0.2]]``, a target loss per data
size). ``margins`` (optional) sets the report's equivalence margins (``{accuracy: 1.0, log_loss: 0.1}``). A run's id is derived from its resolved overrides, so
expanding the same spec twice gives the same runs and re-running a sweep is idempotent.

The package, one job a module: ``spec`` (the YAML, checked), ``run_ids`` (a run's stable id), ``overrides`` (the
training command, checked with ``ablate train``'s parser), ``attempts`` (one run: start, record, retry),
``launch`` (how a training process starts), ``slots`` (CPU processes and GPU groups), ``executor`` (the interface
every executor shares), ``local`` (a pool of slots here), ``slurm`` (submitit job arrays), ``wandb_export``
(a W&B sweep YAML). Locks are ``ablations.runlock``.
"""

from .attempts import execute, failure, read_status
from .executor import Executor, sweep_dir, sweep_status, write_manifest
from .local import LocalPool, run_sweep
from .overrides import check_overrides, override_args, train_args
from .run_ids import run_id
from .slots import describe_slots, device_slots
from .slurm import SlurmRun, Submitit, submit_sweep
from .spec import Run, SweepSpec
from .wandb_export import wandb_sweep_config

__all__ = ["Executor", "LocalPool", "Run", "SlurmRun", "Submitit", "SweepSpec", "check_overrides", "describe_slots",
           "device_slots", "execute", "failure", "override_args", "read_status", "run_id", "run_sweep", "submit_sweep",
           "sweep_dir", "sweep_status", "train_args", "wandb_sweep_config", "write_manifest"]
