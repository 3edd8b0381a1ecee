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

import hashlib
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.backbones import BUDGETS, budget_variant, import_block_modules, parse_layout, variant_name
from lightning_modules.backbones.blocks import BLOCK_DESCRIPTIONS
from lightning_modules.backbones.registry import MATCHED
from lightning_modules import run_folder
from lightning_modules.run_folder import atomic_write, summary_status

from . import runlock

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SPEC_KEYS = {"name", "config", "set", "budget", "grid", "max_retries", "slurm"}
SPEC_TYPES = {"name": (str, "a string"), "config": (str, "a path to an `ablate train` config"),
              "set": (dict, "a mapping of `ablate train` options to values"), "budget": (str, "a budget name"),
              "grid": (dict, "a mapping of `ablate train` options (or layout) to lists of values"),
              "max_retries": (int, "an integer >= 0"), "slurm": (dict, "a mapping of submitit parameters")}
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
        if not isinstance(raw, dict):
            raise ValueError(f"sweep spec {path} must be a mapping of {', '.join(sorted(SPEC_KEYS))}; got {raw!r}")
        unknown = sorted(set(raw) - SPEC_KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} in sweep spec {path}; valid: {', '.join(sorted(SPEC_KEYS))}")
        for key in ("name", "config", "grid"):
            if key not in raw:
                raise ValueError(f"sweep spec {path} needs a {key!r} entry")
        for key, (kind, valid) in SPEC_TYPES.items():
            if key in raw and not (isinstance(raw[key], kind) and not isinstance(raw[key], bool) or
                                   (key in ("set", "budget", "slurm") and raw[key] is None)):
                raise ValueError(f"sweep spec {path}: {key} {raw[key]!r} is not valid; expected {valid}")
        if fixed or grid:
            raw = _command_line(raw, fixed or {}, grid or {}, path)
        from .cluster import settings

        settings([raw.get("slurm") or {}])  # names and types checked now, not at submission
        if "/" in raw["name"] or raw["name"] in ("", ".", ".."):  # the sweep's folder under --root, nowhere else
            raise ValueError(f"sweep spec {path}: name {raw['name']!r} is not valid; expected a folder name without '/'")
        if raw.get("max_retries", 0) < 0:
            raise ValueError(f"sweep spec {path}: max_retries {raw['max_retries']} is not valid; expected an integer >= 0")
        if not raw["grid"]:
            raise ValueError(f"sweep spec {path}: grid is empty; expected at least one axis, e.g. seed_everything: [0]")
        grid = {str(k): v if isinstance(v, list) else [v] for k, v in raw["grid"].items()}
        empty = [key for key, values in grid.items() if not values]
        if empty:
            raise ValueError(f"sweep spec {path}: grid axis {', '.join(empty)} is empty, so the sweep would have no runs; "
                             "expected a list of at least one value")
        budget = raw.get("budget")
        if "layout" in grid and budget not in BUDGETS:
            raise ValueError(f"the layout axis needs a budget; budget={budget!r}, valid: {', '.join(BUDGETS)}")
        # the base config: as given (relative to the working directory), else relative to the project root
        config = Path(raw["config"])
        if not config.is_file() and (PROJECT_ROOT / config).is_file():
            config = PROJECT_ROOT / config
        if not config.is_file():
            raise FileNotFoundError(f"base config {raw['config']} of sweep spec {path} does not exist")
        spec = cls(raw["name"], str(config), {str(k): v for k, v in (raw.get("set") or {}).items()}, budget, grid,
                   int(raw.get("max_retries", 2)), dict(raw.get("slurm") or {}))
        import_block_modules(spec.model_init_arg("imports"))  # a user's block letters, before layouts are read
        for layout in grid.get("layout", []):
            spec.layout_overrides(layout)  # unknown letters and unmatchable layouts fail here, not in a run
        return spec

    def model_init_arg(self, name: str) -> Any:
        """``model.init_args.<name>`` as the runs get it: the spec's ``set``, else the base config."""
        key = f"model.init_args.{name}"
        if key in self.fixed:
            return self.fixed[key]
        base = yaml.safe_load(Path(self.config).read_text()) or {}
        return ((base.get("model") or {}).get("init_args") or {}).get(name)

    def layout_overrides(self, layout: str) -> dict[str, Any]:
        """A layout at the sweep's budget: the registry's variant by name where there is one (ids as before), else
        the layout with the budget and the matcher's depths and widths written out, so the run's config records
        the shape it trained."""
        canonical = str(parse_layout(str(layout), BLOCK_DESCRIPTIONS))
        model_args = dict(self.model_init_arg("model_args") or {})
        if (self.budget, canonical) in MATCHED and not model_args:
            return {"model.init_args.model": variant_name(canonical, self.budget)}
        cfg = budget_variant(canonical, self.budget, **model_args)
        shape = {"depths": list(cfg.depths), "dims": list(cfg.dims), "stem_dim": cfg.stem_dim}
        return {"model.init_args.model": canonical, "model.init_args.budget": self.budget,
                "model.init_args.model_args": {**model_args, **shape}}

    def expand(self) -> list[Run]:
        keys = list(self.grid)
        runs = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            axes = dict(zip(keys, values))
            overrides = dict(self.fixed)
            for key, value in axes.items():
                if key == "layout":
                    overrides.update(self.layout_overrides(value))
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
    """Readable prefix from the usual axes, then a hash of every result-affecting override (``affects_result``:
    never W&B, progress bars or loader workers): stable across expansions and across how a run is watched."""
    from .train import affects_result

    kept = {key: value for key, value in overrides.items() if affects_result(key)}
    digest = hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]
    parts = [f"{short}{overrides[key]}" for key, short in SHORT.items() if key in overrides]
    return "-".join([*parts, digest])


# --- the run folder's state ----------------------------------------------------------------------------------
def read_status(run_dir: Path) -> str:
    """completed | failed | running (its lock held by a live process) | interrupted (has a checkpoint) | pending."""
    if runlock.is_held(run_dir):
        return "running"
    status = summary_status(run_dir)
    if status in ("completed", "failed"):
        return status
    return "interrupted" if run_folder.last_checkpoint(run_dir).exists() else "pending"


# --- running -------------------------------------------------------------------------------------------------
def sweep_dir(spec: SweepSpec, root: str | Path = "runs") -> Path:
    return Path(root) / spec.name


def write_manifest(spec: SweepSpec, runs: list[Run], folder: Path) -> None:
    run_folder.write_manifest(folder, {
        "name": spec.name, "config": spec.config, "budget": spec.budget, "grid": spec.grid,
        "runs": [{"id": r.id, "axes": r.axes, "overrides": r.overrides} for r in runs]})


def override_args(overrides: dict[str, Any]) -> list[str]:
    """``--key=value`` as the training process reads them (JSON for anything but a string)."""
    return [f"--{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in overrides.items()]


def train_command(spec: SweepSpec, run: Run, run_dir: Path, gpus: int = 1, nodes: int = 1) -> list[str]:
    args = [sys.executable, "-m", "ablations.cli", "train", f"--config={spec.config}"]
    if gpus > 1 or nodes > 1:  # one DDP run over the worker's pinned GPUs, or over a SLURM job's nodes x tasks
        args += [f"--trainer.num_nodes={nodes}", f"--trainer.devices={gpus}", "--trainer.strategy=ddp"]
    args += override_args(run.overrides)
    return args + [f"--run_dir={run_dir}", f"--wandb.group={spec.name}"]


def check_overrides(spec: SweepSpec, runs: list[Run]) -> None:
    """Parse the spec's overrides with `ablate train`'s own parser, once, before any run starts: the fixed ones
    together, then each grid value on top of them. A key that is no option is named with the closest one; a value
    its option refuses, with the option's range. Nothing is built and no data is read."""
    import difflib

    from jsonargparse import ArgumentError

    from .train import check_trainer, one_line, training_parser

    parser = training_parser()
    base = [f"--config={spec.config}"]

    def parse(overrides: dict[str, Any], where: str) -> Any:
        try:
            config = parser.parse_args(base + override_args(overrides))
            check_trainer(config.trainer)
            return config
        except (ArgumentError, ValueError) as err:
            raise ValueError(f"sweep {spec.name}: {where}: {one_line(err)}") from None

    options = [*flat_keys(parse({}, "config").as_dict()), *flat_keys(parser.get_defaults().as_dict())]
    known = {key.replace(".init_args.", "."): key for key in options}  # as typed with or without init_args

    def check(key: str, overrides: dict[str, Any], where: str) -> None:
        plain = key.replace(".init_args.", ".")
        if not any(k == plain or k.startswith(plain + ".") for k in known):  # no option, nor a parent of options
            try:
                parse(overrides, where)  # an option of a data or model class that the overrides pick
            except ValueError:
                close = difflib.get_close_matches(plain, sorted(known), n=1, cutoff=0.6)
                hint = f"; the closest option is {known[close[0]]}" if close else ""
                raise ValueError(f"sweep {spec.name}: {where} key {key} is not an `ablate train` option{hint}") from None
        parse(overrides, where)

    for key in spec.fixed:
        check(key, spec.fixed, "set")
    pairs = {(key, json.dumps(value, sort_keys=True, default=str)): (key, value)
             for run in runs for key, value in run.overrides.items() if spec.fixed.get(key, object()) != value}
    for key, value in pairs.values():
        check(key, {**spec.fixed, key: value}, "grid")


def flat_keys(config: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        keys += flat_keys(value, name) if isinstance(value, dict) and value else [name]
    return keys


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
    attempt), unless another process holds it; returns the final status. The run records its failure kind and
    reason in summary.json. The run's lock is taken here and handed to the training process, which keeps it if
    this sweep dies. ``gpus`` (processes per node) defaults to the GPUs the worker's CUDA_VISIBLE_DEVICES pins."""
    run_dir = folder / run.id
    status = read_status(run_dir)
    if status in ("completed", "running") or (status == "failed" and not _retry(run_dir, spec)):
        return status
    lock = runlock.try_acquire(run_dir)
    if lock is None:
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
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, pass_fds=(lock,),
                                        env={**os.environ, **env, runlock.INHERITED: str(lock)})
                proc.wait()
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
        runlock.release(lock)


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
    check_overrides(spec, runs)
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
            layouts = [str(parse_layout(str(v), BLOCK_DESCRIPTIONS)) for v in values]
            if all((spec.budget, layout) in MATCHED for layout in layouts):
                parameters["model.init_args.model"] = {"values": [variant_name(v, spec.budget) for v in layouts]}
            else:  # each agent's run sizes its layout for the budget (the registry's variant where there is one)
                parameters["model.init_args.model"] = {"values": layouts}
                parameters["model.init_args.budget"] = {"value": spec.budget}
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
            # task 0 will not start it either: nobody to wait for (its lock cannot tell our task 0 from another job)
            status = summary_status(folder / run.id)
            if status == "completed" or (status == "failed" and not _retry(folder / run.id, self.spec)):
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
    check_overrides(spec, runs)
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
