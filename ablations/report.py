"""``ablate report SOURCE``: the study's tables, the paper's orderings checked with bootstrap intervals, and the
figures, as one Markdown file. SOURCE is a sweep folder or ``wandb:ENTITY/PROJECT``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lightning_modules.callbacks import atomic_write

from .analysis import (
    PAPER_CAPACITY, PAPER_GENERALISATION, capacity, check_order, check_order_at_equal_loss, final_gap, generalisation,
    load_source, ranking,
)
from .plots import PAPER_LAYOUTS, layout_order, save_figures


def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def layout_by_size(per_run: pd.DataFrame, value: str) -> pd.DataFrame:
    """Layouts down, data sizes across, ``mean ± std (n)`` over seeds in each cell."""
    def cell(values: pd.Series) -> str:
        values = values.dropna()
        if values.empty:
            return "not reached"
        if len(values) == 1:
            return f"{values.iloc[0]:.4f} (n=1)"
        return f"{values.mean():.4f} ± {values.std():.4f} (n={len(values)})"

    table = per_run.groupby(["layout", "data_size"])[value].apply(cell).unstack("data_size")
    table = table.reindex(layout_order(table.index))
    table.columns = [f"data size {c:g}" for c in table.columns]
    return table.reset_index()


def _orderings(frame: pd.DataFrame, gen: pd.DataFrame, cap: pd.DataFrame) -> list[str]:
    parts = []
    for size, part in frame.groupby("data_size"):
        parts += [f"Generalisation at data size {size:g}, paper: `{PAPER_GENERALISATION}`. Test accuracy at equal "
                  "clean training loss, each pair at the lowest loss both reached:", "",
                  markdown_table(check_order_at_equal_loss(part, PAPER_GENERALISATION)), "",
                  "and the final gap (train − test accuracy; smaller generalises better):", "",
                  markdown_table(check_order(gen[gen["data_size"] == size], "acc_gap", PAPER_GENERALISATION,
                                             higher_is_better=False)), ""]
    checks = check_order(cap, "min_train_eval_loss", PAPER_CAPACITY, higher_is_better=False)
    parts += [f"Capacity at data size {cap['data_size'].max():g} (lowest clean training loss); paper: "
              f"`{PAPER_CAPACITY}`", "", markdown_table(checks), ""]
    return parts


def build_report(frame: pd.DataFrame, title: str, intro: str, figures: dict[str, Path]) -> str:
    gen = generalisation(frame)
    cap = capacity(frame)
    largest = gen[gen["data_size"] == gen["data_size"].max()]
    parts = [f"# {title}", "", intro, "",
             "Means ± standard deviation over seeds; intervals are 95% percentile bootstraps over seeds.", "",
             "## Final test accuracy", "", markdown_table(layout_by_size(gen, "test_acc")), "",
             "## Generalisation", "",
             "Test accuracy at equal clean training loss (the lowest loss every run of that data size reached): "
             "if two models reach the same training loss, the one with higher test accuracy generalises better.", "",
             markdown_table(layout_by_size(gen, "test_acc_at_loss")), "",
             "Final gap, clean training accuracy minus test accuracy:", "",
             markdown_table(layout_by_size(gen, "acc_gap")), "",
             "## Capacity", "",
             "Lowest clean training loss reached (the paper reads it at the largest data size):", "",
             markdown_table(layout_by_size(capacity(frame, largest_only=False), "min_train_eval_loss")), "",
             "## Rankings at the largest data size", "",
             "By test accuracy at equal clean training loss:", "",
             markdown_table(ranking(largest, "test_acc_at_loss")), "",
             "By capacity (lowest clean training loss):", "",
             markdown_table(ranking(cap, "min_train_eval_loss", higher_is_better=False)), "",
             "## The paper's orderings", "",
             "`holds`: the bootstrap interval of the difference is on the paper's side of zero (for `≈`: contains "
             "zero); `reversed`: on the other side; `within noise`: it straddles zero.", "",
             *(_orderings(frame, gen, cap) if len(set(PAPER_LAYOUTS) & set(frame["layout"])) > 1 else
               ["The orderings compare the paper's layouts (" + ", ".join(PAPER_LAYOUTS) + "); this sweep has "
                "fewer than two of them.", ""]),
             "## Figures", ""]
    captions = {"training_curves": "training loss and test accuracy against steps (the paper's Figure 1)",
                "accuracy_vs_loss": "test accuracy against clean training loss",
                "generalisation_gap": "gap and equal-loss accuracy per layout per data size",
                "capacity_vs_data": "capacity and test accuracy against data size"}
    parts += [f"![{captions[name]}]({path.name})" for name, path in figures.items()]
    return "\n".join(parts) + "\n"


def write_report(source: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` and its PNGs into ``out`` (default: the sweep folder itself)."""
    source = str(source)
    manifest = None
    if source.startswith("wandb:"):
        if out is None:
            raise ValueError(f"report of {source!r} needs --out FOLDER to write into")
        title = f"W&B project {source.removeprefix('wandb:')}"
    else:
        manifest_path = Path(source) / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path} not found; give the folder a sweep wrote, e.g. runs/demo")
        manifest = json.loads(manifest_path.read_text())
        title = f"Sweep {manifest['name']}"
    out = Path(out if out is not None else source)
    try:
        frame = load_source(source)
    except FileNotFoundError:
        frame = None
    if manifest is None:
        intro = "Finished runs read through the W&B API."
    else:
        done = 0 if frame is None else frame["run"].nunique()
        intro = (f"{done} of {len(manifest['runs'])} runs completed; base config `{manifest['config']}`, "
                 f"budget `{manifest.get('budget')}`.")
    if frame is None:
        text = f"# {title}\n\n{intro}\n"
    else:
        text = build_report(frame, title, intro, save_figures(frame, out))
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    atomic_write(report, text)
    return report
