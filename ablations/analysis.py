"""Reading the study: one tidy table of every run's curves, and the paper's generalisation comparisons.

``load_runs(folder)`` reads a sweep folder (or a single run folder) into a pandas frame with one row per run and
epoch. The analyses take that frame, whatever produced it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lightning_modules.backbones import MODELS

from .sweep import summary_status

COLUMNS = [
    "run", "layout", "model", "budget", "data_size", "seed", "params", "flops", "epoch", "step",
    "train_loss", "train_eval_loss", "train_eval_acc", "val_loss", "val_acc", "test_loss", "test_acc",
]
METRIC_NAMES = {  # metrics.csv column -> tidy column
    "train/loss": "train_loss", "train_eval/loss": "train_eval_loss", "train_eval/acc": "train_eval_acc",
    "val/loss": "val_loss", "val/acc": "val_acc", "test/loss": "test_loss", "test/acc": "test_acc",
}


def describe_model(name: str) -> tuple[str, str | None]:
    """(layout, budget) of a registry name or a layout string: ``cctt_tiny -> ("C-C-T-T", "tiny")``."""
    entry = MODELS.get(name.lower())
    if entry is None:
        return name, None
    budget = name.rsplit("_", 1)[-1] if name.rsplit("_", 1)[-1] in ("paper", "cifar", "tiny") else None
    return getattr(entry.config, "layout", name), budget


def _identity(name: str, config: dict, params: int | None, flops: int | None) -> dict:
    """The columns that say which run a row belongs to, from its resolved `ablate train` config."""
    model = config["model"]["init_args"]["model"]
    layout, budget = describe_model(model)
    budget = budget or config["model"]["init_args"].get("budget")  # a layout sized by the matcher
    data = config["data"]["init_args"]
    return {"run": name, "layout": layout, "model": model, "budget": budget,
            "data_size": data.get("train_samples") or data["train_fraction"], "seed": config.get("seed_everything"),
            "params": params, "flops": flops}


def _tidy(metrics: pd.DataFrame, identity: dict) -> pd.DataFrame:
    metrics = metrics.rename(columns=METRIC_NAMES)
    for key, value in identity.items():
        metrics[key] = value
    return metrics.reindex(columns=COLUMNS)


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """One run folder's curves, with its identity columns repeated on every row."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    identity = _identity(run_dir.name, config, summary.get("params"), summary.get("flops"))
    return _tidy(pd.read_csv(run_dir / "metrics.csv"), identity)


def load_wandb(project: str, api=None, filters: dict | None = None) -> pd.DataFrame:
    """Finished runs of a W&B project (logged by `ablate train --wandb.enabled true`), full histories through
    ``scan_history``, as the same frame ``load_runs`` gives. Epoch-level values logged in separate history rows
    are merged per epoch."""
    if api is None:
        import wandb

        api = wandb.Api()
    frames = []
    for run in api.runs(project, filters=filters):
        if run.state != "finished":
            continue
        history = pd.DataFrame([row for row in run.scan_history() if row.get("epoch") is not None])
        if history.empty:
            continue
        per_epoch = history.groupby("epoch", as_index=False).last()
        per_epoch["step"] = per_epoch.get("trainer/global_step")
        identity = _identity(run.name, run.config, run.config.get("params"), run.config.get("flops"))
        frames.append(_tidy(per_epoch, identity))
    if not frames:
        raise FileNotFoundError(f"no finished runs with epoch metrics in W&B project {project!r}")
    return pd.concat(frames, ignore_index=True)


def load_runs(folder: str | Path, completed_only: bool = True) -> pd.DataFrame:
    """Every run under a sweep folder (or the one run folder given) as one tidy frame."""
    folder = Path(folder)
    run_dirs = [folder] if (folder / "metrics.csv").exists() else sorted(p for p in folder.iterdir() if (p / "metrics.csv").exists())
    frames = []
    for run_dir in run_dirs:
        status = summary_status(run_dir)  # None when missing or unreadable: never counted as completed
        if completed_only and status != "completed":
            continue
        frames.append(load_run(run_dir))
    if not frames:
        raise FileNotFoundError(f"no {'completed ' if completed_only else ''}runs with metrics.csv under {folder}")
    return pd.concat(frames, ignore_index=True)


def load_source(source: str | Path, completed_only: bool = True) -> pd.DataFrame:
    """``wandb:ENTITY/PROJECT`` reads a W&B project, anything else a sweep or run folder."""
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


def accuracy_at_loss(curve: pd.DataFrame, loss: float, loss_col: str = "train_eval_loss",
                     acc_col: str = "test_acc") -> float:
    """Test accuracy where the run's clean training loss crossed ``loss``, linearly interpolated between the two
    epochs around the crossing; NaN when the run never reached it. "If two models reach the same training loss,
    the one with higher test accuracy generalises better."""
    points = curve[[loss_col, acc_col]].dropna().to_numpy()
    for (l0, a0), (l1, a1) in zip(points[:-1], points[1:]):
        if min(l0, l1) <= loss <= max(l0, l1):
            return float(a0 if l1 == l0 else a0 + (a1 - a0) * (loss - l0) / (l1 - l0))
    if len(points) and points[-1][0] == loss:
        return float(points[-1][1])
    return float("nan")


def equal_loss_table(frame: pd.DataFrame, loss: float) -> pd.DataFrame:
    """Per run: test accuracy at clean training loss ``loss``."""
    rows = []
    for run, curve in frame.sort_values("epoch").groupby("run", sort=False):
        first = curve.iloc[0]
        rows.append({"run": run, "layout": first["layout"], "data_size": first["data_size"], "seed": first["seed"],
                     "test_acc_at_loss": accuracy_at_loss(curve, loss)})
    return pd.DataFrame(rows)


def final_gap(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run, at its last epoch: clean training loss and accuracy, test accuracy, and the gaps."""
    last = frame.sort_values("epoch").groupby("run", sort=False).tail(1)
    out = last[["run", "layout", "data_size", "seed", "train_eval_loss", "train_eval_acc", "test_loss", "test_acc"]].copy()
    out["acc_gap"] = out["train_eval_acc"] - out["test_acc"]
    out["loss_gap"] = out["test_loss"] - out["train_eval_loss"]
    return out.reset_index(drop=True)


def capacity(frame: pd.DataFrame, largest_only: bool = True) -> pd.DataFrame:
    """Per run: the lowest clean training loss reached and the best clean training accuracy, the paper's measure
    of how much a layout can fit. The paper reads it at the largest data size; ``largest_only=False`` keeps every
    size, to see how it changes with data."""
    if largest_only:
        frame = frame[frame["data_size"] == frame["data_size"].max()]
    out = frame.groupby("run", sort=False).agg(
        layout=("layout", "first"), data_size=("data_size", "first"), seed=("seed", "first"),
        min_train_eval_loss=("train_eval_loss", "min"), max_train_eval_acc=("train_eval_acc", "max"),
    )
    return out.reset_index()


def common_loss(frame: pd.DataFrame) -> float:
    """The lowest clean training loss that every run of ``frame`` reached (the largest of the runs' minima), so
    that all of them can be compared there; NaN when some run never got as low as another started."""
    by_run = frame.groupby("run")["train_eval_loss"]
    loss = by_run.min().max()
    return float(loss) if loss <= by_run.max().min() else float("nan")


def generalisation(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run: test accuracy at the common clean training loss of its data size (``common_loss``), next to the
    final gap. Each data size gets its own reference loss, since less data is fitted further."""
    tables = []
    for size, part in frame.groupby("data_size"):
        loss = common_loss(part)
        table = equal_loss_table(part, loss)
        table["at_loss"] = loss
        tables.append(table.merge(final_gap(part).drop(columns=["layout", "data_size", "seed"]), on="run"))
    return pd.concat(tables, ignore_index=True)


def ranking(per_run: pd.DataFrame, value: str, higher_is_better: bool = True, level: float = 0.95,
            n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Layouts ranked by their mean ``value`` over seeds, with a percentile bootstrap interval of each mean."""
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2 * 100
    rows = []
    for layout, values in per_run.groupby("layout")[value]:
        values = values.dropna().to_numpy(dtype=float)
        if not len(values):
            continue
        draws = rng.choice(values, (n, len(values))).mean(1)
        rows.append({"layout": layout, "mean": values.mean(), "low": np.percentile(draws, tail),
                     "high": np.percentile(draws, 100 - tail), "seeds": len(values)})
    table = pd.DataFrame(rows, columns=["layout", "mean", "low", "high", "seeds"]).sort_values("mean", ascending=not higher_is_better, ignore_index=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def summarise(per_run: pd.DataFrame, value: str, by: tuple[str, ...] = ("layout", "data_size")) -> pd.DataFrame:
    """Mean, standard deviation and count over seeds."""
    grouped = per_run.groupby(list(by))[value]
    return grouped.agg(["mean", "std", "count"]).reset_index()


# The paper's findings (Section 2.2): `a REL b` between neighbours, ViT_REL spelled as in our layouts.
PAPER_GENERALISATION = "C-C-C-C ≈ C-C-C-T ≥ C-C-T-T > C-T-T-T ≫ VIT_REL"
PAPER_CAPACITY = "C-C-T-T ≈ C-T-T-T > VIT_REL > C-C-C-T > C-C-C-C"
RELATIONS = ("≈", "≥", "≫", ">")


def bootstrap_diff(a: list[float], b: list[float], n: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a minus mean of b, and a percentile bootstrap interval, resampling each side's seeds."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    draws = rng.choice(a, (n, len(a))).mean(1) - rng.choice(b, (n, len(b))).mean(1)
    tail = (1 - level) / 2 * 100
    return float(a.mean() - b.mean()), float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))


def parse_order(order: str) -> list[tuple[str, str, str]]:
    """``"A ≈ B > C"`` -> ``[("A", "≈", "B"), ("B", ">", "C")]``."""
    tokens = order.replace(">=", "≥").replace(">>", "≫").replace("~", "≈").split()
    if len(tokens) < 3 or len(tokens) % 2 == 0 or any(t not in RELATIONS for t in tokens[1::2]):
        raise ValueError(f"order {order!r} must alternate layouts and relations {' '.join(RELATIONS)}")
    return [(tokens[i], tokens[i + 1], tokens[i + 2]) for i in range(0, len(tokens) - 2, 2)]


def _verdict(a: list[float], b: list[float], rel: str, higher_is_better: bool, level: float) -> dict:
    if not a or not b:
        return {"diff": np.nan, "low": np.nan, "high": np.nan, "verdict": "missing"}
    diff, low, high = bootstrap_diff(a, b, level=level)
    if not higher_is_better:
        diff, low, high = -diff, -high, -low
    if rel == "≈":
        verdict = "holds" if low <= 0 <= high else "differs"
    elif low > 0:
        verdict = "holds"
    elif high < 0:
        verdict = "reversed"
    else:
        verdict = "holds (within noise)" if rel == "≥" else "within noise"
    return {"diff": diff, "low": low, "high": high, "verdict": verdict}


def check_order(per_run: pd.DataFrame, value: str, order: str, higher_is_better: bool = True,
                level: float = 0.95) -> pd.DataFrame:
    """For each neighbouring pair of ``order``: does the relation hold, is it reversed, or within noise?

    ``>``, ``≫`` hold when the bootstrap interval of the difference is above zero; ``≥`` unless it is below;
    ``≈`` when the interval contains zero. An interval on the wrong side of zero is "reversed".
    """
    rows = []
    for left, rel, right in parse_order(order):
        a = per_run.loc[per_run["layout"] == left, value].dropna().tolist()
        b = per_run.loc[per_run["layout"] == right, value].dropna().tolist()
        rows.append({"pair": f"{left} {rel} {right}", **_verdict(a, b, rel, higher_is_better, level)})
    return pd.DataFrame(rows)


def check_order_at_equal_loss(frame: pd.DataFrame, order: str, level: float = 0.95) -> pd.DataFrame:
    """``check_order`` on test accuracy at equal clean training loss, each pair compared at the lowest loss
    both of its layouts reached: neighbours can be compared even where the whole set of curves never overlaps
    (a ViT that stays far above where the convnets end)."""
    rows = []
    for left, rel, right in parse_order(order):
        pair = frame[frame["layout"].isin([left, right])]
        loss = common_loss(pair) if pair["layout"].nunique() == 2 else float("nan")
        per_run = equal_loss_table(pair, loss) if loss == loss else pd.DataFrame(columns=["layout", "test_acc_at_loss"])
        a = per_run.loc[per_run["layout"] == left, "test_acc_at_loss"].dropna().tolist()
        b = per_run.loc[per_run["layout"] == right, "test_acc_at_loss"].dropna().tolist()
        rows.append({"pair": f"{left} {rel} {right}", "at_loss": loss, **_verdict(a, b, rel, True, level)})
    return pd.DataFrame(rows)


__all__ = [
    "COLUMNS", "PAPER_CAPACITY", "PAPER_GENERALISATION", "accuracy_at_loss", "bootstrap_diff", "capacity",
    "check_order", "check_order_at_equal_loss", "common_loss", "equal_loss_table", "final_gap", "generalisation", "load_run", "load_runs",
    "load_source", "load_wandb", "parse_order", "ranking", "summarise",
]
