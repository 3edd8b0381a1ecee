"""What every executor of a sweep shares: the sweep's folder, its manifest, and the order of work. An executor
(``local.LocalPool``, ``slurm.Submitit``) says only how the runs it is given are started."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from lightning_modules import run_folder

from .attempts import read_status
from .spec import Run, SweepSpec


def sweep_dir(spec: SweepSpec, root: str | Path = "runs") -> Path:
    return Path(root) / spec.name


def write_manifest(spec: SweepSpec, runs: list[Run], folder: Path) -> None:
    """The sweep as launched; a chained sweep adds its ``init_from`` and each run's ``source`` run folder."""
    manifest = {"name": spec.name, "config": spec.config, "budget": spec.budget, "grid": spec.grid,
                "margins": spec.margins}
    if spec.init_from is not None:
        manifest["init_from"] = {"sweep": spec.init_from.sweep, "match": list(spec.init_from.match),
                                 "checkpoint": spec.init_from.checkpoint}
    manifest["runs"] = [{"id": r.id, "axes": r.axes, "overrides": r.overrides} for r in runs]
    for entry, run in zip(manifest["runs"], runs):
        if run.source:
            entry["source"] = run.source
    run_folder.write_manifest(folder, manifest)


def sweep_status(spec: SweepSpec, root: str | Path = "runs") -> list[tuple[Run, str]]:
    folder = sweep_dir(spec, root)
    return [(run, read_status(folder / run.id)) for run in spec.expand(folder)]


class Executor(abc.ABC):
    """Runs a sweep: checks the executor's own settings (``check``) and every override with ``ablate train``'s
    parser before anything is written or started, writes the manifest, then launches the runs (``launch``).
    Re-running a sweep skips what is done: each run's own attempts (``attempts.execute``) decide that from its
    folder."""

    def run(self, spec: SweepSpec, root: str | Path = "runs") -> Any:
        self.check(spec)
        folder = sweep_dir(spec, root)
        runs = spec.expand(folder)  # every override checked with `ablate train`'s parser, duplicates refused
        write_manifest(spec, runs, folder)
        return self.launch(spec, runs, folder)

    def check(self, spec: SweepSpec) -> None:
        """Refuse settings this executor cannot use for ``spec`` (a ValueError naming the value)."""

    @abc.abstractmethod
    def launch(self, spec: SweepSpec, runs: list[Run], folder: Path) -> Any:
        """Start ``runs`` (all of the sweep's, in grid order) into ``folder``."""
