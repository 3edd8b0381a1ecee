"""A sweep as submitit jobs: one job array on SLURM (settings: ``ablations.cluster``), or submitit's local
executor. A job is a ``SlurmRun``; preempted or timed out, submitit requeues it and it resumes its run.

A chained sweep (``chain``) submits only the runs whose sources have completed; the others are named as waiting
(or their source as failed), and the same command run again once the source sweep has finished submits them (it
skips what is completed or running, as always); until then `ablate sweep` exits 2, as the local pool does.
A dependency on the pre-training array (``--dependency=afterok``) was the alternative: an array shares one
dependency, so every fine-tuning run would wait for the last pre-training run, one failed source would leave them
all pending for good, and SLURM refuses a dependency on a job it has already purged, so a sweep could not be
launched once its sources were done. ``SlurmRun`` itself refuses to train from a source that has not completed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lightning_modules.run_folder import summary_status

from . import chain
from .attempts import may_retry, execute, read_status
from .executor import Executor, sweep_dir
from .launch import TRAIN_PROGRAM
from .overrides import train_args
from .spec import Run, SweepSpec


class SlurmRun:
    """One run as a submitit job. On preemption or timeout submitit calls ``checkpoint`` and requeues the job,
    which resumes the run from its last checkpoint. Under multi-node DDP every task starts the training process
    with the job's shape, ``nodes`` x ``devices`` processes (Lightning reads the SLURM variables and checks that
    shape against them); task 0 also holds the run's lock and records its status. The job carries the spec
    itself, so command-line ``--set``/``--grid`` reach it and an edited spec file cannot change its run."""

    def __init__(self, spec: SweepSpec, run_id: str, root: str, nodes: int = 1, devices: int = 1):
        self.spec, self.run_id, self.root, self.nodes, self.devices = spec, run_id, root, nodes, devices

    def __call__(self) -> str:
        folder = sweep_dir(self.spec, self.root)
        run = next(r for r in self.spec.expand(folder) if r.id == self.run_id)
        if chain.source_state(run.source) not in (None, "completed"):  # never from random weights
            return f"waiting for {run.source}"
        if os.environ.get("SLURM_PROCID", "0") != "0":
            # task 0 will not start it either: nobody to wait for (its lock cannot tell our task 0 from another job)
            status = summary_status(folder / run.id)
            if status == "completed" or (status == "failed" and not may_retry(folder / run.id, self.spec)):
                return status
            args = train_args(self.spec, run, folder / run.id, gpus=self.devices, nodes=self.nodes)
            return str(subprocess.run([*TRAIN_PROGRAM, *args]).returncode)
        # the other tasks cannot be restarted from here: a multi-task run is retried by the next submission
        return execute(self.spec, run, folder, env={}, nodes=self.nodes, gpus=self.devices,
                       retry=self.nodes * self.devices == 1)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmRun(self.spec, self.run_id, self.root, self.nodes, self.devices))


class Submitit(Executor):
    """Every unfinished run as a submitit job: ``executor="slurm"`` one job array with ``slurm`` settings over the
    spec's ``slurm:`` (``ablations.cluster``), ``"local"`` submitit's local executor. ``launch`` returns the jobs
    (waited for with ``wait``)."""

    def __init__(self, executor: str = "slurm", slurm: dict[str, Any] | None = None, wait: bool = False):
        self.executor, self.slurm, self.wait = executor, slurm or {}, wait

    def check(self, spec: SweepSpec) -> None:
        from ..cluster import job_parameters

        self.params = job_parameters(spec.slurm, self.slurm, name=f"ablate-{spec.name}")

    def launch(self, spec: SweepSpec, runs: list[Run], folder: Path) -> list[Any]:
        import submitit

        from ..cluster import run_shape

        params = self.params
        todo = [r for r in runs if read_status(folder / r.id) not in ("completed", "running")]
        held = chain.held(todo, folder)
        for run in held:
            verdict = "source failed" if chain.source_state(run.source) == "failed" else "waiting"
            print(chain.describe(run.id, str(run.source), verdict), file=sys.stderr, flush=True)
        todo = [r for r in todo if r not in held]
        if not todo:
            return []
        if self.executor == "local":
            ex = submitit.LocalExecutor(folder=folder / "submitit")
            ex.update_parameters(timeout_min=params.get("timeout_min", 24 * 60))
            nodes, devices = 1, 1
        else:
            ex = submitit.AutoExecutor(folder=folder / "submitit", cluster=self.executor)
            ex.update_parameters(**params)
            nodes, devices = run_shape(params)
        root = str(folder.parent)
        # each job is the SlurmRun itself, so that submitit finds its `checkpoint` method and requeues it
        submissions = [SlurmRun(spec, r.id, root, nodes, devices) for r in todo]
        if self.executor == "local":
            jobs = [ex.submit(job) for job in submissions]
        else:
            with ex.batch():  # one job array
                jobs = [ex.submit(job) for job in submissions]
        if self.wait:
            for job in jobs:
                job.result()
        return jobs


def submit_sweep(spec: SweepSpec | str, root: str, executor: str = "slurm", slurm: dict[str, Any] | None = None,
                 wait: bool = False) -> list[Any]:
    """Submit every unfinished run of the sweep as one job array (``executor="local"`` runs it here)."""
    spec = spec if isinstance(spec, SweepSpec) else SweepSpec.load(spec)
    return Submitit(executor, slurm, wait).run(spec, root)
