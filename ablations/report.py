"""``ablate report SWEEP_FOLDER``: the layout x data-size table (mean ± std over seeds) and plots, as Markdown."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lightning_modules.callbacks import atomic_write

COLUMNS = (("train_eval/loss", "clean train loss"), ("test/acc", "test acc"), ("gap/test_acc", "train acc - test acc"))


def load_results(folder: str | Path) -> list[dict[str, Any]]:
    """One record per completed run of the sweep: its grid axes and final metrics."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found; give the folder a sweep wrote, e.g. runs/demo")
    manifest = json.loads(manifest_path.read_text())
    records = []
    for run in manifest["runs"]:
        summary_path = folder / run["id"] / "summary.json"
        if not summary_path.exists():
            continue
        summary = json.loads(summary_path.read_text())
        if summary.get("status") != "completed":
            continue
        final = summary["final"]
        records.append({
            **run["axes"], "id": run["id"], "params": summary.get("params"), "flops": summary.get("flops"),
            "train_eval/loss": final.get("train_eval/loss"), "train_eval/acc": final.get("train_eval/acc"),
            "test/acc": final.get("test/acc"), "test/loss": final.get("test/loss"),
            "gap/test_acc": final["train_eval/acc"] - final["test/acc"]
            if final.get("train_eval/acc") is not None and final.get("test/acc") is not None else None,
        })
    return records


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def results_table(records: list[dict[str, Any]], row_key: str = "layout", col_key: str = "data.init_args.train_fraction") -> str:
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r.get(row_key, r["id"]), r.get(col_key))].append(r)
    rows = sorted({k[0] for k in groups}, key=str)
    cols = sorted({k[1] for k in groups}, key=lambda v: (v is None, v))
    lines = []
    for metric, title in COLUMNS:
        lines += [f"### {title} (mean ± std over seeds)", "",
                  f"| {row_key} | " + " | ".join(f"{col_key.rsplit('.', 1)[-1]} {c}" for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for row in rows:
            cells = [_mean_std([r[metric] for r in groups.get((row, c), [])]) for c in cols]
            seeds = max(len(groups.get((row, c), [])) for c in cols)
            lines.append(f"| {row} (n={seeds}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path, row_key: str = "layout",
         col_key: str = "data.init_args.train_fraction") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    by_row: dict[Any, dict[Any, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_row[r.get(row_key, r["id"])][r.get(col_key)].append(r)
    for row, cols in sorted(by_row.items(), key=lambda kv: str(kv[0])):
        xs = sorted(cols)
        for ax, metric in zip(axes, ("test/acc", "train_eval/loss")):
            means = [statistics.mean(r[metric] for r in cols[x]) for x in xs]
            ax.plot(xs, means, marker="o", label=str(row))
    axes[0].set(xlabel="training data fraction", ylabel="test accuracy", title="Generalisation")
    axes[1].set(xlabel="training data fraction", ylabel="clean training loss", title="Fit", yscale="log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(folder: str | Path) -> Path:
    folder = Path(folder)
    records = load_results(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    parts = [f"# Sweep {manifest['name']}", "",
             f"{len(records)} of {len(manifest['runs'])} runs completed; base config `{manifest['config']}`, "
             f"budget `{manifest.get('budget')}`.", ""]
    if records:
        parts.append(results_table(records))
        plot(records, folder / "data_size.png")
        parts += ["![test accuracy and clean training loss against data size](data_size.png)", ""]
    report = folder / "report.md"
    atomic_write(report, "\n".join(parts))
    return report
