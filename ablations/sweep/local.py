"""A sweep on this machine: its runs over slots (``slots``), a run per slot at a time, each in its own process."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .attempts import execute
from .executor import Executor
from .launch import can_fork, forked, in_new_process, start_fork_server
from .slots import describe_slots, device_slots
from .spec import Run, SweepSpec


class LocalPool(Executor):
    """``parallel``/``gpus_per_run``/``runs_per_gpu`` make the slots (``slots.device_slots``). With ``fork`` (as
    ``ablate sweep`` runs it) a CPU run is forked from a process that has imported the training code once
    (``launch.forked``); otherwise, and on GPUs, a run starts a new interpreter, which initialises CUDA with its own
    CUDA_VISIBLE_DEVICES."""

    def __init__(self, parallel: int | None = None, gpus_per_run: int = 1, runs_per_gpu: int = 1,
                 progress: bool | None = None, fork: bool = False):
        self.slots = device_slots(parallel, gpus_per_run, runs_per_gpu)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.fork = fork and can_fork() and any(not slot["CUDA_VISIBLE_DEVICES"] for slot in self.slots)
        if self.fork:
            start_fork_server()

    def launch(self, spec: SweepSpec, runs: list[Run], folder: Path) -> dict[str, str]:
        """{run id: final status} of every run."""
        from tqdm.auto import tqdm

        free = list(range(len(self.slots)))
        results: dict[str, str] = {}
        print(f"sweep {spec.name}: {len(runs)} runs, {describe_slots(self.slots)}", file=sys.stderr, flush=True)

        def work(run: Run) -> tuple[str, str]:
            slot = free.pop()
            env = self.slots[slot]
            launcher = forked if self.fork and not env["CUDA_VISIBLE_DEVICES"] else in_new_process
            try:
                return run.id, execute(spec, run, folder, env, launcher=launcher)
            finally:
                free.append(slot)

        with ThreadPoolExecutor(max_workers=len(self.slots)) as pool, \
                tqdm(total=len(runs), desc=spec.name, disable=not self.progress, unit="run") as bar:
            futures = [pool.submit(work, run) for run in runs]
            for future in as_completed(futures):
                run_id, status = future.result()
                results[run_id] = status
                bar.update()
                if not self.progress:
                    print(f"[{len(results)}/{len(runs)}] {run_id}: {status}", flush=True)
        return results


def run_sweep(spec: SweepSpec, root: str | Path = "runs", parallel: int | None = None, gpus_per_run: int = 1,
              progress: bool | None = None, runs_per_gpu: int = 1, fork: bool = False) -> dict[str, str]:
    """Run every run of the sweep not yet completed, here; returns {run id: final status}. ``fork``: CPU runs
    forked from a preloaded server (the caller's main module must be safe to import: ``launch``)."""
    return LocalPool(parallel, gpus_per_run, runs_per_gpu, progress, fork).run(spec, root)
