"""A sweep spec: the YAML file (``name``, ``config``, ``set``, ``budget``, ``grid``, ``max_retries``, ``slurm``,
``margins``, ``init_from``), checked as it loads and expanded into runs. See the package docstring for the format."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.backbones import BUDGETS, budget_variant, import_block_modules, parse_layout, variant_name
from lightning_modules.backbones.blocks import BLOCK_DESCRIPTIONS
from lightning_modules.backbones.registry import MATCHED

from lightning_modules.run_folder import read_manifest, summary_status

from .chain import INIT_FROM, Chain
from .run_ids import run_id

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SPEC_KEYS = {"name", "config", "set", "budget", "grid", "max_retries", "slurm", "margins", "init_from"}
SPEC_TYPES = {"name": (str, "a string"), "config": (str, "a path to an `ablate train` config"),
              "set": (dict, "a mapping of `ablate train` options to values"), "budget": (str, "a budget name"),
              "grid": (dict, "a mapping of `ablate train` options (or layout) to lists of values"),
              "max_retries": (int, "an integer >= 0"), "slurm": (dict, "a mapping of submitit parameters"),
              "margins": (dict, "a mapping of metric kind (accuracy, log_loss) to an equivalence margin"),
              "init_from": (dict, "a mapping: sweep (the source sweep's folder), match (the axes a run shares with "
                                  "its source), checkpoint (last or best)")}


@dataclass(frozen=True)
class Run:
    id: str
    overrides: dict[str, Any]  # `ablate train` options on top of the base config
    axes: dict[str, Any]  # the grid values that define this run (for tables)
    source: str | None = None  # the run folder of another sweep whose weights it starts from (``chain``)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    config: str
    fixed: dict[str, Any]
    budget: str | None
    grid: dict[str, list[Any]]
    max_retries: int = 2
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit parameters (ablations/cluster.py)
    margins: dict[str, float] = field(default_factory=dict)  # equivalence margins the report's verdicts use
    init_from: Chain | None = None  # a chained sweep: where each run's starting weights come from

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
                                   (key in ("set", "budget", "slurm", "margins") and raw[key] is None)):
                raise ValueError(f"sweep spec {path}: {key} {raw[key]!r} is not valid; expected {valid}")
        clash = _set_and_grid(raw.get("set") or {}, raw["grid"] if isinstance(raw["grid"], dict) else {})
        if clash:  # one value in set and a list in grid: the grid would override the set without a word
            key, axis = clash
            what = "a grid axis" if axis == key else f"set by the grid axis {axis}"
            raise ValueError(f"sweep spec {path}: set key {key} is also {what}, whose values would override it; "
                             f"give {key} in set or in grid, not both")
        if fixed or grid:
            raw = _command_line(raw, fixed or {}, grid or {}, path)
        chain = Chain.parse(raw["init_from"], f"sweep spec {path}") if raw.get("init_from") is not None else None
        if chain is not None and (INIT_FROM in (raw.get("set") or {}) or
                                  any(INIT_FROM in axis_options(axis) for axis in raw["grid"])):
            raise ValueError(f"sweep spec {path}: {INIT_FROM} is given by init_from, per run; remove it from set "
                             "and grid")
        from ..cluster import settings

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
        for key, values in grid.items():  # a linked axis: "a,b: [[a1, b1], [a2, b2]]" sets a and b together
            names = key.split(",")
            if len(names) > 1 and not all(isinstance(v, list) and len(v) == len(names) for v in values):
                bad = next(v for v in values if not (isinstance(v, list) and len(v) == len(names)))
                raise ValueError(f"sweep spec {path}: linked axis {key} value {bad!r} is not valid; expected a list of "
                                 f"{len(names)} values, one for each of {', '.join(names)}")
        budget = raw.get("budget")
        if "layout" in grid and budget not in BUDGETS:
            raise ValueError(f"the layout axis needs a budget; budget={budget!r}, valid: {', '.join(BUDGETS)}")
        # the base config: as given (relative to the working directory), else relative to the project root
        config = Path(raw["config"])
        if not config.is_file() and (PROJECT_ROOT / config).is_file():
            config = PROJECT_ROOT / config
        if not config.is_file():
            raise FileNotFoundError(f"base config {raw['config']} of sweep spec {path} does not exist")
        from ..verdicts import parse_margins

        try:
            margins = parse_margins(raw.get("margins"))
        except ValueError as err:
            raise ValueError(f"sweep spec {path}: {err}") from None
        spec = cls(raw["name"], str(config), {str(k): v for k, v in (raw.get("set") or {}).items()}, budget, grid,
                   int(raw.get("max_retries", 2)), dict(raw.get("slurm") or {}), margins, chain)
        import_block_modules(spec.model_init_arg("imports"))  # a user's block letters, before layouts are read
        for layout in grid.get("layout", []):
            spec.layout_overrides(layout)  # unknown letters and unmatchable layouts fail here, not in a run
        if chain is not None:  # every run has exactly one source, or the spec is refused now
            chain.sources(spec.name, spec.config, spec.points())
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

    def expand(self, folder: str | Path | None = None) -> list[Run]:
        """The runs of the grid, each id from its resolved settings (``run_ids``). Every override is checked with
        ``ablate train``'s parser first (``overrides.check_overrides``). Two grid points that are one configuration
        once parsed (``1`` and ``1.0`` for a float option) are refused here, before any run starts. With
        ``folder`` (the sweep's), a run that the folder's manifest already lists under another id (one made by an
        earlier rule for ids) keeps that id: its folder is resumed or left completed, never trained again."""
        from ..identity import canonical, non_default
        from .overrides import check_overrides, resolved_settings

        points = self.points()
        sources = self.init_from.sources(self.name, self.config, points) if self.init_from else [None] * len(points)
        points = [({**overrides, INIT_FROM: source.init_from} if source else overrides, axes)
                  for (overrides, axes), source in zip(points, sources)]
        check_overrides(self, [Run("", overrides, axes) for overrides, axes in points])
        runs, seen = [], {}
        for (overrides, axes), source in zip(points, sources):
            if source is None:
                settings = resolved_settings(self.config, overrides)
            else:  # the source as its identity (``chain.Source.identity``): it may not have started yet
                own = {key: value for key, value in overrides.items() if key != INIT_FROM}
                settings = {**resolved_settings(self.config, own), INIT_FROM: source.identity()}
            run = Run(run_id(overrides, settings), overrides, axes, source and source.folder)
            for key in (run.id, canonical(non_default(settings))):
                if key in seen:
                    raise ValueError(f"sweep {self.name}: grid points {_point(seen[key].axes)} and {_point(axes)} are "
                                     "the same run once parsed (the same settings and seed); remove one of them")
                seen[key] = run
            runs.append(run)
        return _launched_ids(self, runs, Path(folder)) if folder is not None else runs

    def points(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(overrides, axes) of every grid point, in grid order; a chained run's source is added by ``expand``."""
        keys = list(self.grid)
        points = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            axes = {}
            for key, value in zip(keys, values):  # a linked axis sets each of its options
                axes.update(zip(key.split(","), value) if "," in key else [(key, value)])
            overrides = dict(self.fixed)
            for key, value in axes.items():
                if key == "layout":
                    overrides.update(self.layout_overrides(value))
                else:
                    overrides[key] = value
            points.append((overrides, axes))
        return points

def _point(axes: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{key}: {value!r}" for key, value in axes.items()) + "}"


def _launched_ids(spec: SweepSpec, runs: list[Run], folder: Path) -> list[Run]:
    """Runs that ``folder``'s manifest lists under another id than the current rule gives (the same overrides,
    resolved the same way) keep the id their folder has."""
    from .overrides import resolved_settings

    manifest = read_manifest(folder)
    ids = {run.id for run in runs}
    earlier: dict[str, str] = {}
    for entry in (manifest or {}).get("runs", []):
        if entry.get("id") in ids or not (folder / str(entry.get("id"))).is_dir():
            continue
        try:
            now = run_id(entry["overrides"], resolved_settings(spec.config, entry["overrides"]))
        except Exception:  # noqa: BLE001  overrides this code no longer parses: that folder is another run
            continue
        if now in ids and (now not in earlier or summary_status(folder / entry["id"]) == "completed"):
            earlier[now] = str(entry["id"])
    return [Run(earlier.get(run.id, run.id), run.overrides, run.axes, run.source) for run in runs]


LAYOUT_SETS = ("model.init_args.model", "model.init_args.budget")  # what the layout axis sets (layout_overrides)


def axis_options(axis: str) -> list[str]:
    """The ``ablate train`` options a grid axis sets: its own, each of a linked axis's, the layout's model."""
    return list(LAYOUT_SETS) if axis == "layout" else [name.strip() for name in str(axis).split(",")]


def _set_and_grid(fixed: dict[str, Any], grid: dict[str, Any]) -> tuple[str, str] | None:
    """(a fixed key, the grid axis that sets it too), or None: one rule for the spec and the command line."""
    for axis in grid:
        for key in axis_options(axis):
            if key in fixed:
                return key, str(axis)
    return None


def _command_line(raw: dict[str, Any], fixed: dict[str, Any], grid: dict[str, list[Any]], path: Path) -> dict[str, Any]:
    """``--set`` joins the spec's ``set``, ``--grid`` adds or replaces axes (a spec's ``set`` key given with
    ``--grid`` becomes an axis): run ids follow the same rules."""
    clash = _set_and_grid(fixed, {**(raw["grid"] or {}), **grid})
    if clash:
        key, axis = clash
        where = "--grid" if axis in grid else str(path)
        what = f"a grid axis of {where}" if axis == key else f"set by the grid axis {axis} of {where}"
        raise ValueError(f"--set {key}: {key} is {what}; give its values with --grid")
    replaced = {key for axis in grid for key in axis_options(axis)}
    kept = {k: v for k, v in (raw.get("set") or {}).items() if k not in replaced}
    return {**raw, "set": {**kept, **fixed}, "grid": {**(raw["grid"] or {}), **grid}}
