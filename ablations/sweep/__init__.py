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

A chained sweep (fine-tuning after pre-training) starts each run from a run of another sweep::

    init_from:
      sweep: runs/transfer_pretrain     # the source sweep's folder (relative to the working directory)
      match: [layout, seed_everything]  # the default; add any other axis both sweeps have
      checkpoint: last                  # the default: the source's final weights (its results'); or best

Each run's source is the one run of that sweep that agrees with it on every ``match`` key, resolved when the spec
loads (from the source's ``manifest.json``, so the source sweep must have been launched): no such run, or two, is a
one-line error before anything starts. The source's folder (``checkpoint: last``) or its ``checkpoints/best.ckpt``
(``best``) is the run's ``model.init_args.init_from``, so the run's id and folder depend on it (the source's
identity: from its own ``config.yaml`` once it has one, from the source sweep's manifest before), and the manifest
records the source's folder as the run's ``source``. A run is never started before its
source has completed: the local pool runs the runs whose sources are done first and waits for the others (a
source sweep may train at the same time, in another process or on a cluster), and does not start a run whose
source failed (``source failed``) or whose source sweep has had no run training for a minute (``waiting``); SLURM
submits only runs whose sources have completed, and the same command again submits the rest (``slurm``). Either
way a launch that left runs waiting for their sources exits 2 once the others are started or submitted.
``ablate status`` shows ``waiting for SOURCE`` and the sources' states.

The package, one job a module: ``spec`` (the YAML, checked), ``run_ids`` (a run's stable id), ``overrides`` (the
training command, checked with ``ablate train``'s parser), ``chain`` (a run's source in another sweep),
``attempts`` (one run: start, record, retry), ``launch`` (how a training process starts), ``slots`` (CPU processes
and GPU groups), ``executor`` (the interface every executor shares), ``local`` (a pool of slots here), ``slurm``
(submitit job arrays), ``wandb_export`` (a W&B sweep YAML). Locks are ``ablations.runlock``.
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
