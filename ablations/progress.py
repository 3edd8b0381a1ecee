"""``ablate status``: where every run of a sweep is and when the sweep will be done.

Everything is read from the run folders (``config.yaml``, ``metrics.csv``, ``summary.json``, the lock), never from
a live process, so the same command follows runs on other machines that share the file system. A run's ETA is its
remaining epochs times its mean epoch time (the ``epoch_time`` column); a run not started yet is estimated from
runs that differ from it only in the seed, else from runs of the same model, else from all runs, plus the start-up
and final-test time the completed runs took beyond their epochs. The sweep's ETA places the remaining runs on the
free slots, earliest-free slot first.

A chained sweep's run whose source (a run of another sweep) has not completed is ``waiting`` (``waiting for
SOURCE`` under it), or ``blocked`` when its source failed; the sweep's line counts its sources' states.
"""

from __future__ import annotations

import heapq
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median
from typing import Any, TextIO

import yaml

from lightning_modules import run_folder

from . import runlock
from .sweep import SweepSpec, failure, read_status, sweep_dir
from .sweep.chain import failed_why, short, source_state

ACTIVE = ("running", "interrupted", "pending", "waiting")  # states that still need time


@dataclass
class RunProgress:
    id: str
    status: str
    overrides: dict[str, Any]
    epochs_done: int = 0
    max_epochs: int | None = None
    epoch_times: tuple[float, ...] = ()
    val_acc: float | None = None
    test_acc: float | None = None
    elapsed: float | None = None  # seconds trained so far (completed: the run's wall time)
    in_epoch: float = 0.0  # seconds spent in the epoch now running (and in start-up, while ``starting``)
    starting: bool = False  # running, and this process has not finished an epoch yet
    overhead: float | None = None  # completed runs: wall time beyond the epochs (start-up, final test)
    remaining: float | None = None  # seconds left (pending: the estimated duration)
    reason: str | None = None
    source: str | None = None  # a chained run's source run folder
    source_status: str | None = None


def sweep_runs(target: str | Path, root: str | Path = "runs") -> tuple[str, Path, list[tuple[Path, dict[str, Any], str | None]]]:
    """(name, folder, [(run folder, overrides, source)]) of a spec file, a sweep folder, or any folder of run folders (as
    ``ablate report`` takes). A sweep folder's manifest lists the runs last launched (command-line ``--set``/
    ``--grid`` included); a spec whose sweep has not started lists its own."""
    target = Path(target)
    if target.is_file():
        spec = SweepSpec.load(target)
        folder, name = sweep_dir(spec, root), spec.name
        runs = [(folder / r.id, r.overrides, r.source) for r in spec.expand()]
    elif target.is_dir():
        folder, name = target, target.resolve().name
        runs = [(run_dir, {}, None) for run_dir in run_folder.run_folders(target)]
    else:
        raise FileNotFoundError(f"{target} is neither a sweep spec nor a folder")
    manifest = run_folder.read_manifest(folder)
    if manifest is not None:
        name = manifest.get("name", name)
        runs = [(folder / r["id"], r.get("overrides", {}), r.get("source")) for r in manifest["runs"]]
    if not runs:
        raise FileNotFoundError(no_runs(target))
    return name, folder, runs


def no_runs(target: str | Path) -> str:
    """The line for a folder that holds no runs (``ablate status``, ``ablate report``)."""
    return f"{target} holds no runs (a sweep folder has manifest.json, a run folder metrics.csv)"


def still_running(folder: Path) -> list[str]:
    """The runs of a sweep folder (its manifest's) or of any folder of runs that a live process trains now:
    ``read_status`` as ``ablate status`` reads it (the run's lock is held). A summary that says running with no
    holder of the lock is a dead run, not a running one."""
    folder = Path(folder)
    manifest = run_folder.read_manifest(folder)
    if manifest is not None:
        candidates = [folder / r["id"] for r in manifest["runs"]]
    else:  # every run holds its folder's lock while it trains
        candidates = sorted({p.parent for p in folder.rglob(runlock.LOCK_NAME) if run_folder.CHECKPOINTS not in p.parts})
    return sorted(run_dir.name if run_dir == folder else run_dir.relative_to(folder).as_posix()
                  for run_dir in candidates if read_status(run_dir) == "running")


def read_metrics(run_dir: Path) -> list[dict[str, float | None]]:
    """The rows of a ``metrics.csv``; none if it is missing or cannot be read (being replaced on another host)."""
    try:
        return run_folder.read_rows(run_dir)
    except (OSError, ValueError):
        return []


def _max_epochs(run_dir: Path, overrides: dict[str, Any], base_config: str | None) -> int | None:
    """N from the run's resolved config, else its overrides, else the sweep's base config."""
    for source in (run_dir / run_folder.CONFIG, None, base_config):
        if source is None:
            value = overrides.get("trainer.max_epochs")
        else:
            try:
                value = (yaml.safe_load(Path(source).read_text()) or {}).get("trainer", {}).get("max_epochs")
            except (OSError, yaml.YAMLError, AttributeError):
                value = None
        if isinstance(value, int) and value > 0:
            return value
    return None


def read_run(run_dir: Path, overrides: dict[str, Any], base_config: str | None = None,
             now: float | None = None, source: str | None = None) -> RunProgress:
    now = time.time() if now is None else now
    status = read_status(run_dir)
    source_status = source_state(source)
    rows = read_metrics(run_dir)
    times: dict[int, float] = {}  # epoch -> its time; only an epoch's last row has one (the others: evaluations)
    for row in rows:
        if row.get("epoch") is not None and row.get("epoch_time") is not None:
            times[int(row["epoch"])] = row["epoch_time"]
    latest = {key: next((r[key] for r in reversed(rows) if r.get(key) is not None), None)
              for key in ("val/acc", "test/acc")}
    progress = RunProgress(run_dir.name, status, overrides, len(times), _max_epochs(run_dir, overrides, base_config),
                           tuple(times[e] for e in sorted(times)), latest["val/acc"], latest["test/acc"])
    summary = _summary(run_dir)
    if status == "failed":
        kind, why = failure(run_dir)
        progress.reason = f"({kind}: {why})" if kind else f"({why})"
    progress.source, progress.source_status = source, source_status
    if status in ("pending", "interrupted") and source_status not in (None, "completed"):
        progress.status = "blocked" if source_status == "failed" else "waiting"
        progress.reason = (f"source failed: {short(source)} ({failed_why(source)})" if source_status == "failed"
                           else f"waiting for {short(source)} ({source_status})")
    trained = sum(progress.epoch_times)
    if status == "running":  # the epoch in progress began with the last row, unless this attempt began later
        attempt = next((p.stat().st_mtime for p in (run_dir / "attempts", run_dir / run_folder.CONFIG) if p.exists()),
                       None)
        metrics = run_dir / run_folder.METRICS
        last_row = metrics.stat().st_mtime if metrics.exists() else None
        progress.starting = last_row is None or (attempt is not None and attempt > last_row)
        since = attempt if progress.starting else last_row
        progress.in_epoch = max(0.0, now - since) if since is not None else 0.0
        progress.elapsed = trained + progress.in_epoch
    elif status in ("completed", "failed"):
        wall = _wall_time(run_dir, summary)
        progress.elapsed = wall if wall is not None else (trained or None)
        if status == "completed" and wall is not None and times:
            progress.overhead = max(0.0, wall - trained)
    elif times:
        progress.elapsed = trained
    return progress


def _wall_time(run_dir: Path, summary: dict[str, Any]) -> float | None:
    """A finished run's wall time: from its sweep attempt's start to its last summary (process start and imports
    included) when it ran once, else the time its recorder measured."""
    try:
        if int((run_dir / "attempts").read_text()) == 1:
            return (run_dir / run_folder.SUMMARY).stat().st_mtime - (run_dir / "attempts").stat().st_mtime
    except (OSError, ValueError):
        pass
    wall = summary.get("wall_time")
    return float(wall) if isinstance(wall, (int, float)) else None


def _summary(run_dir: Path) -> dict[str, Any]:
    try:
        return run_folder.load_summary(run_dir) or {}
    except (OSError, ValueError):
        return {}


def estimate(runs: list[RunProgress]) -> None:
    """Fill in ``remaining`` for every run that still needs time (see the module's docstring)."""
    measured = [r for r in runs if r.epoch_times]
    overheads = [r.overhead for r in runs if r.overhead is not None]
    overhead = median(overheads) if overheads else 0.0

    def similar(run: RunProgress) -> list[float]:
        model = run.overrides.get("model.init_args.model")
        unseeded = {k: v for k, v in run.overrides.items() if k != "seed_everything"}
        for keep in (lambda r: {k: v for k, v in r.overrides.items() if k != "seed_everything"} == unseeded,
                     lambda r: r.overrides.get("model.init_args.model") == model, lambda r: True):
            times = [t for r in measured if keep(r) for t in r.epoch_times]
            if times:
                return times
        return []

    for run in runs:
        if run.status not in ACTIVE or run.max_epochs is None:
            continue
        times = run.epoch_times or tuple(similar(run))
        if not times:
            continue
        per_epoch, left = mean(times), max(0, run.max_epochs - run.epochs_done)
        if run.status == "running":  # the epoch in progress (after start-up, for the first) takes its usual time
            current = per_epoch + (overhead if run.starting else 0.0)
            run.remaining = max(0, left - 1) * per_epoch + max(0.0, current - run.in_epoch) if left else 0.0
        else:  # starts (again) from a fresh process
            run.remaining = left * per_epoch + overhead


def sweep_eta(runs: list[RunProgress], slots: int) -> float | None:
    """Seconds until every active run is done with ``slots`` runs at once (at least the runs running now): the
    runs in progress keep their slots, each waiting run takes the slot that frees first. None if any is unknown."""
    active = [r for r in runs if r.status in ACTIVE]
    if any(r.remaining is None for r in active):
        return None
    busy = sorted(r.remaining for r in active if r.status == "running")
    heap = busy + [0.0] * max(0, slots - len(busy))
    heapq.heapify(heap)
    for run in (r for r in active if r.status != "running"):
        heapq.heappush(heap, heapq.heappop(heap) + run.remaining)
    return max(heap, default=0.0)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def collect(target: str | Path, root: str | Path = "runs", now: float | None = None) -> tuple[str, list[RunProgress]]:
    name, folder, runs = sweep_runs(target, root)
    base = (run_folder.read_manifest(folder) or {}).get("config")
    progress = [read_run(run_dir, overrides, base, now, source) for run_dir, overrides, source in runs]
    estimate(progress)
    return name, progress


def run_line(run: RunProgress, width: int) -> str:
    acc = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    epochs = f"{run.epochs_done}/{run.max_epochs or '?'}"
    eta = duration(run.remaining) if run.status in ACTIVE else "-"
    line = (f"{run.status:<11} {run.id:<{width}} {epochs:>7} {acc(run.val_acc):>8} {acc(run.test_acc):>8} "
            f"{duration(run.elapsed) if run.elapsed is not None else '-':>8} {eta:>8}")
    return line + (f"\n    {run.reason}" if run.reason else "")


def summary_line(name: str, runs: list[RunProgress], slots: int | None, now: float | None = None) -> str:
    counts = {s: sum(r.status == s for r in runs)
              for s in ("completed", "running", "interrupted", "failed", "pending", "waiting", "blocked")}
    slots = slots or max(1, counts["running"])
    text = f"{name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s in ("completed", "running", "failed"))
    text += f" of {len(runs)}"
    if any(r.status in ACTIVE for r in runs):
        eta = sweep_eta(runs, slots)
        at = "" if eta is None else time.strftime(" (%H:%M %Z)", time.localtime((now or time.time()) + eta))
        text += f"; ETA {duration(eta)}{at} on {slots} slot{'s' * (slots != 1)}"
    sources = [r for r in runs if r.source]
    if sources:  # a chained sweep: where its runs' sources stand
        states = [r.source_status for r in sources]
        text += (f"; sources in {_shown(Path(sources[0].source).parent)}: " +
                 ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(sorted(states, key=_SOURCE_ORDER.index))))
    return text


_SOURCE_ORDER = ["completed", "running", "interrupted", "pending", "failed"]


def _shown(path: Path) -> str:
    """A folder relative to the working directory when it is below it (as a user typed it), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def render(name: str, runs: list[RunProgress], slots: int | None, now: float | None = None) -> str:
    width = max([len(r.id) for r in runs] + [3])
    header = f"{'state':<11} {'run':<{width}} {'epoch':>7} {'val/acc':>8} {'test/acc':>8} {'elapsed':>8} {'ETA':>8}"
    return "\n".join([header, *(run_line(r, width) for r in runs), summary_line(name, runs, slots, now)])


def watch(target: str | Path, root: str | Path, slots: int | None, every: float, out: TextIO = sys.stdout,
          rounds: int | None = None) -> None:
    """Redraw the table in place every ``every`` seconds on a terminal; elsewhere (a log, a pipe) print a line per
    run whose state or epoch changed, then the sweep's line. Stops once no run needs time (or after ``rounds``)."""
    tty = out.isatty()
    seen: dict[str, tuple[str, int]] = {}
    done = 0
    while True:
        name, runs = collect(target, root)
        if tty:
            out.write("\x1b[H\x1b[2J" + render(name, runs, slots) + "\n")
        else:
            width = max([len(r.id) for r in runs] + [3])
            for run in runs:
                if seen.get(run.id) != (run.status, run.epochs_done):
                    seen[run.id] = (run.status, run.epochs_done)
                    out.write(run_line(run, width) + "\n")
            out.write(summary_line(name, runs, slots) + "\n")
        out.flush()
        done += 1
        if not any(r.status in ("running", "pending", "waiting") for r in runs) or (rounds is not None and done >= rounds):
            return
        time.sleep(every)
