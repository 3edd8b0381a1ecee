"""Reading the study: one tidy table of every run's curves, and the paper's generalisation comparisons.

``load_runs(folder)`` reads any folder of run folders (a sweep's, ad-hoc ``ablate train`` runs under ``runs/``, a
hand-made selection) and ``load_wandb(project)`` a W&B project into a pandas frame with one row per run and
evaluation. A run is identified by its layout, data size and every other setting that differs between the runs
(a sweep's grid axes from its ``manifest.json``, and any config key that differs between runs the grid calls
alike, as when the base config was edited between two launches; otherwise every config key whose value differs): each such
setting is a column named by its config key (``model.init_args.model_args.rel_pos``), and every summary,
comparison, table and plot groups by all of them; only seeds are pooled. Metric columns are the logged names with
``/`` as ``_`` (``val/acc`` -> ``val_acc``): whatever the module logs is in the table.

Layouts are compared paired by seed (the seed fixes the data subset and the initialisation), a family of relations
at a time, with the verdicts, corrections and margins of ``ablations.verdicts``. Where a comparison is read matters
as much as how: equal-loss accuracy is read at a loss every compared run reaches after its warm-up and that no
unconverged run sets (``comparison_loss``), four ways (``VARIANTS``); capacity only between converged runs.
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

from lightning_modules import init_from, run_folder
from lightning_modules.backbones import BUDGETS, MODELS

from .identity import MISSING, affects_result, default
from .sweep.chain import short
from .verdicts import ALPHA, KINDS, MARGINS, Relation, decide, format_seeds, image_variance, parse_margins, seeds_needed

IDENTITY = ["run", "layout", "model", "budget", "data_size"]  # then the setting columns, then RUN_FACTS
RUN_FACTS = ["seed", "params", "flops", "wall_time", "warmup_steps", "target", "target_reached", "epoch", "step",
             "source"]  # source: what the run started from (``recorded_source``), None from random weights
TOP_LEVEL_SETTINGS = ("target_loss", "eval_every_n_steps")  # `ablate train` options outside model/data/trainer
# the result-affecting config keys that other columns hold (or facts a run records, not settings); what does not
# affect a result at all is ``identity.NOT_RESULT``, the definition the run hash, run ids and resume check share
SHOWN_APART = ("params", "flops", "seed_everything", "data.init_args.seed", "data.init_args.train_fraction",
               "data.init_args.train_samples", "model.init_args.model", "layout")


def describe_model(name: str) -> tuple[str, str | None]:
    """(layout, budget) of a registry name or a layout string: ``cctt_tiny -> ("C-C-T-T", "tiny")``."""
    entry = MODELS.get(name.lower())
    if entry is None:
        return name, None
    budget = name.rsplit("_", 1)[-1] if name.rsplit("_", 1)[-1] in BUDGETS else None
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


def recorded_source(config: dict, summary: dict | None) -> str | None:
    """What a run started from (None: random weights): the run folder its summary's ``init_from`` record, else its
    config's ``init_from``, names (``init_from.recorded_run_dir``, the rules ``ablate train`` resolves a source by),
    else the config's ``init_from`` as given (a checkpoint file outside a run, a timm source)."""
    given = ((config.get("model") or {}).get("init_args") or {}).get("init_from")
    record = (summary or {}).get("init_from")
    run = init_from.recorded_run_dir(record) if isinstance(record, dict) else None
    run = run or init_from.recorded_run_dir(given)
    return str(run or given or "") or None


def _source_folder(source: str, run_dir: Path) -> Path | None:
    """The source's run folder on this disk: as recorded, else found from any folder above the fine-tuning run as
    its last parts (``SWEEP/RUN``; a relative path whole, also from the project root): runs copied or moved
    together still link. None when no such run folder exists."""
    path = init_from.recorded_run_dir(source)
    if path is None:
        return None
    spellings = [*([] if path.is_absolute() else [path]), Path(*path.parts[-2:])]
    tries = [path, PROJECT_ROOT / path, *(base / p for base in Path(run_dir).resolve().parents for p in spellings)]
    return next((p for p in tries if run_folder.is_run(p)), None)


def _flat_config(config: dict) -> dict[str, Any]:
    """``flatten``, with ``init_from`` as the folder its source runs live in (the pre-training sweep, and the
    checkpoint where it is not the runs' last), so that runs fine-tuned from one sweep share the setting while runs
    from scratch, from another sweep or from other checkpoints differ by it."""
    flat = flatten(config)
    source = flat.get(init_from.OPTION)
    run = init_from.recorded_run_dir(source) if source else None
    if run is not None:
        name = Path(str(source)).name  # a file in the run's checkpoints/: its last.ckpt is the run folder's own
        whole = run == Path(str(source).strip()).expanduser() or name == run_folder.LAST_CHECKPOINT
        other = "" if whole else f" ({name})"
        flat[init_from.OPTION] = f"{run.parent.name}/{other}"
    return flat


def _is_setting(key: str) -> bool:
    return affects_result(key) and key not in SHOWN_APART


def _with_defaults(parts: list[tuple[dict, dict, Any]]) -> list[tuple[dict, dict, Any]]:
    """Each run's ``(identity, flat config, rows)`` with the config keys other runs name filled in at their
    defaults: a config written before an option existed had the option's default (``identity.default``), so it is
    no setting that tells runs apart."""
    keys = {k for _, f, _ in parts for k in f if _is_setting(k)}
    out = []
    for run, f, rows in parts:
        filled = dict(f)
        for key in keys - f.keys():
            value = default(key, f)
            if value is not MISSING:
                filled[key] = json.dumps(value, default=str) if isinstance(value, (list, tuple)) else value
        out.append((run, filled, rows))
    return out


def settings(frame: pd.DataFrame) -> list[str]:
    """The columns besides layout that tell runs apart, the seed excepted: data size, then every varying setting
    (and the model name where one layout comes in several models)."""
    extra = [c for c in frame.columns if "." in c or c in TOP_LEVEL_SETTINGS]
    several = "model" in frame and frame.groupby("layout")["model"].nunique().max() > 1
    return ["data_size", *(["model"] if several else []), *extra]


def _run_identity(name: str, run_dir: str, config: dict, summary: dict | None, rows: pd.DataFrame) -> dict:
    """A run's identity and the facts a comparison needs about it: where its warm-up ends (the first epoch's last
    step times ``warmup_epochs``), its target loss and whether a clean evaluation reached it."""
    model = config["model"]["init_args"]["model"]
    layout, budget = describe_model(model)
    budget = budget or config["model"]["init_args"].get("budget")  # a layout sized by the matcher
    data = config["data"]["init_args"]
    epoch_ends = rows["step"][rows["train/loss"].notna()] if "train/loss" in rows else pd.Series(dtype=float)
    per_epoch = float(epoch_ends.iloc[0]) if len(epoch_ends) else float("nan")
    target = config.get("target_loss")
    losses = rows["train_eval/loss"].dropna() if "train_eval/loss" in rows else pd.Series(dtype=float)
    return {"run": name, "run_dir": run_dir, "layout": layout, "model": model, "budget": budget,
            "data_size": data.get("train_samples") or data["train_fraction"], "seed": config.get("seed_everything"),
            "params": (summary or {}).get("params", config.get("params")),
            "flops": (summary or {}).get("flops", config.get("flops")),
            "wall_time": (summary or {}).get("wall_time"),
            "warmup_steps": per_epoch * float(config["model"]["init_args"].get("warmup_epochs", 1.0)),
            "target": float("nan") if target is None else float(target),
            "target_reached": None if target is None else bool((losses <= target).any()),
            "source": recorded_source(config, summary)}


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
    predictions = {identity["run"]: saved for identity, _, _ in parts
                   if (saved := identity.pop("predictions", None)) is not None}
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
    frame = frame.drop(columns="run_dir")
    frame.attrs["predictions"] = predictions
    return frame


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
    identity = _run_identity(run_dir.name, str(run_dir), config, summary, rows)
    identity["predictions"] = run_folder.read_predictions(run_dir)
    if identity["source"] is not None:  # found from this run's own place, so a copied tree still links
        found = _source_folder(identity["source"], run_dir)
        identity["source"] = str(found) if found is not None else identity["source"]
    return identity, _flat_config(config), rows


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
    parts = _with_defaults(parts)
    manifest = run_folder.read_manifest(folder)
    if manifest is not None:
        axes = [flatten(r["axes"]) for r in manifest["runs"]]
        grid_keys = [name for k, v in manifest["grid"].items() if not isinstance(v[0], dict) for name in k.split(",")]
        keys = [k for k in _varying(axes) + grid_keys if _is_setting(k)]
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
    from lightning_modules.wandb_run import explained, public_api

    api = public_api() if api is None else api  # no key, a refused key, W&B unreachable: one line each
    with explained(project):  # a missing project, a refused key: one line
        found = list(api.runs(project, filters=filters))
    parts = []
    for run in found:
        if run.state != "finished":
            continue
        history = pd.DataFrame([row for row in run.scan_history() if row.get("trainer/global_step") is not None])
        if history.empty:
            continue
        rows = history.groupby("trainer/global_step", as_index=False, sort=True).last()
        rows["step"] = rows.pop("trainer/global_step")
        rows = rows.drop(columns=[c for c in rows.columns if c.startswith("_")])
        config = dict(run.config)
        runtime = dict(run.summary).get("_runtime")  # W&B's own clock, from its start to its finish
        identity = _run_identity(run.name, f"{project}/{run.id}", config, {"wall_time": runtime}, rows)
        identity["predictions"] = _wandb_predictions(run)
        parts.append((identity, _flat_config(config), rows))
    parts = _with_defaults(parts)
    return _assemble(parts, _varying([flat for _, flat, _ in parts]), f"W&B project {project!r}")


def _wandb_predictions(run) -> dict | None:
    """A W&B run's per-image test predictions, where the run uploaded them (``ablate train --wandb.enabled``)."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as folder:
            run.file(run_folder.PREDICTIONS).download(root=folder, replace=True).close()
            return run_folder.read_predictions(Path(folder))
    except Exception:  # noqa: BLE001  no file, or an API that does not serve it: the comparison goes without
        return None


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


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values([c for c in ("step", "epoch") if c in frame])


def _first_at_or_below(losses: np.ndarray, loss: float) -> int | None:
    below = np.flatnonzero(losses <= loss)
    return int(below[0]) if len(below) else None


def accuracy_at_loss(curve: pd.DataFrame, loss: float, loss_col: str = "train_eval_loss", acc_col: str = "test_acc",
                     scale: str = "log", drop: str | None = None) -> float:
    """Test accuracy where the run's clean training loss first crossed ``loss``, interpolated between the two
    evaluations around the crossing: linearly in log loss (``scale="log"``; losses fall geometrically) or in loss
    (``"linear"``); NaN when the run never reached it. ``drop`` leaves out the evaluation just ``"above"`` or just
    at-or-``"below"`` the loss first, to see whether the reading hangs on one evaluation. "If two models reach the
    same training loss, the one with higher test accuracy generalises better." """
    points = _order(curve)[[loss_col, acc_col]].dropna().to_numpy(dtype=float)
    if drop is not None:
        first = _first_at_or_below(points[:, 0], loss)
        if first is not None:
            gone = first if drop == "below" else first - 1
            if gone >= 0:
                points = np.delete(points, gone, axis=0)
    x = np.log(np.maximum(points[:, 0], 1e-12)) if scale == "log" else points[:, 0]
    at = np.log(max(loss, 1e-12)) if scale == "log" else loss
    for (l0, a0, x0), (l1, a1, x1) in zip(np.c_[points, x][:-1], np.c_[points, x][1:]):
        if min(l0, l1) <= loss <= max(l0, l1):
            return float(a0 if x1 == x0 else a0 + (a1 - a0) * (at - x0) / (x1 - x0))
    if len(points) and points[-1][0] == loss:
        return float(points[-1][1])
    return float("nan")


def equal_loss_table(frame: pd.DataFrame, loss: float, scale: str = "log") -> pd.DataFrame:
    """Per run: test accuracy at clean training loss ``loss``."""
    keys = _keys(frame)
    rows = []
    for run, curve in _order(frame).groupby("run", sort=False):
        rows.append({**curve.iloc[0][keys].to_dict(), "test_acc_at_loss": accuracy_at_loss(curve, loss, scale=scale)})
    return pd.DataFrame(rows, columns=[*keys, "test_acc_at_loss"])


def run_facts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run, what decides where it can be compared: the lowest clean training loss it reached (``floor``), the
    step of its warm-up's end, whether it converged (``lightning_modules.curves.convergence``: the rule is in
    ``convergence_rule``) and, for a run with a target loss, whether it reached it."""
    from lightning_modules.curves import convergence

    keys, rows = _keys(frame), []
    for run, curve in _order(frame).groupby("run", sort=False):
        first = curve.iloc[0]
        clean = curve[["step", "train_eval_loss"]].dropna()
        stopped = pd.notna(first["target"])
        fit = None if stopped or clean.empty else convergence(clean["step"].to_numpy(), clean["train_eval_loss"].to_numpy(),
                                                              float(curve["step"].max()))
        rows.append({**first[keys].to_dict(), "floor": float(clean["train_eval_loss"].min()),
                     "warmup_steps": first["warmup_steps"], "target": first["target"],
                     "target_reached": first["target_reached"], "last_step": float(curve["step"].max()),
                     "converged": None if fit is None or fit["converged"] is None else bool(fit["converged"]),
                     "rel_change": None if fit is None else fit["rel_change"],
                     "convergence_rule": None if fit is None else fit["rule"]})
    return pd.DataFrame(rows)


def final_gap(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run, at its last evaluation: clean training loss and accuracy, test accuracy, and the gaps."""
    last = _order(frame).groupby("run", sort=False).tail(1)
    out = last[[*_keys(frame), "train_eval_loss", "train_eval_acc", "test_loss", "test_acc"]].copy()
    out["acc_gap"] = out["train_eval_acc"] - out["test_acc"]
    out["loss_gap"] = out["test_loss"] - out["train_eval_loss"]
    return out.reset_index(drop=True)


def _unconverged(facts: pd.Series) -> str | None:
    """Why a run gives no capacity reading, or None."""
    if pd.notna(facts["target"]):
        return "runs stopped at a target loss: capacity needs runs trained to their budget"
    if facts["converged"] is None:
        return (f"fit within the training budget: {facts['layout']} seed {facts['seed']} has too few evaluations to "
                "tell whether it converged")
    if not facts["converged"]:
        return (f"fit within the training budget: {facts['layout']} seed {facts['seed']} did not converge "
                f"({facts['convergence_rule']}; it fell {facts['rel_change']:.0%})")
    return None


def capacity(frame: pd.DataFrame, largest_only: bool = True) -> pd.DataFrame:
    """Per run: the lowest clean training loss reached (and its log, where capacities are compared: ratios, and
    intervals that never go below zero loss), the best clean training accuracy, and whether the run converged;
    the paper's measure of how much a layout can fit. The paper reads it at the largest data size;
    ``largest_only=False`` keeps every size, to see how it changes with data."""
    keys = _keys(frame)
    if largest_only:
        frame = frame[frame["data_size"] == frame["data_size"].max()]
    out = frame.groupby("run", sort=False).agg(
        **{k: (k, "first") for k in keys if k != "run"},
        min_train_eval_loss=("train_eval_loss", "min"), max_train_eval_acc=("train_eval_acc", "max")).reset_index()
    out["log_min_train_eval_loss"] = np.log(out["min_train_eval_loss"])
    facts = run_facts(frame).set_index("run")
    out["converged"] = out["run"].map(facts["converged"])
    out["not_comparable"] = out["run"].map({run: _unconverged(row) for run, row in facts.iterrows()})
    return out


def comparison_loss(facts: pd.DataFrame) -> float:
    """The clean training loss at which runs are compared: their target where they were stopped at one, else the
    highest floor among the runs that converged (an unconverged run, still falling, never sets it); NaN when no
    run converged."""
    targets = facts["target"].dropna()
    if len(targets):
        return float(targets.max())
    settled = facts.loc[facts["converged"] == True, "floor"]  # noqa: E712  (None: not known)
    return float(settled.max()) if len(settled) else float("nan")


def _not_comparable_at(facts: pd.DataFrame, curves: pd.DataFrame, loss: float) -> dict[str, str]:
    """``{run: why}`` for each run that cannot be read at ``loss``: it never reaches it, or reaches it before its
    warm-up ends (the learning rate still rising: a reading of the schedule, not of the layout)."""
    if loss != loss:
        return {run: "no run converged within the training budget, so there is no loss every run is known to "
                     "settle at (an unconverged run never sets it)" for run in facts["run"]}
    why = {}
    for _, row in facts.iterrows():
        curve = _order(curves[curves["run"] == row["run"]])[["step", "train_eval_loss"]].dropna()
        first = _first_at_or_below(curve["train_eval_loss"].to_numpy(), loss)
        if first is None:
            reason = "did not reach the target loss" if pd.notna(row["target"]) else "never reaches it"
            why[row["run"]] = f"{row['layout']} {reason} ({loss:.3g}) within the budget"
        elif curve["step"].iloc[first] <= row["warmup_steps"]:
            why[row["run"]] = (f"{row['layout']} reaches {loss:.3g} during warm-up (step "
                               f"{curve['step'].iloc[first]:.0f} <= {row['warmup_steps']:.0f})")
    return why


def _equal_loss_values(part: pd.DataFrame, facts: pd.DataFrame, loss: float, scale: str = "log",
                       drop: str | None = None) -> pd.DataFrame:
    """Per run of ``part``: test accuracy at ``loss`` (a stopped run's final one: read where it stopped, with no
    interpolation) and, where it cannot be read there, why."""
    why = _not_comparable_at(facts, part, loss)
    keys, rows = _keys(part), []
    for _, row in facts.iterrows():
        curve = part[part["run"] == row["run"]]
        read_at = loss  # a stopped run is read at the loss of the evaluation it stopped at
        if row["run"] in why:
            value = read_at = float("nan")
        elif pd.notna(row["target"]):
            last = _order(curve)[["train_eval_loss", "test_acc"]].dropna().iloc[-1]
            value, read_at = float(last["test_acc"]), float(last["train_eval_loss"])
        else:
            value = accuracy_at_loss(curve, loss, scale=scale, drop=drop)
        rows.append({**row[keys].to_dict(), "test_acc_at_loss": value, "at_loss": loss, "read_at": read_at,
                     "not_comparable": why.get(row["run"])})
    return pd.DataFrame(rows)


def _groups(frame: pd.DataFrame):
    """(setting values, part) for each combination of settings: the runs that may be compared."""
    keys = settings(frame)
    for values, part in frame.groupby(keys, sort=True, dropna=False):
        yield dict(zip(keys, values)), part


def generalisation(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run: test accuracy at the comparison loss of its settings (``comparison_loss``; less data is fitted
    further, so each data size gets its own), why it cannot be read there if so, next to the final gap."""
    tables = []
    for _, part in _groups(frame):
        facts = run_facts(part)
        table = _equal_loss_values(part, facts, comparison_loss(facts))
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
    of each mean and the number of seeds. Descriptive: the verdicts are in the comparisons."""
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


# The paper's findings (Section 2.2): `a REL b` between neighbours, ViT_REL spelled as in our layouts.
PAPER_GENERALISATION = "C-C-C-C ≈ C-C-C-T ≥ C-C-T-T > C-T-T-T ≫ VIT_REL"
PAPER_CAPACITY = "C-C-T-T ≈ C-T-T-T > VIT_REL > C-C-C-T > C-C-C-C"
RELATIONS = ("≈", "≥", "≫", ">")
# The evaluation-point choices an equal-loss reading must not depend on (interpolation; one evaluation dropped)
VARIANTS = {"log": {"scale": "log"}, "linear": {"scale": "linear"},
            "drop above": {"scale": "log", "drop": "above"}, "drop below": {"scale": "log", "drop": "below"}}


def parse_order(order: str) -> list[tuple[str, str, str]]:
    """``"A ≈ B > C"`` -> ``[("A", "≈", "B"), ("B", ">", "C")]``."""
    tokens = order.replace(">=", "≥").replace(">>", "≫").replace("~", "≈").split()
    if len(tokens) < 3 or len(tokens) % 2 == 0 or any(t not in RELATIONS for t in tokens[1::2]):
        raise ValueError(f"order {order!r} must alternate layouts and relations {' '.join(RELATIONS)}")
    return [(tokens[i], tokens[i + 1], tokens[i + 2]) for i in range(0, len(tokens) - 2, 2)]


def _test_set_share(predictions: dict | None, runs_a: list[str], runs_b: list[str], scale: float) -> float | None:
    """``verdicts.image_variance`` of runs paired by seed (in the metric's units), or None without predictions for
    every run or on test sets that differ."""
    saved = [(predictions or {}).get(run) for run in (*runs_a, *runs_b)]
    if any(s is None for s in saved) or len({np.asarray(s["target"]).tobytes() for s in saved}) != 1:
        return None
    correct = np.stack([np.asarray(s["pred"]) == np.asarray(s["target"]) for s in saved])
    return image_variance(correct[:len(runs_a)], correct[len(runs_a):]) * scale * scale


def _relation(part: pd.DataFrame, value: str, left: str, rel: str, right: str, higher_is_better: bool,
              scale: float, predictions: dict | None) -> Relation:
    """One relation from a per-run table (``run``, ``layout``, ``seed``, ``value``, optional ``not_comparable``):
    paired by the seeds both layouts have, A − B signed so that positive is A better, in the metric's units."""
    a = part[part["layout"] == left].drop_duplicates("seed").set_index("seed")
    b = part[part["layout"] == right].drop_duplicates("seed").set_index("seed")
    seeds = a.index.intersection(b.index)
    blocked = [] if "not_comparable" not in part else [
        w for w in pd.concat([a.loc[seeds, "not_comparable"], b.loc[seeds, "not_comparable"]]).dropna().unique()]
    if not len(seeds):
        missing = [name for name, side in ((left, a), (right, b)) if side.empty]
        blocked = [f"no runs of {', '.join(missing)}" if missing else "no seed that both layouts share"]
    sign = 1.0 if higher_is_better else -1.0
    diffs = sign * scale * (a.loc[seeds, value].to_numpy(dtype=float) - b.loc[seeds, value].to_numpy(dtype=float))
    if not blocked and np.isnan(diffs).any():
        blocked = ["a value is missing"]
    share = None
    if predictions is not None and not blocked:
        share = _test_set_share(predictions, list(a.loc[seeds, "run"]), list(b.loc[seeds, "run"]), scale)
    return Relation(left, rel, right, diffs, share, "; ".join(blocked) or None)


def _method(row: dict, kind: str, test_set: str) -> str:
    units = KINDS[kind][1]
    return (f"paired t over {row['n']} seed(s){test_set}; Holm over {row['family']} relation(s); "
            f"margin {row['margin']:g} {units}")


def _decided(relations: list[Relation], kind: str, margin: float, test_set: str) -> list[dict]:
    rows = decide(relations, margin)
    for relation, row in zip(relations, rows):
        row["seeds_needed"] = ""
        if row["verdict"] == "not comparable":  # no test was made: no method to name
            row["method"] = f"none (margin {margin:g} {KINDS[kind][1]})"
            continue
        if row["verdict"] == "inconclusive":
            need = seeds_needed(relation.diffs, margin, relation.image_var, ALPHA / max(row["family"], 1))
            row["seeds_needed"] = format_seeds(need)
        share = " + the test set's sampling noise" if relation.image_var is not None else test_set
        row["method"] = _method(row, kind, share)
    return rows


CHECK_COLUMNS = ["pair", "n", "effect", "low", "high", "p_holm", "verdict", "paper", "seeds_needed", "why", "method"]


def _family_table(setting: dict, rows: list[dict], extra: list[dict] | None = None) -> list[dict]:
    extra = extra or [{} for _ in rows]
    return [{**setting, **more, **{k: row[k] for k in CHECK_COLUMNS}, "margin": row["margin"], "sd": row["sd"],
             "image_var": row["image_var"], "family": row["family"]} for row, more in zip(rows, extra)]


def check_order(per_run: pd.DataFrame, value: str, order: str, higher_is_better: bool = True,
                kind: str = "accuracy", margin: float | None = None, predictions: dict | None = None) -> pd.DataFrame:
    """Each neighbouring relation of ``order`` as one family per combination of settings: n, the effect (A − B in
    the paper's direction, in points for accuracy), its 95% interval, the Holm-adjusted p, the verdict, whether
    the paper's relation is supported, and for an inconclusive one the seeds that would resolve it. A run with a
    ``not_comparable`` reason makes its relations ``not comparable``. ``predictions`` (per-image, final
    evaluation) add the test set's sampling noise to every relation they cover."""
    scale, margin = KINDS[kind][0], MARGINS[kind] if margin is None else margin
    out = []
    for setting, part in _groups(per_run):
        relations = [_relation(part, value, left, rel, right, higher_is_better, scale, predictions)
                     for left, rel, right in parse_order(order)]
        out += _family_table(setting, _decided(relations, kind, margin, ""))
    return pd.DataFrame(out)


def pairwise(per_run: pd.DataFrame, value: str, higher_is_better: bool = True, kind: str = "accuracy",
             margin: float | None = None, predictions: dict | None = None) -> pd.DataFrame:
    """Every pair of layouts within each combination of settings, as ``check_order`` (Holm over all the pairs of
    one combination): exploratory, no hypothesis named beforehand."""
    scale, margin = KINDS[kind][0], MARGINS[kind] if margin is None else margin
    out = []
    for setting, part in _groups(per_run):
        relations = [_relation(part, value, left, ">", right, higher_is_better, scale, predictions)
                     for left, right in combinations(sorted(part["layout"].unique()), 2)]
        rows = _decided(relations, kind, margin, "")
        for row in rows:
            row["pair"] = row["pair"].replace(" > ", " vs ")
        out += [{k: v for k, v in r.items() if k != "paper"} for r in _family_table(setting, rows)]
    return pd.DataFrame(out)


def check_order_at_equal_loss(frame: pd.DataFrame, order: str, margin: float | None = None,
                              predictions: dict | None = None) -> pd.DataFrame:
    """``check_order`` on test accuracy at equal clean training loss, one family per combination of settings.
    Each pair is read at its own comparison loss (``comparison_loss`` of its runs), so neighbours can be compared
    where the whole set never can. A reading between evaluations is made four ways (``VARIANTS``): a relation
    whose verdict changes with them is ``not robust``. Runs stopped at a target loss are read where they stopped
    (no interpolation), with the test set's noise where their predictions were kept."""
    margin = MARGINS["accuracy"] if margin is None else margin
    out = []
    for setting, part in _groups(frame):
        facts = run_facts(part)
        pairs = parse_order(order)
        losses, readings = [], {name: [] for name in VARIANTS}
        stopped = facts["target"].notna().any()
        for left, rel, right in pairs:
            pair_facts = facts[facts["layout"].isin([left, right])]
            loss = comparison_loss(pair_facts) if len(pair_facts) else float("nan")
            losses.append(loss)
            for name, variant in (VARIANTS.items() if not stopped else [("log", {})]):
                values = _equal_loss_values(part, pair_facts, loss, **variant) if len(pair_facts) else \
                    pd.DataFrame(columns=["run", "layout", "seed", "test_acc_at_loss", "read_at", "not_comparable"])
                readings[name].append(_relation(values, "test_acc_at_loss", left, rel, right, True, 100.0,
                                                predictions if stopped else None))
        note = "" if stopped else ", reading between evaluations (test-set noise not counted)"
        rows = _decided(readings["log"], "accuracy", margin, note)
        if not stopped:
            others = {name: decide(readings[name], margin) for name in VARIANTS if name != "log"}
            for i, row in enumerate(rows):
                seen = {"log": row["verdict"], **{name: other[i]["verdict"] for name, other in others.items()}}
                if row["verdict"] != "not comparable" and len(set(seen.values())) > 1:
                    row["why"] = "; ".join(f"{name}: {v}" for name, v in seen.items())
                    row["verdict"], row["paper"], row["seeds_needed"] = "not robust", "not shown", ""
        out += _family_table(setting, rows, [{"at_loss": loss} for loss in losses])
    return pd.DataFrame(out)


def ordering_checks(frame: pd.DataFrame, margins: dict[str, float] | None = None) -> dict[str, pd.DataFrame]:
    """The paper's orderings checked on ``frame``, each a family per combination of settings (the tables the
    report prints and the notebook shows): generalisation at equal loss and by the final gap (every data size),
    capacity in log loss (the largest)."""
    margins = parse_margins(margins)
    predictions = frame.attrs.get("predictions") or None
    gen = generalisation(frame)
    return {
        "generalisation at equal loss": check_order_at_equal_loss(frame, PAPER_GENERALISATION, margins["accuracy"],
                                                                  predictions),
        "generalisation by final gap": check_order(gen, "acc_gap", PAPER_GENERALISATION, False, "accuracy",
                                                   margins["accuracy"], predictions),
        "capacity": check_order(capacity(frame), "log_min_train_eval_loss", PAPER_CAPACITY, False, "log_loss",
                                margins["log_loss"]),
    }


# --- transfer: each fine-tuned run beside the run it started from --------------------------------------------------
# The paper's transfer finding (Table 2): C-C-T-T and C-T-T-T reach the same pre-training precision on JFT (34.40
# vs 34.36), yet C-C-T-T fine-tunes better on ImageNet-1K (82.39 vs 81.78 at 224).
PAPER_TRANSFER = "C-C-T-T > C-T-T-T"
TRANSFER_COLUMNS = ["source_run", "source_seed", "pretrain_loss", "log_pretrain_loss", "pretrain_acc",
                    "finetune_acc", "source", "not_comparable"]


def _pretraining(source: str) -> dict:
    """A source run's pre-training record at its last evaluation, or ``why`` there is none to compare."""
    path = init_from.recorded_run_dir(source)
    if path is None:
        return {"why": f"source {source} is not a run folder: no pre-training record"}
    if not run_folder.is_run(path):
        return {"why": f"source {source} not found"}
    try:
        part = _read_run(path, completed_only=True)
    except UnreadableRun as err:
        return {"why": f"source {source} unreadable: {err}"}
    if part is None:
        return {"why": f"source {source} is not completed ({run_folder.summary_status(path) or 'no summary'})"}
    identity, _, rows = part
    last = lambda name: float(rows[name].dropna().iloc[-1]) if name in rows and rows[name].notna().any() else np.nan  # noqa: E731
    return {"why": None, "name": short(path), "layout": identity["layout"],
            "seed": identity["seed"], "loss": last("train_eval/loss"), "acc": last("test/acc")}


def transfer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per fine-tuned run (a run with a ``source``): its source run and that run's pre-training fit at its last
    evaluation (clean training loss, and test accuracy: the paper's pre-training precision) beside the fine-tuned
    final test accuracy. A source that cannot be read (not found, not completed, unreadable, no run folder, another
    layout) keeps its row, NaN pre-training values and the reason in ``not_comparable``: never left out."""
    keys = _keys(frame)
    if "source" not in frame or frame["source"].isna().all():
        return pd.DataFrame(columns=[*keys, *TRANSFER_COLUMNS])
    sources: dict[str, dict] = {}
    rows = []
    for _, curve in _order(frame[frame["source"].notna()]).groupby("run", sort=False):
        first, source = curve.iloc[0], str(curve["source"].iloc[0])
        pre = sources.setdefault(source, _pretraining(source))
        why = pre["why"]
        if why is None and pre["layout"] != first["layout"]:
            why = f"source {pre['name']} is {pre['layout']}, not {first['layout']}"
        accs = curve["test_acc"].dropna()
        rows.append({**first[keys].to_dict(), "source_run": pre.get("name"), "source_seed": pre.get("seed"),
                     "pretrain_loss": pre.get("loss", np.nan), "log_pretrain_loss": np.log(pre.get("loss", np.nan)),
                     "pretrain_acc": pre.get("acc", np.nan),
                     "finetune_acc": float(accs.iloc[-1]) if len(accs) else np.nan, "source": source,
                     "not_comparable": why})
    return pd.DataFrame(rows, columns=[*keys, *TRANSFER_COLUMNS])


def source_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """The sources of a ``transfer_table`` as the pre-training families pair them: each distinct source once per
    combination of settings (several fine-tuned runs may start from one: counting it per run would repeat one
    difference n times), keyed by the source's own path (``run``: its predictions' key) and seed. A source that
    could not be read keeps its fine-tuned run's seed, and sorts first, so that its reason still blocks its pairs."""
    pre = table.assign(run=table["source"], seed=table["source_seed"].where(table["source_seed"].notna(),
                                                                            table["seed"]))
    pre = pre.sort_values("not_comparable", na_position="last", kind="stable")
    return pre.drop_duplicates([*settings(table), "source"]).sort_index()


def other_seed_sources(table: pd.DataFrame) -> pd.DataFrame:
    """The fine-tuned runs of a ``transfer_table`` whose source has another seed than their own (a chained sweep
    matched without the seed): their transfer is paired by their own seed, their source's fit by the source's."""
    read = table[table["source_seed"].notna()]
    return read[read["source_seed"].astype(float) != read["seed"].astype(float)]


def _fit_reading(acc: dict, loss: dict) -> str:
    """Whether the two pre-training fits of a pair are shown equal, by test accuracy and clean training loss."""
    if acc["verdict"] == loss["verdict"] == "equivalent":
        return "equivalent"
    if "not comparable" in (acc["verdict"], loss["verdict"]):
        return f"not comparable: {acc['why'] or loss['why']}"
    return f"not shown equivalent (accuracy {acc['verdict']}, loss {loss['verdict']})"


def _transfer_reading(verdict: str, fit: str) -> str:
    if verdict in ("A better", "B better"):
        return ("equal pre-training fit, different transfer" if fit == "equivalent" else
                "different transfer, but the pre-training fits are not shown equivalent")
    if verdict == "equivalent":
        return "equal transfer"
    return f"transfer {verdict}"


def transfer_checks(frame: pd.DataFrame, margins: dict[str, float] | None = None,
                    order: str = PAPER_TRANSFER) -> dict[str, pd.DataFrame]:
    """``transfer_verdicts`` of the fine-tuned runs of ``frame`` linked to their sources (``transfer_table``), with
    the table itself as ``linked runs``; empty without fine-tuned runs."""
    table = transfer_table(frame)
    if table.empty:
        return {}
    read = table.loc[table["not_comparable"].isna(), "source"].unique()
    sources = {s: saved for s in read if (saved := run_folder.read_predictions(Path(s))) is not None}
    return {"linked runs": table,
            **transfer_verdicts(table, margins, order, frame.attrs.get("predictions") or None, sources or None)}


def transfer_verdicts(table: pd.DataFrame, margins: dict[str, float] | None = None, order: str = PAPER_TRANSFER,
                      predictions: dict | None = None, source_predictions: dict | None = None) -> dict[str, pd.DataFrame]:
    """The transfer comparison on a ``transfer_table``: ``order``'s relations on the fine-tuned test accuracy, and
    the same pairs' pre-training fits tested for equivalence (TOST) by the source's test accuracy and by its clean
    training loss (log units), each a family per combination of settings, paired by seed, Holm within the family.
    ``transfer`` carries both fits beside each verdict (``pre-training fit``, ``reading``): the paper's finding is
    an equal fit and a different transfer. A run whose source cannot be read makes its relations ``not
    comparable``, naming the source. ``predictions`` are the fine-tuned runs' (by run), ``source_predictions`` the
    sources' (by source): each adds the test set's sampling noise to the comparisons it covers. The transfer family
    pairs fine-tuned runs by their own seed; the pre-training families pair distinct sources by the source's seed
    (``source_pairs``), so n there counts source pairs, not the fine-tuned runs started from them. Every pair of
    layouts by fine-tuned accuracy (exploratory) follows where there is a pair ``order`` does not test."""
    margins = parse_margins(margins)
    equal = " ".join(f"{left} ≈ {right}" if i == 0 else f"≈ {right}"
                     for i, (left, _, right) in enumerate(parse_order(order)))
    pre = source_pairs(table)
    transfer = check_order(table, "finetune_acc", order, True, "accuracy", margins["accuracy"], predictions)
    acc = check_order(pre, "pretrain_acc", equal, True, "accuracy", margins["accuracy"], source_predictions)
    loss = check_order(pre, "log_pretrain_loss", equal, False, "log_loss", margins["log_loss"])
    transfer["pre-training fit"] = [_fit_reading(a, l) for a, l in zip(acc.to_dict("records"), loss.to_dict("records"))]
    transfer["reading"] = [_transfer_reading(v, f) for v, f in zip(transfer["verdict"], transfer["pre-training fit"])]
    out = {"transfer": transfer, "pre-training accuracy": acc, "pre-training loss": loss}
    tested = {frozenset((left, right)) for left, _, right in parse_order(order)}
    if any(frozenset(pair) not in tested for pair in combinations(sorted(table["layout"].unique()), 2)):
        # every pair of layouts, where there is one the test above did not make (two layouts: it is that test)
        out["exploratory: fine-tuned layout pairs"] = pairwise(table, "finetune_acc", margin=margins["accuracy"],
                                                               predictions=predictions)
    return out


__all__ = [
    "KINDS", "MARGINS", "PAPER_CAPACITY", "PAPER_GENERALISATION", "PAPER_TRANSFER", "VARIANTS", "accuracy_at_loss", "capacity",
    "check_order", "check_order_at_equal_loss", "comparison_loss", "describe_model", "equal_loss_table", "final_gap",
    "from_project_root", "generalisation", "load_run", "load_runs", "load_source", "load_wandb", "mean_interval",
    "ordering_checks", "other_seed_sources", "pairwise", "parse_margins", "parse_order", "ranking", "read_runs",
    "run_facts", "settings", "source_pairs", "summarise", "transfer_checks", "transfer_table", "transfer_verdicts",
    "UnreadableRun",
]
