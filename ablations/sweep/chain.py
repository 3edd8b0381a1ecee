"""A chained sweep: each run starts from the weights of one run of another sweep (the spec's ``init_from``).

Which run is resolved when the spec loads, from the source sweep's ``manifest.json``: the one whose values agree
with the run's on every ``match`` key (a grid axis, else a ``set`` key, else the base config's value; layouts
compared as parsed, so ``CCTT`` is ``C-C-T-T``). No such run, or two, is a one-line error before anything starts.
``checkpoint`` picks its weights: ``last`` (its run folder, the final model its results come from) or ``best``.

A run whose source has not completed is never started: it would train from random weights (and ``ablate train``
refuses an unfinished run folder as a source). The local pool, SLURM and ``ablate status`` read a source's state
one way (``source_state``); how long the local pool waits for a source is ``SourceWatch``'s rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from lightning_modules import run_folder
from lightning_modules.init_from import OPTION as INIT_FROM  # the option a run's source is given to

DEFAULT_MATCH = ("layout", "seed_everything")
# which of its source's checkpoints a run starts from: the last (the run folder: its final model), or the best
CHECKPOINTS = {"last": run_folder.LAST_CHECKPOINT, "best": run_folder.BEST_CHECKPOINT}
POLL_S = 2.0  # how often a waiting local run looks at its source again
SOURCE_IDLE_S = 60.0  # a source sweep in which no run has trained for this long is not coming: stop waiting on it


@dataclass(frozen=True)
class Chain:
    sweep: str  # the source sweep's folder, absolute (a run's source is given to processes that may cd elsewhere)
    match: tuple[str, ...] = DEFAULT_MATCH
    checkpoint: str = "last"

    @classmethod
    def parse(cls, raw: Any, where: str) -> "Chain":
        """The spec's ``init_from`` mapping, checked: ``sweep`` a folder with a manifest, ``match`` option names,
        ``checkpoint`` last or best."""
        if not isinstance(raw, dict) or "sweep" not in raw or set(raw) - {"sweep", "match", "checkpoint"}:
            raise ValueError(f"{where}: init_from {raw!r} is not valid; expected a mapping with sweep (the source "
                             "sweep's folder) and optionally match (a list of axes, default layout, seed_everything) "
                             "and checkpoint (last or best, default last)")
        checkpoint = raw.get("checkpoint", "last")
        if not isinstance(checkpoint, str) or checkpoint not in CHECKPOINTS:
            raise ValueError(f"{where}: init_from checkpoint {checkpoint!r} is not valid; expected last (the "
                             "source's final weights, which its results come from) or best (its best validation "
                             "accuracy)")
        match = raw.get("match", list(DEFAULT_MATCH))
        if not (isinstance(match, list) and match and all(isinstance(k, str) and k.strip() for k in match)):
            raise ValueError(f"{where}: init_from match {match!r} is not valid; expected a non-empty list of axis "
                             "names, e.g. [layout, seed_everything]")
        folder = Path(str(raw["sweep"]))
        if run_folder.read_manifest(folder) is None:
            state = "has no manifest.json" if folder.is_dir() else "does not exist"
            raise ValueError(f"{where}: init_from sweep {folder} {state}; launch the source sweep first "
                             "(`ablate sweep SPEC` writes its manifest before any run starts)")
        return cls(str(folder.resolve()), tuple(k.strip() for k in match), checkpoint)

    def sources(self, name: str, config: str, points: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[Source]:
        """The source of each ``(overrides, axes)`` point of sweep ``name``, or a ValueError naming the first point
        with no source or with several."""
        from ..identity import canonical

        manifest = run_folder.read_manifest(Path(self.sweep)) or {}
        entries = manifest.get("runs", [])
        source_config = manifest.get("config", config)
        values = [self._values(e.get("overrides", {}), e.get("axes", {}), source_config, f"sweep {self.sweep}")
                  for e in entries]
        out = []
        for overrides, axes in points:
            key = canonical(self._values(overrides, axes, config, f"sweep {name}"))
            found = [e for e, v in zip(entries, values) if canonical(v) == key]
            if len(found) != 1:
                raise ValueError(self._mismatch(name, axes, entries, values, found))
            out.append(Source(str(Path(self.sweep) / found[0]["id"]), source_config, found[0].get("overrides", {}),
                              self.checkpoint))
        return out

    def _values(self, overrides: dict[str, Any], axes: dict[str, Any], config: str, whose: str) -> list[Any]:
        """The run's value of each ``match`` key."""
        out = []
        for name in self.match:
            value = _value(name, overrides, axes, config)
            if value is _ABSENT:
                raise ValueError(f"init_from match {name!r} is not an axis or option of {whose} "
                                 f"({', '.join(sorted({*axes, *overrides}))}); give axes both sweeps have")
            out.append(value)
        return out

    def _mismatch(self, name: str, axes: dict[str, Any], entries: list[dict], values: list[list[Any]],
                  found: list[dict]) -> str:
        point = "{" + ", ".join(f"{k}: {v}" for k, v in axes.items()) + "}"
        if not found:
            have = "; ".join(f"{key} {', '.join(sorted({str(v[i]) for v in values}))}"
                             for i, key in enumerate(self.match))
            return (f"sweep {name}: run {point} has no source in {self.sweep} (init_from match: "
                    f"{', '.join(self.match)}); its runs have {have or 'none'}")
        differ = sorted(k for k in {k for e in found for k in e.get("axes", {})}
                        if len({str(e.get("axes", {}).get(k)) for e in found}) > 1)
        return (f"sweep {name}: run {point} matches {len(found)} runs of {self.sweep} "
                f"({', '.join(e['id'] for e in found)}); add the axis that tells them apart to init_from match "
                f"(they differ in {', '.join(differ) or 'settings outside their axes'})")


@dataclass(frozen=True)
class Source:
    """A run of the source sweep: its folder, the base config and overrides its manifest launched it with, and
    which of its checkpoints a run loads."""
    folder: str
    config: str
    overrides: dict[str, Any]
    checkpoint: str = "last"

    @property
    def init_from(self) -> str:
        """The run's ``init_from``: the run folder (its final weights), or a file of its ``checkpoints/``."""
        if self.checkpoint == "last":
            return self.folder
        return str(run_folder.checkpoints(Path(self.folder)) / CHECKPOINTS[self.checkpoint])

    def identity(self) -> str:
        """What a run started from it depends on: once the source has written its config.yaml (and the checkpoint
        it names, for best), its identity as ``ablate train`` computes it (``identity.source_identity``), so neither
        an edit of the source sweep's base config nor how the source was launched (several devices) changes a
        fine-tuning run's id; before, the same from the source sweep's manifest entry, so that the id is known
        before the source has started (a run folder made then keeps its id: ``spec._launched_ids``)."""
        from ..identity import run_identity, source_identity
        from .overrides import resolved_settings

        ran = (Path(self.folder) / run_folder.CONFIG).is_file()
        if ran and (self.checkpoint == "last" or Path(self.init_from).is_file()):  # what ablate train can resolve
            return source_identity(self.init_from)
        return run_identity(resolved_settings(self.config, self.overrides), CHECKPOINTS[self.checkpoint])


_ABSENT = object()


def _value(name: str, overrides: dict[str, Any], axes: dict[str, Any], config: str) -> Any:
    """A run's value of a match key: its axis, else its override, else the base config's (as parsed)."""
    from lightning_modules.backbones import parse_layout
    from lightning_modules.backbones.blocks import BLOCK_DESCRIPTIONS

    if name == "layout":  # the layout axis, else the model option, as a layout where it is one
        value = axes.get("layout", _value("model.init_args.model", overrides, axes, config))
        try:
            return str(parse_layout(str(value), BLOCK_DESCRIPTIONS))
        except ValueError:
            return value
    if name in axes or name in overrides:
        value = axes[name] if name in axes else overrides[name]
    else:
        from .overrides import resolved_settings

        value = resolved_settings(config, overrides).get(name, _ABSENT)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def held(runs: Iterable[Any], folder: Path) -> list[Any]:
    """The runs of a chained sweep that are not done and may not start: their sources have not completed."""
    from .attempts import read_status

    return [r for r in runs if read_status(folder / r.id) not in ("completed", "running")
            and source_state(r.source) not in (None, "completed")]


def source_state(source: str | None) -> str | None:
    """None (no source), else the source run's state as a sweep reads it (``attempts.read_status``)."""
    from .attempts import read_status

    return None if source is None else read_status(Path(source))


def short(source: str) -> str:
    """``transfer_pretrain/cctt_tiny-s0-1a2b3c4d``: a source as tables show it."""
    path = Path(source)
    return f"{path.parent.name}/{path.name}"


def failed_why(source: str) -> str:
    from .attempts import failure

    kind, reason = failure(Path(source))
    return f"{kind}: {reason}" if kind else str(reason)


class SourceWatch:
    """Whether a local run may start: at once without a source or once its source completed; never when the source
    failed (``source failed``); and while the source is pending or interrupted only as long as its sweep is
    progressing, i.e. some run of it has been training within ``idle_s`` (``waiting``: nothing will complete it)."""

    def __init__(self, idle_s: float | None = None):
        self.idle_s = SOURCE_IDLE_S if idle_s is None else idle_s
        self.busy_at: dict[Path, float] = {}  # source sweep folder -> when a run of it was last seen training
        self.poll: tuple[float | None, dict] = (None, {})  # (its time, what it read): each source and sweep once

    def verdict(self, source: str | None, now: float | None = None) -> str:
        """``start``, ``wait``, or why the run will not start: ``waiting`` or ``source failed``. The verdicts of
        one poll (one ``now``) read each source's state and each source sweep's locks once."""
        now = time.time() if now is None else now
        if self.poll[0] != now:
            self.poll = (now, {})
        seen = self.poll[1]
        state = seen[source] if source in seen else seen.setdefault(source, source_state(source))
        if state in (None, "completed"):
            return "start"
        if state == "failed":
            return "source failed"
        sweep = Path(str(source)).parent
        if sweep not in seen:
            seen[sweep] = _any_running(sweep)
        if state == "running" or seen[sweep]:
            self.busy_at[sweep] = now
            return "wait"
        return "wait" if now - self.busy_at.setdefault(sweep, now) < self.idle_s else "waiting"


def _any_running(sweep: Path) -> bool:
    from .attempts import read_status

    manifest = run_folder.read_manifest(sweep) or {}
    return any(read_status(sweep / str(r.get("id"))) == "running" for r in manifest.get("runs", []))


def describe(run_id: str, source: str, verdict: str) -> str:
    """The line a sweep prints for a run it does not start."""
    if verdict == "source failed":
        return f"{run_id}: not started: source failed: {short(source)} ({failed_why(source)})"
    return (f"{run_id}: not started: waiting for {short(source)} ({source_state(source)}); run this sweep again once "
            "it has completed")


def ready_first(runs: Iterable[Any]) -> list[Any]:
    """The runs whose sources are done (or that have none) first, each group in grid order."""
    runs = list(runs)
    done = [source_state(r.source) in (None, "completed") for r in runs]
    return [r for r, d in zip(runs, done) if d] + [r for r, d in zip(runs, done) if not d]
