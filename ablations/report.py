"""``ablate report SOURCE``: the study's tables, the paper's orderings checked paired by seed, and the figures, as one
Markdown file (and, with ``--wandb``, as tables and images of one W&B run in the sweep's group). SOURCE is any
folder of run folders or ``wandb:ENTITY/PROJECT``."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import yaml

from lightning_modules import run_folder

from .analysis import (
    MIN_SEEDS, PAPER_CAPACITY, PAPER_GENERALISATION, capacity, generalisation, load_source, ordering_checks, pairwise,
    ranking, read_runs, run_folders_of, settings,
)
from .plots import PAPER_LAYOUTS, layout_order, save_figures


def markdown_table(table: pd.DataFrame, digits: int = 4, empty: str = "(no rows)") -> str:
    """A Markdown table; an empty one is the sentence ``empty`` instead."""
    if table.empty:
        return f"_{empty}_"

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def layout_by_size(per_run: pd.DataFrame, value: str) -> pd.DataFrame:
    """A row per layout and combination of the other settings, data sizes across, ``mean ± std (n)`` over seeds."""
    def cell(values: pd.Series) -> str:
        values = values.dropna()
        if values.empty:
            return "not reached"
        if len(values) == 1:
            return f"{values.iloc[0]:.4f} (n=1)"
        return f"{values.mean():.4f} ± {values.std():.4f} (n={len(values)})"

    rows = ["layout", *settings(per_run)[1:]]
    table = per_run.groupby([*rows, "data_size"], dropna=False)[value].apply(cell).unstack("data_size")
    table = table.reset_index()
    table["layout"] = pd.Categorical(table["layout"], layout_order(table["layout"]), ordered=True)
    table = table.sort_values(rows).astype({"layout": str})
    table.columns = [f"data size {c:g}" if not isinstance(c, str) else c for c in table.columns]
    return table.reset_index(drop=True)


CHECK_COLUMNS = ["pair", "n", "effect", "low", "high", "p", "method", "verdict"]


def _checks(table: pd.DataFrame, frame: pd.DataFrame, extra: tuple[str, ...] = ()) -> str:
    columns = [*settings(frame), *extra, *CHECK_COLUMNS]
    return markdown_table(table.reindex(columns=[c for c in columns if c in table]) if len(table) else table,
                          empty="no pair of these layouts in the runs")


def _orderings(frame: pd.DataFrame) -> list[str]:
    checks = ordering_checks(frame)
    return [f"Generalisation, paper: `{PAPER_GENERALISATION}`. Test accuracy at equal clean training loss, each "
            "pair at the lowest loss both reached (`at_loss`):", "",
            _checks(checks["generalisation at equal loss"], frame, ("at_loss",)), "",
            "The final gap (train − test accuracy; smaller generalises better, so the effect is B's gap minus A's):",
            "", _checks(checks["generalisation by final gap"], frame), "",
            f"Capacity at data size {frame['data_size'].max():g} (lowest clean training loss; the effect is B's minus "
            f"A's); paper: `{PAPER_CAPACITY}`:", "", _checks(checks["capacity"], frame), ""]


def report_tables(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every table of the report, by title (what ``--wandb`` logs as ``wandb.Table``s)."""
    gen = generalisation(frame)
    cap = capacity(frame)
    tables = {
        "final test accuracy": layout_by_size(gen, "test_acc"),
        "test accuracy at equal loss": layout_by_size(gen, "test_acc_at_loss"),
        "final gap": layout_by_size(gen, "acc_gap"),
        "capacity": layout_by_size(capacity(frame, largest_only=False), "min_train_eval_loss"),
        "ranking by test accuracy at equal loss": ranking(gen[gen["data_size"] == gen["data_size"].max()], "test_acc_at_loss"),
        "ranking by capacity": ranking(cap, "min_train_eval_loss", higher_is_better=False),
        "layout pairs by test accuracy at equal loss": pairwise(gen, "test_acc_at_loss"),
    }
    if len(set(PAPER_LAYOUTS) & set(frame["layout"])) > 1:
        tables.update({f"paper ordering: {k}": v for k, v in ordering_checks(frame).items()})
    return tables


def build_report(frame: pd.DataFrame, title: str, intro: str, figures: dict[str, Path]) -> str:
    tables = report_tables(frame)
    axes = settings(frame)[1:]
    parts = [f"# {title}", "", intro, "",
             "Runs are told apart by layout, data size" + (", " + ", ".join(f"`{a}`" for a in axes) if axes else "")
             + "; only seeds are pooled. Cells are mean ± standard deviation over seeds (n). Layouts are compared "
             f"paired by seed: the effect is the mean paired difference with its 95% paired t interval "
             f"(scipy.stats), p the paired t test's; below {MIN_SEEDS} seeds a relation gets no verdict.", "",
             "## Final test accuracy", "", markdown_table(tables["final test accuracy"]), "",
             "## Generalisation", "",
             "Test accuracy at equal clean training loss (the lowest loss every run of those settings reached): "
             "if two models reach the same training loss, the one with higher test accuracy generalises better.", "",
             markdown_table(tables["test accuracy at equal loss"]), "",
             "Final gap, clean training accuracy minus test accuracy:", "", markdown_table(tables["final gap"]), "",
             "## Capacity", "",
             "Lowest clean training loss reached (the paper reads it at the largest data size):", "",
             markdown_table(tables["capacity"]), "",
             "## Rankings at the largest data size", "",
             "By test accuracy at equal clean training loss (mean, 95% t interval over seeds, n):", "",
             markdown_table(tables["ranking by test accuracy at equal loss"], empty="no run reached the common loss"), "",
             "By capacity (lowest clean training loss):", "",
             markdown_table(tables["ranking by capacity"]), "",
             "## Layout pairs", "",
             "Test accuracy at equal clean training loss, every pair of layouts (the effect is the first's minus the "
             "second's; `holds` means the first is better):", "",
             _checks(tables["layout pairs by test accuracy at equal loss"], frame), "",
             "## The paper's orderings", "",
             "`holds`: the interval of the effect is on the paper's side of zero (for `≈`: contains zero; `differs`: "
             "it does not); `reversed`: on the other side; `within noise`: it straddles zero; `too few seeds`: "
             f"fewer than {MIN_SEEDS} seeds of both layouts, no verdict.", "",
             *(_orderings(frame) if len(set(PAPER_LAYOUTS) & set(frame["layout"])) > 1 else
               ["The orderings compare the paper's layouts (" + ", ".join(PAPER_LAYOUTS) + "); the runs have fewer "
                "than two of them.", ""]),
             "## Figures", ""]
    captions = {"training_curves": "training loss and test accuracy against steps (the paper's Figure 1)",
                "accuracy_vs_loss": "test accuracy against clean training loss",
                "generalisation_gap": "gap and equal-loss accuracy per layout per data size",
                "capacity_vs_data": "capacity and test accuracy against data size"}
    parts += [f"![{captions[name]}]({path.name})" for name, path in figures.items()]
    return "\n".join(parts) + "\n"


def write_report(source: str | Path, out: str | Path | None = None, wandb: bool = False) -> Path:
    """Write ``report.md`` and its PNGs into ``out`` (default: the folder itself); with ``wandb`` also log them to
    the study's W&B summary run."""
    source = str(source)
    manifest = None
    if source.startswith("wandb:"):
        if out is None:
            raise ValueError(f"report of {source!r} needs --out FOLDER to write into")
        title, intro = f"W&B project {source.removeprefix('wandb:')}", "Finished runs read through the W&B API."
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder; give a folder of run folders, e.g. runs/demo or runs")
        manifest = run_folder.read_manifest(folder)
        title = f"Sweep {manifest['name']}" if manifest else f"Runs under {folder}"
    out = Path(out if out is not None else source)
    unreadable: dict[str, str] = {}
    if source.startswith("wandb:"):
        try:
            frame = load_source(source)
        except FileNotFoundError:
            frame = None
    else:
        frame, unreadable = read_runs(source)
    done = 0 if frame is None else frame["run"].nunique()  # the runs in every table below
    if manifest is not None:
        intro = (f"{done} of {len(manifest['runs'])} runs completed; base config `{manifest['config']}`, "
                 f"budget `{manifest.get('budget')}`.")
    elif not source.startswith("wandb:"):
        intro = f"{done} completed run(s) of {len(run_folders_of(Path(source), False))} run folder(s)."
    if unreadable:  # counted apart from the completed runs, each named with the reason, here and on stderr
        listed = "; ".join(f"`{run}` ({why})" for run, why in sorted(unreadable.items()))
        intro += f" {len(unreadable)} run(s) could not be read and are left out of every table: {listed}."
        print(f"ablate report: warning: {len(unreadable)} run(s) could not be read: {listed.replace('`', '')}",
              file=sys.stderr)
    if frame is None:
        text, figures = f"# {title}\n\n{intro}\n", {}
    else:
        figures = save_figures(frame, out)
        text = build_report(frame, title, intro, figures)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    run_folder.atomic_write(report, text)
    if wandb and frame is not None:
        log_to_wandb(frame, figures, out, group=manifest["name"] if manifest else None, source=source)
    return report


def log_to_wandb(frame: pd.DataFrame, figures: dict[str, Path], out: Path, group: str | None, source: str) -> None:
    """The report's tables as ``wandb.Table``s and its figures as ``wandb.Image``s, in one run of job type
    ``report`` in the sweep's group (the project the runs logged to), resumed by each new report."""
    import wandb

    from lightning_modules.wandb_run import run_id, wandb_mode

    project = "stacking-ablations"
    if source.startswith("wandb:"):
        project = source.removeprefix("wandb:")
    else:
        configs = [yaml.safe_load((p / run_folder.CONFIG).read_text()) for p in run_folders_of(Path(source))[:1]]
        project = (configs[0].get("wandb") or {}).get("project", project) if configs else project
    entity, _, name = project.rpartition("/")
    run = wandb.init(project=name, entity=entity or None, group=group, job_type="report",
                     name=f"{group or out.name}-report", id=run_id(out), resume="allow", mode=wandb_mode(),
                     dir=str(out), config={"source": source})
    run.log({**{f"report/{title}": wandb.Table(dataframe=table.astype(object).where(table.notna(), None))
                for title, table in report_tables(frame).items()},
             **{f"report/{name}": wandb.Image(str(path)) for name, path in figures.items()}})
    run.finish()
