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

Every other grid key is an ``ablate train`` option. A run's id is derived from its resolved overrides, so
expanding the same spec twice gives the same runs and re-running a sweep is idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.backbones import BUDGETS, STUDY_LAYOUTS, variant_name
from lightning_modules import run_folder
from lightning_modules.run_folder import atomic_write, summary_status

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SPEC_KEYS = {"name", "config", "set", "budget", "grid", "max_retries", "slurm"}
SHORT = {"model.init_args.model": "", "data.init_args.train_fraction": "f", "seed_everything": "s"}


@dataclass(frozen=True)
class Run:
    id: str
    overrides: dict[str, Any]  # `ablate train` options on top of the base config
    axes: dict[str, Any]  # the grid values that define this run (for tables)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    config: str
    fixed: dict[str, Any]
    budget: str | None
    grid: dict[str, list[Any]]
    max_retries: int = 2
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit parameters (ablations/cluster.py)

    @classmethod
    def load(cls, path: str | Path, fixed: dict[str, Any] | None = None,
             grid: dict[str, list[Any]] | None = None) -> "SweepSpec":
        """The spec at ``path``; ``fixed`` and ``grid`` (``--set``, ``--grid``) extend its ``set`` and ``grid``."""
        path = Path(path)
        if not path.is_file():
            shipped = sorted(p.relative_to(PROJECT_ROOT) for p in (PROJECT_ROOT / "ablations" / "sweeps").glob("*.yaml"))
            raise FileNotFoundError(f"sweep spec {path} does not exist; shipped specs: {', '.join(map(str, shipped))}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:  # syntax, or a python tag the safe loader refuses
            raise ValueError(f"sweep spec {path} is not valid YAML: {' '.join(str(err).split())}") from None
        unknown = sorted(set(raw) - SPEC_KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} in sweep spec {path}; valid: {', '.join(sorted(SPEC_KEYS))}")
        for key in ("name", "config", "grid"):
            if key not in raw:
                raise ValueError(f"sweep spec {path} needs a {key!r} entry")
        if fixed or grid:
            raw = _command_line(raw, fixed or {}, grid or {}, path)
        if not isinstance(raw.get("slurm") or {}, dict):
            raise ValueError(f"'slurm' of sweep spec {path} must be a mapping of submitit parameters")
        from .cluster import settings

        settings([raw.get("slurm") or {}])  # names and types checked now, not at submission
        grid = {k: v if isinstance(v, list) else [v] for k, v in raw["grid"].items()}
        budget = raw.get("budget")
        if "layout" in grid:
            if budget not in BUDGETS:
                raise ValueError(f"the layout axis needs a budget; budget={budget!r}, valid: {', '.join(BUDGETS)}")
            bad = [layout for layout in grid["layout"] if layout not in STUDY_LAYOUTS]
            if bad:
                raise ValueError(f"layout(s) {bad} have no budget-matched variant; valid: {', '.join(STUDY_LAYOUTS)}")
        # the base config: as given (relative to the working directory), else relative to the project root
        config = Path(raw["config"])
        if not config.is_file() and (PROJECT_ROOT / config).is_file():
            config = PROJECT_ROOT / config
        if not config.is_file():
            raise FileNotFoundError(f"base config {raw['config']} of sweep spec {path} does not exist")
        return cls(raw["name"], str(config), dict(raw.get("set") or {}), budget, grid, int(raw.get("max_retries", 2)),
                   dict(raw.get("slurm") or {}))

    def expand(self) -> list[Run]:
        keys = list(self.grid)
        runs = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            axes = dict(zip(keys, values))
            overrides = dict(self.fixed)
            for key, value in axes.items():
                if key == "layout":
                    overrides["model.init_args.model"] = variant_name(value, self.budget)
                else:
                    overrides[key] = value
            runs.append(Run(run_id(overrides), overrides, axes))
        ids = [r.id for r in runs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"sweep {self.name!r} expands to duplicate runs; remove repeated grid values")
        return runs


def _command_line(raw: dict[str, Any], fixed: dict[str, Any], grid: dict[str, list[Any]], path: Path) -> dict[str, Any]:
    """``--set`` joins the spec's ``set``, ``--grid`` adds or replaces axes: run ids follow the same rules."""
    clash = sorted(set(fixed) & set(raw["grid"] or {}))
    if clash:
        raise ValueError(f"--set {clash[0]}: {clash[0]} is a grid axis of {path}; give its values with --grid")
    kept = {k: v for k, v in (raw.get("set") or {}).items() if k not in grid}
    return {**raw, "set": {**kept, **fixed}, "grid": {**(raw["grid"] or {}), **grid}}


def run_id(overrides: dict[str, Any]) -> str:
    """Readable prefix from the usual axes, then a hash of every override: stable across expansions."""
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    parts = [f"{short}{overrides[key]}" for key, short in SHORT.items() if key in overrides]
    return "-".join([*parts, digest])


# --- the run folder's state ----------------------------------------------------------------------------------
def read_status(run_dir: Path) -> str:
    """completed | failed | running (locked by a live process) | interrupted (has a checkpoint) | pending."""
    lock = run_dir / "lock"
    if lock.exists() and _lock_alive(lock):
        return "running"
    status = summary_status(run_dir)
    if status in ("completed", "failed"):
        return status
    return "interrupted" if run_folder.last_checkpoint(run_dir).exists() else "pending"


def _lock_alive(lock: Path) -> bool:
    try:
        owner = json.loads(lock.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    job = os.environ.get("SLURM_JOB_ID")
    if job and owner.get("job") == job:
        return False  # our own SLURM job, requeued after preemption: its earlier process is gone
    if owner.get("host") != socket.gethostname():
        # another machine's lock: alive while its holder refreshes it (see `execute`), stale after LOCK_STALE_S
        try:
            return time.time() - lock.stat().st_mtime < LOCK_STALE_S
        except FileNotFoundError:
            return False
    try:
        os.kill(int(owner["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError):
        return False
    except PermissionError:
        return True
    return True


LOCK_STALE_S = 15 * 60  # a lock from another host not refreshed for this long is taken over
LOCK_REFRESH_S = 60


def try_lock(run_dir: Path) -> bool:
    """Claim a run for this process; a lock left by a dead process on this host is taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / "lock"
    owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "job": os.environ.get("SLURM_JOB_ID")})
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _lock_alive(lock):
                return False
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        return True
    return False


def release(run_dir: Path) -> None:
    (run_dir / "lock").unlink(missing_ok=True)


# --- running -------------------------------------------------------------------------------------------------
def sweep_dir(spec: SweepSpec, root: str | Path = "runs") -> Path:
    return Path(root) / spec.name


def write_manifest(spec: SweepSpec, runs: list[Run], folder: Path) -> None:
    run_folder.write_manifest(folder, {
        "name": spec.name, "config": spec.config, "budget": spec.budget, "grid": spec.grid,
        "runs": [{"id": r.id, "axes": r.axes, "overrides": r.overrides} for r in runs]})


def train_command(spec: SweepSpec, run: Run, run_dir: Path, gpus: int = 1, nodes: int = 1) -> list[str]:
    args = [sys.executable, "-m", "ablations.cli", "train", f"--config={spec.config}"]
    if gpus > 1 or nodes > 1:  # one DDP run over the worker's pinned GPUs, or over a SLURM job's nodes x tasks
        args += [f"--trainer.num_nodes={nodes}", f"--trainer.devices={gpus}", "--trainer.strategy=ddp"]
    args += [f"--{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in run.overrides.items()]
    return args + [f"--run_dir={run_dir}", f"--wandb.group={spec.name}"]


def _attempts(run_dir: Path) -> int:
    path = run_dir / "attempts"
    return int(path.read_text()) if path.exists() else 0


def failure(run_dir: Path) -> tuple[str | None, str | None]:
    """(kind, reason) of a failed run, from its summary.json."""
    try:
        summary = run_folder.load_summary(run_dir) or {}
    except ValueError:
        summary = {}
    return summary.get("failure"), summary.get("reason")


def _retry(run_dir: Path, spec: SweepSpec) -> bool:
    """Only failures that may go differently are tried again (``run_folder.RETRYABLE``), up to ``max_retries``."""
    return failure(run_dir)[0] in run_folder.RETRYABLE and _attempts(run_dir) <= spec.max_retries


def execute(spec: SweepSpec, run: Run, folder: Path, env: dict[str, str], nodes: int = 1, gpus: int | None = None,
            retry: bool = True) -> str:
    """Run one training process until it completes, fails in a way another try cannot change (a configuration
    error, a non-finite loss at a fixed seed), or has used its ``max_retries`` retries (``retry=False``: one
    attempt), unless another sweep process holds it; returns the final status. The run records its failure kind
    and reason in summary.json. ``gpus`` (processes per node) defaults to the GPUs the worker's
    CUDA_VISIBLE_DEVICES pins."""
    run_dir = folder / run.id
    status = read_status(run_dir)
    if status in ("completed", "running") or (status == "failed" and not _retry(run_dir, spec)):
        return status
    if not try_lock(run_dir):
        return "running"
    try:
        while True:
            attempts = _attempts(run_dir) + 1
            atomic_write(run_dir / "attempts", str(attempts))
            visible = env.get("CUDA_VISIBLE_DEVICES", "")
            command = train_command(spec, run, run_dir, gpus=gpus or (len(visible.split(",")) if visible else 1),
                                    nodes=nodes)
            with open(run_dir / run_folder.LOG, "a") as log:
                log.write(f"--- attempt {attempts}: {' '.join(command)}\n")
                log.flush()
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
                while True:  # refresh the lock so that sweeps on other hosts see it is held
                    try:
                        proc.wait(timeout=LOCK_REFRESH_S)
                        break
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(OSError):
                            os.utime(run_dir / "lock")
            status = summary_status(run_dir) or "pending"
            if status == "interrupted":  # preempted (SIGTERM/SIGUSR1): checkpoint saved; the next sweep resumes it
                return status
            if proc.returncode != 0 and status != "failed":  # the process died without a word: killed, node lost
                kind = "lost" if proc.returncode < 0 else "crash"
                run_folder.record_failure(run_dir, kind, f"train exited with code {proc.returncode} without recording "
                                                         f"why (log: {run_dir / run_folder.LOG})")
                status = "failed"
            if status != "failed" or not retry or not _retry(run_dir, spec):
                return status
            (run_dir / run_folder.SUMMARY).unlink()  # retry; the log keeps every attempt
    finally:
        release(run_dir)


def device_slots(parallel: int | None, gpus_per_run: int, runs_per_gpu: int = 1) -> list[dict[str, str]]:
    """One environment per slot (a run at once). CPU: ``parallel`` processes (default 1). GPUs: each slot pinned
    with CUDA_VISIBLE_DEVICES to a group of ``gpus_per_run`` GPUs, ``runs_per_gpu`` slots per group (default: all
    groups once); ``parallel`` instead spreads that many slots round-robin over the groups. The CPU cores are split
    evenly between the slots."""
    import torch

    cores = os.cpu_count() or 1
    if not torch.cuda.is_available():  # share the cores instead of oversubscribing them
        if runs_per_gpu > 1:
            raise ValueError(f"--runs-per-gpu {runs_per_gpu} needs GPUs and none is visible; on CPU use --parallel N")
        parallel = parallel or 1
        threads = str(max(1, cores // parallel))
        return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads} for _ in range(parallel)]
    count = torch.cuda.device_count()
    if runs_per_gpu > 1 and gpus_per_run > 1:
        raise ValueError(f"--runs-per-gpu {runs_per_gpu} shares one GPU between runs; it cannot combine with "
                         f"--gpus-per-run {gpus_per_run}")
    groups = [list(range(i, i + gpus_per_run)) for i in range(0, count - gpus_per_run + 1, gpus_per_run)]
    if not groups:
        raise ValueError(f"--gpus-per-run {gpus_per_run} asks for more GPUs than the {count} visible")
    if parallel is not None and runs_per_gpu > 1:
        raise ValueError(f"--parallel {parallel} and --runs-per-gpu {runs_per_gpu} both set the slots; give one")
    total = parallel or len(groups) * runs_per_gpu
    if parallel is not None and gpus_per_run > 1 and parallel > len(groups):
        raise ValueError(f"--parallel {parallel} runs of {gpus_per_run} GPUs need {parallel * gpus_per_run} GPUs; "
                         f"{count} are visible")
    threads = str(max(1, cores // total))
    return [{"CUDA_VISIBLE_DEVICES": ",".join(map(str, groups[i % len(groups)])), "OMP_NUM_THREADS": threads}
            for i in range(total)]


def describe_slots(slots: list[dict[str, str]]) -> str:
    """``3 slots: GPU 0 x2, GPU 1 x1, 5 CPU threads each`` (what the sweep runs at once, and where)."""
    places = {}
    for slot in slots:
        place = f"GPU {slot['CUDA_VISIBLE_DEVICES']}" if slot["CUDA_VISIBLE_DEVICES"] else "CPU"
        places[place] = places.get(place, 0) + 1
    where = ", ".join(f"{place} x{n}" for place, n in places.items())
    return f"{len(slots)} slot{'s' * (len(slots) != 1)}: {where}, {slots[0]['OMP_NUM_THREADS']} CPU threads each"


def run_sweep(spec: SweepSpec, root: str | Path = "runs", parallel: int | None = None, gpus_per_run: int = 1,
              progress: bool | None = None, runs_per_gpu: int = 1) -> dict[str, str]:
    """Run every run of the sweep not yet completed; returns {run id: final status}."""
    from tqdm.auto import tqdm

    runs = spec.expand()
    folder = sweep_dir(spec, root)
    write_manifest(spec, runs, folder)
    slots = device_slots(parallel, gpus_per_run, runs_per_gpu)
    free = list(range(len(slots)))
    results: dict[str, str] = {}
    show = sys.stderr.isatty() if progress is None else progress
    print(f"sweep {spec.name}: {len(runs)} runs, {describe_slots(slots)}", file=sys.stderr, flush=True)

    def work(run: Run) -> tuple[str, str]:
        slot = free.pop()
        try:
            return run.id, execute(spec, run, folder, slots[slot])
        finally:
            free.append(slot)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool, tqdm(total=len(runs), desc=spec.name, disable=not show,
                                                                    unit="run") as bar:
        futures = [pool.submit(work, run) for run in runs]
        for future in as_completed(futures):
            run_id_, status = future.result()
            results[run_id_] = status
            bar.update()
            if not show:
                print(f"[{len(results)}/{len(runs)}] {run_id_}: {status}", flush=True)
    return results


def sweep_status(spec: SweepSpec, root: str | Path = "runs") -> list[tuple[Run, str]]:
    folder = sweep_dir(spec, root)
    return [(run, read_status(folder / run.id)) for run in spec.expand()]


def wandb_sweep_config(spec: SweepSpec, project: str = "stacking-ablations") -> dict[str, Any]:
    """A W&B sweep (method grid) whose agents run ``ablate train`` with one grid point each: ``wandb sweep`` on
    the YAML, then one ``wandb agent`` per GPU. The layout axis is written as the model names it stands for."""
    def literal(value: Any) -> Any:  # the agent writes --key=value; jsonargparse reads JSON for lists and dicts
        return json.dumps(value) if isinstance(value, (list, dict)) else value

    parameters: dict[str, Any] = {key: {"value": literal(value)} for key, value in spec.fixed.items()}
    for key, values in spec.grid.items():
        if key == "layout":
            parameters["model.init_args.model"] = {"values": [variant_name(v, spec.budget) for v in values]}
        else:
            parameters[key] = {"values": [literal(v) for v in values]}
    return {
        "name": spec.name, "project": project, "method": "grid", "program": "ablations/cli.py",
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", "-m", "ablations.cli", "train", f"--config={spec.config}",
                    "--wandb.enabled=true", f"--wandb.project={project}", f"--wandb.group={spec.name}", "${args}"],
    }


# --- SLURM through submitit ----------------------------------------------------------------------------------
class SlurmRun:
    """One run as a submitit job. On preemption or timeout submitit calls ``checkpoint`` and requeues the job,
    which resumes the run from its last checkpoint. Under multi-node DDP every task starts the training process
    with the job's shape, ``nodes`` x ``devices`` processes (Lightning reads the SLURM variables and checks that
    shape against them); task 0 also holds the run's lock and records its status. The job carries the spec
    itself, so command-line ``--set``/``--grid`` reach it and an edited spec file cannot change its run."""

    def __init__(self, spec: SweepSpec, run_id: str, root: str, nodes: int = 1, devices: int = 1):
        self.spec, self.run_id, self.root, self.nodes, self.devices = spec, run_id, root, nodes, devices

    def __call__(self) -> str:
        run = next(r for r in self.spec.expand() if r.id == self.run_id)
        folder = sweep_dir(self.spec, self.root)
        if os.environ.get("SLURM_PROCID", "0") != "0":
            status = read_status(folder / run.id)  # task 0 will not start it either: nobody to wait for
            spent = status == "failed" and not _retry(folder / run.id, self.spec)
            if status in ("completed", "running") or spent:
                return status
            command = train_command(self.spec, run, folder / run.id, gpus=self.devices, nodes=self.nodes)
            return str(subprocess.run(command).returncode)
        # the other tasks cannot be restarted from here: a multi-task run is retried by the next submission
        return execute(self.spec, run, folder, env={}, nodes=self.nodes, gpus=self.devices,
                       retry=self.nodes * self.devices == 1)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmRun(self.spec, self.run_id, self.root, self.nodes, self.devices))


def submit_sweep(spec: SweepSpec | str, root: str, executor: str = "slurm", slurm: dict[str, Any] | None = None,
                 wait: bool = False) -> list[Any]:
    """Submit every unfinished run of the sweep as one job array (``executor="local"`` runs it here). ``slurm``:
    command-line settings over the spec's ``slurm:`` (see ablations/cluster.py)."""
    import submitit

    from .cluster import job_parameters, run_shape

    spec = spec if isinstance(spec, SweepSpec) else SweepSpec.load(spec)
    folder = sweep_dir(spec, root)
    params = job_parameters(spec.slurm, slurm or {}, name=f"ablate-{spec.name}")
    runs = spec.expand()
    write_manifest(spec, runs, folder)
    todo = [r for r in runs if read_status(folder / r.id) not in ("completed", "running")]
    if not todo:
        return []
    if executor == "local":
        ex = submitit.LocalExecutor(folder=folder / "submitit")
        ex.update_parameters(timeout_min=params.get("timeout_min", 24 * 60))
        nodes, devices = 1, 1
    else:
        ex = submitit.AutoExecutor(folder=folder / "submitit", cluster=executor)
        ex.update_parameters(**params)
        nodes, devices = run_shape(params)
    # each job is the SlurmRun itself, so that submitit finds its `checkpoint` method and requeues it
    submissions = [SlurmRun(spec, r.id, str(root), nodes, devices) for r in todo]
    if executor == "local":
        jobs = [ex.submit(job) for job in submissions]
    else:
        with ex.batch():  # one job array
            jobs = [ex.submit(job) for job in submissions]
    if wait:
        for job in jobs:
            job.result()
    return jobs
