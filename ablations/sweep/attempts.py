"""One run of a sweep, start to end: its state read from its folder, its attempts, and which failures are tried
again (only those that may go differently: ``run_folder.RETRYABLE``)."""

from __future__ import annotations

from pathlib import Path

from lightning_modules import run_folder
from lightning_modules.run_folder import atomic_write, summary_status

from .. import runlock
from .launch import Launcher, in_new_process
from .overrides import train_args
from .spec import Run, SweepSpec


def read_status(run_dir: Path) -> str:
    """completed | failed | running (its lock held by a live process) | interrupted (has a checkpoint) | pending."""
    if runlock.is_held(run_dir):
        return "running"
    status = summary_status(run_dir)
    if status in ("completed", "failed"):
        return status
    return "interrupted" if run_folder.last_checkpoint(run_dir).exists() else "pending"


def attempts_made(run_dir: Path) -> int:
    path = run_dir / "attempts"
    return int(path.read_text()) if path.exists() else 0


def failure(run_dir: Path) -> tuple[str | None, str | None]:
    """(kind, reason) of a failed run, from its summary.json."""
    try:
        summary = run_folder.load_summary(run_dir) or {}
    except ValueError:
        summary = {}
    return summary.get("failure"), summary.get("reason")


def may_retry(run_dir: Path, spec: SweepSpec) -> bool:
    """Only failures that may go differently are tried again (``run_folder.RETRYABLE``), up to ``max_retries``."""
    return failure(run_dir)[0] in run_folder.RETRYABLE and attempts_made(run_dir) <= spec.max_retries


def execute(spec: SweepSpec, run: Run, folder: Path, env: dict[str, str], nodes: int = 1, gpus: int | None = None,
            retry: bool = True, launcher: Launcher = in_new_process) -> str:
    """Run one training process until it completes, fails in a way another try cannot change (a configuration
    error, a non-finite loss at a fixed seed), or has used its ``max_retries`` retries (``retry=False``: one
    attempt), unless another process holds it; returns the final status. The run records its failure kind and
    reason in summary.json. The run's lock is taken here and handed to the training process, which keeps it if
    this sweep dies. ``gpus`` (processes per node) defaults to the GPUs the worker's CUDA_VISIBLE_DEVICES pins;
    ``launcher`` starts the process (``launch``)."""
    run_dir = folder / run.id
    status = read_status(run_dir)
    if status in ("completed", "running") or (status == "failed" and not may_retry(run_dir, spec)):
        return status
    lock = runlock.try_acquire(run_dir)
    if lock is None:
        return "running"
    try:
        while True:
            attempts = attempts_made(run_dir) + 1
            atomic_write(run_dir / "attempts", str(attempts))
            visible = env.get("CUDA_VISIBLE_DEVICES", "")
            args = train_args(spec, run, run_dir, gpus=gpus or (len(visible.split(",")) if visible else 1), nodes=nodes)
            with open(run_dir / run_folder.LOG, "a") as log:
                log.write(f"--- attempt {attempts}: ablate train {' '.join(args)}\n")
            returncode = launcher(args, run_dir / run_folder.LOG, env, lock)
            status = summary_status(run_dir) or "pending"
            if status == "interrupted":  # preempted (SIGTERM/SIGUSR1): checkpoint saved; the next sweep resumes it
                return status
            if returncode != 0 and status not in ("failed", "completed"):  # died without a word: killed, node lost
                kind = "lost" if returncode < 0 else "crash"
                run_folder.record_failure(run_dir, kind, f"train exited with code {returncode} without recording "
                                                         f"why (log: {run_dir / run_folder.LOG})")
                status = "failed"
            if status != "failed" or not retry or not may_retry(run_dir, spec):
                return status
            (run_dir / run_folder.SUMMARY).unlink()  # retry; the log keeps every attempt
    finally:
        runlock.release(lock)
