"""Reading the study: one tidy table of every run's curves, and the paper's generalisation comparisons.

``load_runs(folder)`` reads any folder of run folders (a sweep's, ad-hoc ``ablate train`` runs under ``runs/``, a
hand-made selection) and ``load_wandb(project)`` a W&B project into a pandas frame with one row per run and
evaluation. A run is identified by its layout, data size and every other setting that differs between the runs
(a sweep's grid axes from its ``manifest.json``, and any config key that differs between runs the grid calls
alike, as when the base config was edited between two launches; otherwise every config key whose value differs): each such
setting is a column named by its config key (``model.init_args.model_args.rel_pos``), and every summary,
comparison, table and plot groups by all of them; only seeds are pooled. Metric columns are the logged names with
``/`` as ``_`` (``val/acc`` -> ``val_acc``): whatever the module logs is in the table.

Layouts are compared paired by seed (the seed fixes the data subset and the initialisation): the mean paired
difference with a paired t interval and test (scipy.stats); below ``MIN_SEEDS`` seeds a relation gets no verdict.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from lightning_modules import run_folder
from lightning_modules.backbones import MODELS

IDENTITY = ["run", "layout", "model", "budget", "data_size"]  # then the setting columns, then RUN_FACTS
RUN_FACTS = ["seed", "params", "flops", "epoch", "step"]
MIN_SEEDS = 3
# config keys that say how a run was launched or logged, not what it computed (or that the columns above hold)
NOT_SETTINGS = ("run_dir", "runs_root", "config", "wandb.", "checkpoint_every_n_steps", "params", "flops",
                "seed_everything", "data.init_args.seed", "data.init_args.num_workers", "data.init_args.train_fraction",
                "data.init_args.train_samples", "model.init_args.model", "model.init_args.compile", "trainer.logger",
                "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.default_root_dir",
                "trainer.log_every_n_steps", "layout")


def describe_model(name: str) -> tuple[str, str | None]:
    """(layout, budget) of a registry name or a layout string: ``cctt_tiny -> ("C-C-T-T", "tiny")``."""
    entry = MODELS.get(name.lower())
    if entry is None:
        return name, None
    budget = name.rsplit("_", 1)[-1] if name.rsplit("_", 1)[-1] in ("paper", "cifar", "tiny") else None
    return getattr(entry.config, "layout", name), budget


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"model.init_args.lr": 0.002, ...}``; lists become their JSON text (hashable)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value, default=str) if isinstance(value, (list, tuple)) else value
    return out


def _is_setting(key: str) -> bool:
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_SETTINGS)


def settings(frame: pd.DataFrame) -> list[str]:
    """The columns besides layout that tell runs apart, the seed excepted: data size, then every varying setting
    (and the model name where one layout comes in several models)."""
    extra = [c for c in frame.columns if "." in c]
    several = "model" in frame and frame.groupby("layout")["model"].nunique().max() > 1
    return ["data_size", *(["model"] if several else []), *extra]


def _run_identity(name: str, run_dir: str, config: dict, summary: dict | None) -> dict:
    model = config["model"]["init_args"]["model"]
    layout, budget = describe_model(model)
    budget = budget or config["model"]["init_args"].get("budget")  # a layout sized by the matcher
    data = config["data"]["init_args"]
    return {"run": name, "run_dir": run_dir, "layout": layout, "model": model, "budget": budget,
            "data_size": data.get("train_samples") or data["train_fraction"], "seed": config.get("seed_everything"),
            "params": (summary or {}).get("params", config.get("params")),
            "flops": (summary or {}).get("flops", config.get("flops"))}


def _tidy(rows: pd.DataFrame, identity: dict, setting_values: dict) -> pd.DataFrame:
    rows = rows.rename(columns=lambda c: c.replace("/", "_"))
    metrics = [c for c in rows.columns if c not in ("epoch", "step")]
    for key, value in {**identity, **setting_values}.items():
        rows[key] = value
    front = [c for c in IDENTITY if c in rows] + list(setting_values) + RUN_FACTS
    return rows.reindex(columns=[*front, "run_dir", *metrics])


def _varying(flat: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for f in flat for k in f if _is_setting(k)})
    return [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flat}) > 1]


def _off_grid(parts: list[tuple[dict, dict, pd.DataFrame]], keys: list[str]) -> list[str]:
    """Config keys that differ between runs the grid calls alike (same layout, model, data size and axis values;
    only the seed may differ): a base config edited between two launches of a sweep. They are settings too."""
    alike: dict[str, list[dict]] = {}
    for identity, flat, _ in parts:
        group = json.dumps([identity["layout"], identity["model"], identity["data_size"], *(flat.get(k) for k in keys)],
                           default=str)
        alike.setdefault(group, []).append(flat)
    return sorted({key for flats in alike.values() if len(flats) > 1 for key in _varying(flats)})


def _assemble(parts: list[tuple[dict, dict, pd.DataFrame]], keys: list[str], source: str) -> pd.DataFrame:
    """One frame of runs ``(identity, flat config or axes, rows)``, a column per setting key; two runs that
    differ in nothing but their folder are an error naming both."""
    frames = [_tidy(rows, identity, {k: flat.get(k) for k in keys}) for identity, flat, rows in parts]
    if not frames:
        raise FileNotFoundError(f"no completed runs with metrics under {source}")
    frame = pd.concat(frames, ignore_index=True)
    runs = frame.drop_duplicates("run_dir")
    ident = ["layout", "model", *settings(frame), "seed"]
    twins = runs[runs.astype({c: str for c in ident}).duplicated(ident, keep=False)]
    if len(twins):
        first = twins.astype({c: str for c in ident}).groupby(ident)["run_dir"].apply(list).iloc[0]
        raise ValueError(f"runs {first[0]} and {first[1]} have the same settings and seed; keep one, or give them a "
                         "setting that tells them apart")
    return frame.drop(columns="run_dir")


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """One run folder's curves, with its identity columns repeated on every row."""
    return load_runs(run_dir, completed_only=False)


class UnreadableRun(ValueError):
    """A run folder whose files do not read back as one complete run."""


def _read_run(run_dir: Path, completed_only: bool) -> tuple | None:
    """(identity, flat config, rows) of one run folder; None when ``completed_only`` and it is not completed.
    Raises ``UnreadableRun`` saying why when a file is missing or damaged, or when ``metrics.csv`` is cut short
    (a truncated copy would otherwise enter the tables as a shorter run)."""
    try:
        summary = run_folder.load_summary(run_dir)
    except ValueError as err:
        raise UnreadableRun(f"{run_folder.SUMMARY} unreadable ({' '.join(str(err).split())[:80]})") from None
    if completed_only and (summary or {}).get("status") != "completed":
        return None
    missing = [name for name in (run_folder.CONFIG, run_folder.METRICS) if not (run_dir / name).exists()]
    if missing:
        raise UnreadableRun(f"{', '.join(missing)} missing")
    try:
        config = yaml.safe_load((run_dir / run_folder.CONFIG).read_text())
        text = (run_dir / run_folder.METRICS).read_text()
        rows = pd.DataFrame(run_folder.read_rows(run_dir))
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise UnreadableRun(f"{type(err).__name__}: {' '.join(str(err).split())[:120]}") from None
    epochs = int(rows["train/loss"].notna().sum()) if "train/loss" in rows else 0
    if not text.endswith("\n"):  # every write ends its last row: this copy was cut mid-row
        raise UnreadableRun(f"{run_folder.METRICS} ends mid-row (truncated)")
    if summary is not None and summary.get("epochs") is not None and epochs != summary["epochs"]:
        raise UnreadableRun(f"{run_folder.METRICS} holds {epochs} epoch row(s), {run_folder.SUMMARY} records "
                            f"{summary['epochs']}")
    return _run_identity(run_dir.name, str(run_dir), config, summary), flatten(config), rows


def _run_candidates(folder: Path) -> list[Path]:
    """Every folder below ``folder`` (or ``folder`` itself) that holds any of a run's records: one missing its
    config or metrics is still a run, to be listed as unreadable rather than left out without a word."""
    marks = (run_folder.SUMMARY, run_folder.METRICS)
    if any((folder / mark).exists() for mark in marks):
        return [folder]
    found = {p.parent for mark in marks for p in folder.rglob(mark) if run_folder.CHECKPOINTS not in p.parts}
    return sorted(found)


def read_runs(folder: str | Path, completed_only: bool = True) -> tuple[pd.DataFrame | None, dict[str, str]]:
    """Every run below ``folder`` (or the one run folder given) as one tidy frame (None when there is none), and
    ``{run: why}`` for each run that could not be read: listed, never silently left out. A sweep folder's settings
    are its grid axes, and any config key that differs between runs its grid calls alike (``_off_grid``); for any
    other folder they are the config keys whose values differ between the runs."""
    folder = Path(folder)
    parts, unreadable = [], {}
    for run_dir in _run_candidates(folder):
        try:
            part = _read_run(run_dir, completed_only)
        except UnreadableRun as err:
            unreadable[run_dir.name] = str(err)
            continue
        if part is not None:
            parts.append(part)
    if not parts:
        return None, unreadable
    manifest = run_folder.read_manifest(folder)
    if manifest is not None:
        axes = [flatten(r["axes"]) for r in manifest["runs"]]
        keys = [k for k in _varying(axes) + [k for k, v in manifest["grid"].items() if not isinstance(v[0], dict)]
                if _is_setting(k)]
        keys = sorted(set(keys) | set(_off_grid(parts, keys)))
    else:
        keys = _varying([flat for _, flat, _ in parts])
    frame = _assemble(parts, keys, str(folder))
    frame.attrs["unreadable"] = unreadable
    return frame, unreadable


def load_runs(folder: str | Path, completed_only: bool = True) -> pd.DataFrame:
    """``read_runs`` as a frame; no readable run is a FileNotFoundError that names the unreadable ones."""
    frame, unreadable = read_runs(folder, completed_only)
    if frame is None:
        why = "; ".join(f"{run}: {reason}" for run, reason in unreadable.items())
        raise FileNotFoundError(f"no {'completed ' if completed_only else ''}runs with metrics under {folder}"
                                + (f" (unreadable: {why})" if why else ""))
    return frame


def run_folders_of(folder: Path, completed_only: bool = True) -> list[Path]:
    """The run folders below ``folder``; with ``completed_only`` those whose summary says completed."""
    return [p for p in run_folder.run_folders(folder) if not completed_only or run_folder.summary_status(p) == "completed"]


def load_wandb(project: str, api=None, filters: dict | None = None) -> pd.DataFrame:
    """Finished runs of a W&B project (logged by `ablate train --wandb.enabled true`), full histories through
    ``scan_history``, as the same frame ``load_runs`` gives: history rows of one training step are merged, and
    the settings are the config keys that differ between the runs."""
    if api is None:
        import wandb

        api = wandb.Api()
    parts = []
    for run in api.runs(project, filters=filters):
        if run.state != "finished":
            continue
        history = pd.DataFrame([row for row in run.scan_history() if row.get("trainer/global_step") is not None])
        if history.empty:
            continue
        rows = history.groupby("trainer/global_step", as_index=False, sort=True).last()
        rows["step"] = rows.pop("trainer/global_step")
        rows = rows.drop(columns=[c for c in rows.columns if c.startswith("_")])
        config = dict(run.config)
        parts.append((_run_identity(run.name, f"{project}/{run.id}", config, None), flatten(config), rows))
    return _assemble(parts, _varying([flat for _, flat, _ in parts]), f"W&B project {project!r}")


def load_source(source: str | Path, completed_only: bool = True) -> pd.DataFrame:
    """``wandb:ENTITY/PROJECT`` reads a W&B project, anything else a folder of run folders."""
    source = str(source)
    if source.startswith("wandb:"):
        return load_wandb(source.removeprefix("wandb:"))
    return load_runs(source, completed_only=completed_only)


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def from_project_root(source: str | Path) -> str:
    """A relative folder named from the project root (``runs/demo``), wherever the caller runs: Jupyter starts a
    notebook's kernel in the notebook's own folder. ``wandb:`` sources and absolute paths are kept."""
    source = str(source)
    if source.startswith("wandb:") or Path(source).is_absolute():
        return source
    return str(PROJECT_ROOT / source)


# --- per-run numbers -----------------------------------------------------------------------------------------
def _keys(frame: pd.DataFrame) -> list[str]:
    return ["run", "layout", *settings(frame), "seed"]


def accuracy_at_loss(curve: pd.DataFrame, loss: float, loss_col: str = "train_eval_loss",
                     acc_col: str = "test_acc") -> float:
    """Test accuracy where the run's clean training loss crossed ``loss``, linearly interpolated between the two
    evaluations around the crossing; NaN when the run never reached it. "If two models reach the same training
    loss, the one with higher test accuracy generalises better."""
    points = curve[[loss_col, acc_col]].dropna().to_numpy()
    for (l0, a0), (l1, a1) in zip(points[:-1], points[1:]):
        if min(l0, l1) <= loss <= max(l0, l1):
            return float(a0 if l1 == l0 else a0 + (a1 - a0) * (loss - l0) / (l1 - l0))
    if len(points) and points[-1][0] == loss:
        return float(points[-1][1])
    return float("nan")


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values([c for c in ("step", "epoch") if c in frame])


def equal_loss_table(frame: pd.DataFrame, loss: float) -> pd.DataFrame:
    """Per run: test accuracy at clean training loss ``loss``."""
    keys = _keys(frame)
    rows = []
    for run, curve in _order(frame).groupby("run", sort=False):
        rows.append({**curve.iloc[0][keys].to_dict(), "test_acc_at_loss": accuracy_at_loss(curve, loss)})
    return pd.DataFrame(rows, columns=[*keys, "test_acc_at_loss"])


def final_gap(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run, at its last evaluation: clean training loss and accuracy, test accuracy, and the gaps."""
    last = _order(frame).groupby("run", sort=False).tail(1)
    out = last[[*_keys(frame), "train_eval_loss", "train_eval_acc", "test_loss", "test_acc"]].copy()
    out["acc_gap"] = out["train_eval_acc"] - out["test_acc"]
    out["loss_gap"] = out["test_loss"] - out["train_eval_loss"]
    return out.reset_index(drop=True)


def capacity(frame: pd.DataFrame, largest_only: bool = True) -> pd.DataFrame:
    """Per run: the lowest clean training loss reached and the best clean training accuracy, the paper's measure
    of how much a layout can fit. The paper reads it at the largest data size; ``largest_only=False`` keeps every
    size, to see how it changes with data."""
    keys = _keys(frame)
    if largest_only:
        frame = frame[frame["data_size"] == frame["data_size"].max()]
    out = frame.groupby("run", sort=False).agg(
        **{k: (k, "first") for k in keys if k != "run"},
        min_train_eval_loss=("train_eval_loss", "min"), max_train_eval_acc=("train_eval_acc", "max"))
    return out.reset_index()


def common_loss(frame: pd.DataFrame) -> float:
    """The lowest clean training loss that every run of ``frame`` reached (the largest of the runs' minima), so
    that all of them can be compared there; NaN when some run never got as low as another started."""
    by_run = frame.groupby("run")["train_eval_loss"]
    loss = by_run.min().max()
    return float(loss) if loss <= by_run.max().min() else float("nan")


def _groups(frame: pd.DataFrame):
    """(setting values, part) for each combination of settings: the runs that may be compared."""
    keys = settings(frame)
    for values, part in frame.groupby(keys, sort=True, dropna=False):
        yield dict(zip(keys, values)), part


def generalisation(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run: test accuracy at the common clean training loss of its settings (``common_loss``; less data is
    fitted further, so each data size gets its own), next to the final gap."""
    tables = []
    for _, part in _groups(frame):
        loss = common_loss(part)
        table = equal_loss_table(part, loss)
        table["at_loss"] = loss
        gaps = final_gap(part)
        tables.append(table.merge(gaps[["run", *gaps.columns[len(_keys(part)):]]], on="run"))
    return pd.concat(tables, ignore_index=True)


# --- statistics over seeds -----------------------------------------------------------------------------------
def summarise(per_run: pd.DataFrame, value: str, by: list[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation and count over seeds, per layout and settings."""
    by = by or ["layout", *settings(per_run)]
    return per_run.groupby(by, dropna=False)[value].agg(["mean", "std", "count"]).reset_index()


def mean_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its t interval over seeds (NaN bounds below two seeds)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=stats.sem(values)) if values.std() > 0 else (mean, mean)
    return mean, float(low), float(high)


def ranking(per_run: pd.DataFrame, value: str, higher_is_better: bool = True, level: float = 0.95) -> pd.DataFrame:
    """Layouts ranked by their mean ``value`` over seeds within each combination of settings, with a t interval
    of each mean and the number of seeds."""
    rows = []
    for setting, part in _groups(per_run):
        ranked = []
        for layout, values in part.groupby("layout")[value]:
            values = values.dropna()
            if len(values):
                mean, low, high = mean_interval(values, level)
                ranked.append({**setting, "layout": layout, "mean": mean, "low": low, "high": high, "n": len(values)})
        ranked.sort(key=lambda r: r["mean"], reverse=higher_is_better)
        rows += [{"rank": i + 1, **r} for i, r in enumerate(ranked)]
    return pd.DataFrame(rows, columns=["rank", *settings(per_run), "layout", "mean", "low", "high", "n"])


def paired_difference(a: pd.Series, b: pd.Series, level: float = 0.95) -> dict[str, Any]:
    """``a - b`` over the seeds both have (Series indexed by seed): n, the mean difference (the effect) with its
    paired t interval, and the two-sided paired t test's p value."""
    d = (a - b).dropna().to_numpy(dtype=float)
    n = len(d)
    out = {"n": n, "effect": float(d.mean()) if n else float("nan"), "low": float("nan"), "high": float("nan"),
           "p": float("nan"), "method": f"paired t over seeds, {level:.0%} interval"}
    if n < 2:
        return out
    if np.ptp(d) == 0:  # identical differences: no spread, the interval is the point
        return {**out, "low": out["effect"], "high": out["effect"], "p": 1.0 if out["effect"] == 0 else 0.0}
    test = stats.ttest_1samp(d, 0.0)
    interval = test.confidence_interval(level)
    return {**out, "low": float(interval.low), "high": float(interval.high), "p": float(test.pvalue)}


def verdict(rel: str, n: int, low: float, high: float) -> str:
    """``>``, ``≫`` hold when the interval of the difference is above zero, ``≥`` unless it is below, ``≈`` when
    it contains zero; an interval on the wrong side is "reversed". Below ``MIN_SEEDS`` seeds: no verdict."""
    if n == 0:
        return "missing"
    if n < MIN_SEEDS:
        return "too few seeds"
    if rel == "≈":
        return "holds" if low <= 0 <= high else "differs"
    if low > 0:
        return "holds"
    if high < 0:
        return "reversed"
    return "holds (within noise)" if rel == "≥" else "within noise"


# The paper's findings (Section 2.2): `a REL b` between neighbours, ViT_REL spelled as in our layouts.
PAPER_GENERALISATION = "C-C-C-C ≈ C-C-C-T ≥ C-C-T-T > C-T-T-T ≫ VIT_REL"
PAPER_CAPACITY = "C-C-T-T ≈ C-T-T-T > VIT_REL > C-C-C-T > C-C-C-C"
RELATIONS = ("≈", "≥", "≫", ">")


def parse_order(order: str) -> list[tuple[str, str, str]]:
    """``"A ≈ B > C"`` -> ``[("A", "≈", "B"), ("B", ">", "C")]``."""
    tokens = order.replace(">=", "≥").replace(">>", "≫").replace("~", "≈").split()
    if len(tokens) < 3 or len(tokens) % 2 == 0 or any(t not in RELATIONS for t in tokens[1::2]):
        raise ValueError(f"order {order!r} must alternate layouts and relations {' '.join(RELATIONS)}")
    return [(tokens[i], tokens[i + 1], tokens[i + 2]) for i in range(0, len(tokens) - 2, 2)]


def _by_seed(per_run: pd.DataFrame, layout: str, value: str) -> pd.Series:
    return per_run[per_run["layout"] == layout].groupby("seed")[value].first()


def _compare(per_run: pd.DataFrame, value: str, left: str, rel: str, right: str, higher_is_better: bool,
             level: float) -> dict[str, Any]:
    a, b = _by_seed(per_run, left, value), _by_seed(per_run, right, value)
    result = paired_difference(a, b, level) if higher_is_better else paired_difference(b, a, level)
    return {"pair": f"{left} {rel} {right}", **result, "verdict": verdict(rel, result["n"], result["low"], result["high"])}


def check_order(per_run: pd.DataFrame, value: str, order: str, higher_is_better: bool = True,
                level: float = 0.95) -> pd.DataFrame:
    """For each neighbouring pair of ``order``, within each combination of settings: the effect (the paired
    difference in the paper's direction) with its interval, n, the method and the verdict."""
    rows = []
    for setting, part in _groups(per_run):
        for left, rel, right in parse_order(order):
            rows.append({**setting, **_compare(part, value, left, rel, right, higher_is_better, level)})
    return pd.DataFrame(rows)


def check_order_at_equal_loss(frame: pd.DataFrame, order: str, level: float = 0.95) -> pd.DataFrame:
    """``check_order`` on test accuracy at equal clean training loss, each pair compared at the lowest loss
    both of its layouts reached: neighbours can be compared even where the whole set of curves never overlaps
    (a ViT that stays far above where the convnets end)."""
    rows = []
    for setting, part in _groups(frame):
        for left, rel, right in parse_order(order):
            pair = part[part["layout"].isin([left, right])]
            loss = common_loss(pair) if pair["layout"].nunique() == 2 else float("nan")
            per_run = equal_loss_table(pair, loss) if loss == loss else pd.DataFrame(columns=["layout", "seed", "test_acc_at_loss"])
            rows.append({**setting, "at_loss": loss,
                         **_compare(per_run, "test_acc_at_loss", left, rel, right, True, level)})
    return pd.DataFrame(rows)


def pairwise(per_run: pd.DataFrame, value: str, higher_is_better: bool = True, level: float = 0.95) -> pd.DataFrame:
    """Every pair of layouts within each combination of settings, paired by seed, as ``check_order`` with ``>``."""
    rows = []
    for setting, part in _groups(per_run):
        for left, right in combinations(sorted(part["layout"].unique()), 2):
            rows.append({**setting, **_compare(part, value, left, ">", right, higher_is_better, level)})
    return pd.DataFrame(rows)


def ordering_checks(frame: pd.DataFrame, level: float = 0.95) -> dict[str, pd.DataFrame]:
    """The paper's orderings checked on ``frame``, the tables the report prints and the notebook shows:
    generalisation at equal loss and by the final gap (every data size), capacity (the largest)."""
    gen = generalisation(frame)
    return {
        "generalisation at equal loss": check_order_at_equal_loss(frame, PAPER_GENERALISATION, level),
        "generalisation by final gap": check_order(gen, "acc_gap", PAPER_GENERALISATION, False, level),
        "capacity": check_order(capacity(frame), "min_train_eval_loss", PAPER_CAPACITY, False, level),
    }


__all__ = [
    "MIN_SEEDS", "PAPER_CAPACITY", "PAPER_GENERALISATION", "accuracy_at_loss", "capacity", "check_order",
    "check_order_at_equal_loss", "common_loss", "describe_model", "equal_loss_table", "final_gap", "from_project_root",
    "generalisation",
    "load_run", "load_runs", "load_source", "read_runs", "UnreadableRun", "load_wandb", "mean_interval", "ordering_checks", "paired_difference",
    "pairwise", "parse_order", "ranking", "settings", "summarise", "verdict",
]
