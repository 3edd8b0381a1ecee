"""A sweep on this machine: its runs over slots (``slots``), a run per slot at a time, each in its own process."""

from __future__ import annotations

import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from . import chain
from .attempts import execute, read_status
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
        """{run id: final status} of every run. A chained run starts once its source has completed, the runs
        whose sources are done first; one whose source will not complete is not started (``chain.SourceWatch``:
        status ``waiting`` or ``source failed``)."""
        from tqdm.auto import tqdm

        free = list(range(len(self.slots)))
        results: dict[str, str] = {}
        todo = chain.ready_first(runs)
        held = sum(chain.source_state(r.source) not in (None, "completed") for r in runs)
        wait_note = f"; {held} wait for their sources in {spec.init_from.sweep}" if held and spec.init_from else ""
        print(f"sweep {spec.name}: {len(runs)} runs, {describe_slots(self.slots)}{wait_note}", file=sys.stderr,
              flush=True)
        watch = chain.SourceWatch()

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

            def record(run_id: str, status: str) -> None:
                results[run_id] = status
                bar.update()
                if not self.progress:
                    print(f"[{len(results)}/{len(runs)}] {run_id}: {status}", flush=True)

            running: set = set()
            while todo or running:
                now = time.time()  # one poll: each source and source sweep read once for all its waiting runs
                for run in list(todo):  # fill the free slots with the first runs that may start
                    if len(running) == len(self.slots):
                        break
                    own = read_status(folder / run.id)  # a run done or taken elsewhere needs no source
                    verdict = "start" if own in ("completed", "running") else watch.verdict(run.source, now)
                    if verdict == "wait":
                        continue
                    todo.remove(run)
                    if verdict == "start":
                        running.add(pool.submit(work, run))
                    else:
                        print(chain.describe(run.id, str(run.source), verdict), file=sys.stderr, flush=True)
                        record(run.id, verdict)
                if running:
                    done, running = wait(running, timeout=chain.POLL_S, return_when=FIRST_COMPLETED)
                    for future in done:
                        record(*future.result())
                elif todo:
                    time.sleep(chain.POLL_S)
        return results


def run_sweep(spec: SweepSpec, root: str | Path = "runs", parallel: int | None = None, gpus_per_run: int = 1,
              progress: bool | None = None, runs_per_gpu: int = 1, fork: bool = False) -> dict[str, str]:
    """Run every run of the sweep not yet completed, here; returns {run id: final status}. ``fork``: CPU runs
    forked from a preloaded server (the caller's main module must be safe to import: ``launch``)."""
    return LocalPool(parallel, gpus_per_run, runs_per_gpu, progress, fork).run(spec, root)
