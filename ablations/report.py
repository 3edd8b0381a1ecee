"""``ablate report SOURCE``: the study's tables, the paper's orderings checked paired by seed, and the figures, as one
Markdown file (and, with ``--wandb``, as tables and images of one W&B run in the sweep's group). SOURCE is any
folder of run folders or ``wandb:ENTITY/PROJECT``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lightning_modules import run_folder

from .analysis import (
    PAPER_CAPACITY, PAPER_GENERALISATION, PAPER_TRANSFER, capacity, generalisation, load_source, ordering_checks,
    other_seed_sources, pairwise, ranking, read_runs, run_facts, run_folders_of, settings, transfer_checks,
)
from .analysis import _run_candidates
from .plots import PAPER_LAYOUTS, layout_order, save_figures
from .progress import no_runs, still_running
from .verdicts import parse_margins


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


def _mean_sd(values: pd.Series, empty: str) -> str:
    """``mean ± std (n)`` of the values that are there; ``empty`` where none is."""
    values = values.dropna()
    if values.empty:
        return empty
    if len(values) == 1:
        return f"{values.iloc[0]:.4f} (n=1)"
    return f"{values.mean():.4f} ± {values.std():.4f} (n={len(values)})"


def _in_layout_order(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``table`` sorted by ``keys``, layouts in the paper's order (then any others)."""
    table = table.assign(layout=pd.Categorical(table["layout"], layout_order(table["layout"]), ordered=True))
    return table.sort_values(keys).astype({"layout": str}).reset_index(drop=True)


def layout_by_size(per_run: pd.DataFrame, value: str) -> pd.DataFrame:
    """A row per layout and combination of the other settings, data sizes across, ``mean ± std (n)`` over seeds."""
    return _by_size(per_run, lambda part: _mean_sd(part[value], "not reached"))


def _by_size(per_run: pd.DataFrame, cell) -> pd.DataFrame:
    """``cell(runs)`` for the runs of each layout and combination of the other settings (rows, in the paper's
    layout order) at each data size (columns)."""
    rows = ["layout", *settings(per_run)[1:]]
    table = per_run.groupby([*rows, "data_size"], dropna=False)[list(per_run.columns)].apply(cell).unstack("data_size")
    table = _in_layout_order(table.reset_index(), rows)
    table.columns = [f"data size {c:g}" if not isinstance(c, str) else c for c in table.columns]
    return table


def _interval(row: pd.Series) -> str:
    if pd.isna(row["effect"]):
        return ""
    if pd.isna(row["low"]):
        return f"{row['effect']:+.2f}"
    return f"{row['effect']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]"


def verdict_table(table: pd.DataFrame, frame: pd.DataFrame, extra: tuple[str, ...] = (),
                  beside: tuple[str, ...] = ()) -> str:
    """A family's verdicts as the report prints them: the effect with its 95% interval, the Holm-adjusted p, the
    verdict, the paper's relation, the columns ``beside`` it, the seeds an inconclusive one needs, why a relation
    gives none, and the method."""
    if table.empty:
        return "_no pair of these layouts in the runs_"
    shown = table.copy()
    shown["effect [95% CI]"] = shown.apply(_interval, axis=1)
    shown["p (Holm)"] = shown["p_holm"]
    shown["seeds needed"] = shown["seeds_needed"]
    shown["why"] = shown["why"].fillna("")
    columns = [*[c for c in settings(frame) if c in shown], *extra, "pair", "n", "effect [95% CI]", "p (Holm)",
               "verdict", *(["paper"] if "paper" in shown else []), *beside, "seeds needed", "why", "method"]
    return markdown_table(shown[columns])


def _ordering_sections(frame: pd.DataFrame, checks: dict[str, pd.DataFrame], margins: dict[str, float]) -> list[str]:
    accuracy, log_loss = margins["accuracy"], margins["log_loss"]
    return [
        f"### Generalisation at equal clean training loss; paper: `{PAPER_GENERALISATION}`", "",
        "Effect: A's test accuracy minus B's, in points, at the pair's comparison loss (`at_loss`). One family per "
        f"data size (Holm over its relations); margin {accuracy:g} point(s).", "",
        verdict_table(checks["generalisation at equal loss"], frame, ("at_loss",)), "",
        "### Generalisation by the final gap", "",
        "Train − test accuracy at the last evaluation; smaller generalises better, so the effect is B's gap minus A's, "
        f"in points; margin {accuracy:g} point(s).", "",
        verdict_table(checks["generalisation by final gap"], frame), "",
        f"### Capacity at data size {frame['data_size'].max():g}; paper: `{PAPER_CAPACITY}`", "",
        "Lowest clean training loss, compared in log loss (B's minus A's: +0.1 is about 10% lower for A); only between "
        f"runs that converged; margin {log_loss:g} log units.", "",
        verdict_table(checks["capacity"], frame), ""]


def convergence_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per layout and settings: how many seeds converged, and the largest relative fall of the clean training
    loss over the last 10% of steps (``run_facts``), or that the runs stopped at a target loss."""
    facts = run_facts(frame)

    def cell(part: pd.DataFrame) -> str:
        if part["target"].notna().all():
            reached = int(part["target_reached"].fillna(False).sum())
            return f"stopped at target: {reached} of {len(part)} reached it"
        known = part["converged"].dropna()
        worst = pd.to_numeric(part["rel_change"], errors="coerce").max()
        return f"{int(known.sum())} of {len(part)} converged (fell up to {worst:.0%})"

    return _by_size(facts, cell)


BUDGET_MISS = 0.05  # farther than this from its budget's params or MACs, a layout is not at a comparable size


def size_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per layout and settings: parameters and MACs as built (summary.json) and, for a budget layout trained from
    random weights, its worse miss of the budget's two targets. The paper compares "at comparable size and compute";
    a matched block type of your own can miss it (the matcher takes the closest widths and depths there are)."""
    from lightning_modules.backbones import BUDGETS

    runs = frame.drop_duplicates("run").copy()
    runs.attrs = {}  # per-image predictions (arrays) in attrs break pandas' concat of the groups
    for fact in ("params", "flops", "source", "budget"):  # runs whose summaries did not record them
        if fact not in runs:
            runs[fact] = None
    rows = ["layout", *settings(runs)[1:]]

    def describe(part: pd.DataFrame) -> pd.Series:
        params, macs = part["params"].dropna(), part["flops"].dropna()
        budget = part["budget"].iloc[0]
        miss = None
        if not params.empty and not macs.empty and budget in BUDGETS and part["source"].isna().all():
            target = BUDGETS[budget]
            miss = max(abs(params.max() / target.params - 1), abs(params.min() / target.params - 1),
                       abs(macs.max() / target.macs - 1), abs(macs.min() / target.macs - 1))
        return pd.Series({
            "budget": budget if isinstance(budget, str) else "",
            "params (M)": params.max() / 1e6 if not params.empty else None,
            "MACs (M)": macs.max() / 1e6 if not macs.empty else None,
            "miss of the budget": "" if miss is None else f"{miss:.1%}" + (
                f" (over {BUDGET_MISS:.0%}: not at a comparable size)" if miss > BUDGET_MISS else ""),
        })

    return _in_layout_order(runs.groupby(rows, dropna=False)[list(runs.columns)].apply(describe).reset_index(), rows)


def report_tables(frame: pd.DataFrame, margins: dict[str, float] | None = None) -> dict[str, pd.DataFrame]:
    """Every table of the report, by title (what ``--wandb`` logs as ``wandb.Table``s)."""
    margins = parse_margins(margins)
    gen = generalisation(frame)
    cap = capacity(frame)
    predictions = frame.attrs.get("predictions") or None
    tables = {
        "final test accuracy": layout_by_size(gen, "test_acc"),
        "test accuracy at equal loss": layout_by_size(gen, "test_acc_at_loss"),
        **({"loss read at": layout_by_size(gen, "read_at")} if frame["target"].notna().any() else {}),
        "final gap": layout_by_size(gen, "acc_gap"),
        "convergence": convergence_table(frame),
        "size and compute": size_table(frame),
        "capacity": layout_by_size(capacity(frame, largest_only=False), "min_train_eval_loss"),
        "ranking by final test accuracy": ranking(gen[gen["data_size"] == gen["data_size"].max()], "test_acc"),
        "ranking by capacity": ranking(cap, "min_train_eval_loss", higher_is_better=False),
        "exploratory: layout pairs by final test accuracy": pairwise(gen, "test_acc", margin=margins["accuracy"],
                                                                      predictions=predictions),
    }
    if len(set(PAPER_LAYOUTS) & set(frame["layout"])) > 1:
        tables.update({f"paper ordering: {k}": v for k, v in ordering_checks(frame, margins).items()})
    tables.update({f"transfer: {k}": v for k, v in transfer_checks(frame, margins).items()})
    return tables


def transfer_by_layout(linked: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2 over seeds: per layout and settings, the sources' pre-training test accuracy and clean
    training loss, and the fine-tuned test accuracy, ``mean ± std (n)`` over the runs whose source was read."""
    read = linked[linked["not_comparable"].isna()]
    keys = ["layout", *settings(linked)]

    columns = {"pretrain_acc": "pre-training test accuracy", "pretrain_loss": "pre-training clean training loss",
               "finetune_acc": "fine-tuned test accuracy"}
    table = read.groupby(keys, dropna=False)[list(columns)].agg(lambda values: _mean_sd(values, ""))
    return _in_layout_order(table.reset_index().rename(columns=columns), keys)


def _transfer_section(tables: dict[str, pd.DataFrame], margins: dict[str, float]) -> list[str]:
    """Each fine-tuned run beside its source, the paper's transfer relation with the pre-training fits beside it,
    the fits' own families, and every pair of layouts after fine-tuning."""
    linked = tables["transfer: linked runs"]
    # a setting every fine-tuned run shares (their data, their recipe) tells none apart: the tables above show it;
    # the data size stays, as in every other table
    linked = linked.drop(columns=[c for c in settings(linked)
                                  if c != "data_size" and linked[c].astype(str).nunique() == 1])
    keys = settings(linked)
    unread = linked[linked["not_comparable"].notna()]
    other_seed = other_seed_sources(linked)
    runs = _in_layout_order(linked, ["layout", *keys, "seed"])
    shown = runs[["layout", *keys, "seed", "run", "source_run", "source_seed", "pretrain_loss", "pretrain_acc",
                  "finetune_acc", "not_comparable"]].rename(columns={"source_run": "source", "not_comparable": "why"})
    shown["source"] = shown["source"].fillna(runs["source"])
    shown["why"] = shown["why"].fillna("")
    accuracy, log_loss = margins["accuracy"], margins["log_loss"]
    pairing = ("Pairs: the transfer verdicts pair fine-tuned runs by their own seed; the pre-training fits pair the "
               "distinct sources by the source's seed, each source once however many fine-tuned runs started from it "
               "(n counts source pairs). ")
    if other_seed.empty:
        pairing += "Every fine-tuning run of seed s started from a pre-training run of seed s."
    else:
        named = ", ".join(f"{r.run} (seed {r.seed:g}) from {r.source_run} (seed {r.source_seed:g})"
                          for r in other_seed.itertuples())
        pairing += (f"{len(other_seed)} fine-tuned run(s) started from a source of another seed (a chain matched "
                    f"without the seed): {named}; their transfer and their sources' fits are paired by different "
                    "seeds.")
    exploratory = tables.get("transfer: exploratory: fine-tuned layout pairs")
    return [
        "## Transfer", "",
        "The paper decides between its two best layouts by transfer (Table 2): pre-trained on JFT, C-C-T-T and "
        "C-T-T-T reach the same precision (34.40 vs 34.36), yet fine-tuned on ImageNet-1K C-C-T-T is better (82.39 vs "
        "81.78 at 224). Here each fine-tuned run is read beside the run it started from (its recorded `init_from`): "
        "the source's clean training loss and test accuracy at its last evaluation (its pre-training fit), and the "
        "fine-tuned run's final test accuracy. " + pairing, "",
        *([f"{len(unread)} fine-tuned run(s) have no source to read, named in `why`: their relations are `not "
           "comparable`.", ""] if len(unread) else []),
        markdown_table(transfer_by_layout(linked)), "",
        f"### The paper's transfer relation: `{PAPER_TRANSFER}`", "",
        f"Effect: A's fine-tuned test accuracy minus B's, in points; margin {accuracy:g} point(s). `pre-training fit` "
        "says whether the pair's pre-training fits are shown equivalent (TOST, both the sources' test accuracy, "
        f"margin {accuracy:g} point(s), and their clean training loss, margin {log_loss:g} log units): `equal "
        "pre-training fit, different transfer` is the paper's finding; a fit not shown equivalent is said beside the "
        "verdict, since then a transfer difference may be a pre-training difference carried over.", "",
        verdict_table(tables["transfer: transfer"], linked, beside=("pre-training fit", "reading")), "",
        "The pre-training fits of the same pairs, each tested for equivalence (`paper`: the paper's `≈`), by the "
        "sources' test accuracy (effect in points):", "",
        verdict_table(tables["transfer: pre-training accuracy"], linked), "",
        "and by their clean training loss (effect in log units, B's minus A's):", "",
        verdict_table(tables["transfer: pre-training loss"], linked), "",
        *(["Exploratory: every pair of layouts by fine-tuned test accuracy (Holm over all pairs; leads, not "
           "findings):", "", verdict_table(exploratory, linked), ""] if exploratory is not None else []),
        "Each fine-tuned run and its source:", "", markdown_table(shown), ""]


def build_report(frame: pd.DataFrame, title: str, intro: str, figures: dict[str, Path],
                 margins: dict[str, float] | None = None, tables: dict[str, pd.DataFrame] | None = None) -> str:
    """The report's Markdown; ``tables``: ``report_tables(frame, margins)`` when the caller has them already."""
    margins = parse_margins(margins)
    tables = report_tables(frame, margins) if tables is None else tables
    axes = settings(frame)[1:]
    paper = len(set(PAPER_LAYOUTS) & set(frame["layout"])) > 1
    checks = {k.removeprefix("paper ordering: "): v for k, v in tables.items() if k.startswith("paper ordering: ")}
    parts = [f"# {title}", "", intro, "",
             "Runs are told apart by layout, data size" + (", " + ", ".join(f"`{a}`" for a in axes) if axes else "")
             + "; only seeds are pooled. Cells are mean ± standard deviation over seeds (n).", "",
             "## What a verdict rests on", "",
             "Layouts are compared paired by seed, one family of relations at a time (the paper's order at one data "
             "size, its capacity order), with Holm's correction within the family. Each relation gets one verdict:",
             "",
             "- `A better` / `B better`: the two-sided paired t test of no difference rejects at 5% after Holm;",
             f"- `equivalent`: TOST rejects after Holm, the 90% interval inside ± the margin (accuracy "
             f"{margins['accuracy']:g} point(s), log loss {margins['log_loss']:g});",
             "- `inconclusive`: neither; the data do not resolve the margin. `seeds needed` gives the seeds that would "
             "at 80% power (at 5% / family size), from the observed paired spread, with the range its 80% interval "
             "gives: an sd from 3 seeds is itself uncertain;",
             "- `not comparable`: the relation cannot be read at this budget (the reason is in `why`);",
             "- `not robust`: the verdict changes with an arbitrary choice of the reading (`why` lists them).", "",
             "`paper` tests the paper's own relation, Holm-corrected over the family: `≈` by TOST, `≥` by "
             "non-inferiority, `>` by superiority, `≫` by superiority by at least the margin, each one-sided at 5%: "
             "`supported`, `contradicted` (the verdict is the opposite) or `not shown`. Where runs kept their "
             "per-image test predictions, the interval also counts the test set's sampling noise, which the "
             "seed-to-seed spread never sees (the method column says so). No verdict here is a claim beyond its "
             "interval: with 3 seeds most relations are `inconclusive`, and that is the result.", "",
             "## Size and compute", "",
             "The paper compares its layouts at comparable size and compute. Parameters and MACs per image as each "
             f"layout was built for these data; `miss of the budget` is the worse of the two relative misses of its "
             f"budget's targets (a run fine-tuned from weights has none), and a layout over {BUDGET_MISS:.0%} is "
             "compared at an unequal size: read its verdicts with that in mind.", "",
             markdown_table(tables["size and compute"], digits=2), "",
             "## Final test accuracy", "", markdown_table(tables["final test accuracy"]), "",
             "## Generalisation", "",
             "Test accuracy at equal clean training loss: if two models reach the same training loss, the one with "
             "higher test accuracy generalises better. Runs stopped at a target loss are read where they stopped. "
             "Otherwise the comparison loss is the highest lowest-loss among the runs that converged (an unconverged "
             "run, still falling, never sets it); a run that never reaches it, or reaches it before its warm-up ends, "
             "is `not comparable`; a reading between two evaluations is made in log loss, in loss, and with the "
             "evaluation on either side dropped, and must agree.", "",
             markdown_table(tables["test accuracy at equal loss"]), "",
             *(["The clean training loss each run was read at (a stopped run: the evaluation it stopped at, at or "
                "below its target; the sparser the evaluations where the loss falls fast, the further below):", "",
                markdown_table(tables["loss read at"]), ""] if "loss read at" in tables else []),
             "Final gap, clean training accuracy minus test accuracy:", "", markdown_table(tables["final gap"]), "",
             "## Capacity", "",
             "Convergence (each run's rule: the clean training loss fell by at most 5% over the last 10% of its "
             "steps); the capacity of a run that did not converge is how far it got within the budget:", "",
             markdown_table(tables["convergence"]), "",
             "Lowest clean training loss reached (the paper reads it at the largest data size):", "",
             markdown_table(tables["capacity"]), "",
             "## The paper's orderings", "",
             *(_ordering_sections(frame, checks, margins) if paper else
               ["The orderings compare the paper's layouts (" + ", ".join(PAPER_LAYOUTS) + "); the runs have fewer "
                "than two of them.", ""]),
             *(_transfer_section(tables, margins) if "transfer: linked runs" in tables else []),
             "## Exploratory: every pair of layouts", "",
             "Final test accuracy, every pair at each combination of settings (the effect is the first's minus the "
             "second's, in points; Holm over all pairs of a combination). No hypothesis was named for these pairs "
             "beforehand: read them as leads for a study, not as its findings.", "",
             verdict_table(tables["exploratory: layout pairs by final test accuracy"], frame), "",
             "Rankings at the largest data size (descriptive; mean, 95% t interval over seeds, n):", "",
             "By final test accuracy:", "", markdown_table(tables["ranking by final test accuracy"]), "",
             "By capacity (lowest clean training loss):", "", markdown_table(tables["ranking by capacity"]), "",
             "## Figures", ""]
    captions = {"training_curves": "clean training loss and test accuracy against steps (the paper's Figure 1)",
                "accuracy_vs_loss": "test accuracy against clean training loss",
                "generalisation_gap": "gap and equal-loss accuracy per layout per data size",
                "capacity_vs_data": "capacity and test accuracy against data size",
                "transfer": "fine-tuned test accuracy against the source's pre-training fit, a point per run"}
    parts += [f"![{captions[name]}]({path.name})" for name, path in figures.items()]
    return "\n".join(parts) + "\n"


def write_report(source: str | Path, out: str | Path | None = None, wandb: bool = False,
                 margins: dict[str, Any] | None = None) -> Path:
    """Write ``report.md`` and its PNGs into ``out`` (default: the folder itself); with ``wandb`` also log them to
    the study's W&B summary run. ``margins`` (``{"accuracy": 0.5}``) override the sweep's (its spec's ``margins``)
    and the defaults."""
    source = str(source)
    manifest, running = None, []
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
        running = still_running(folder)  # as `ablate status` reads them: a live process holds each one's lock
        if not (manifest or {}).get("runs") and not running and not _run_candidates(folder):
            raise FileNotFoundError(no_runs(source))  # as `ablate status` says it
    margins = parse_margins({**((manifest or {}).get("margins") or {}), **(margins or {})})
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
    still = (f", {len(running)} still running ({', '.join(f'`{r}`' for r in running)}; the tables hold the runs "
             "completed so far: report again once they end)") if running else ""
    if manifest is not None:
        intro = (f"{done} of {len(manifest['runs'])} runs completed{still}; base config `{manifest['config']}`, "
                 f"budget `{manifest.get('budget')}`.")
    elif not source.startswith("wandb:"):
        intro = f"{done} completed run(s) of {len(run_folders_of(Path(source), False))} run folder(s){still}."
    if unreadable:  # counted apart from the completed runs, each named with the reason, here and on stderr
        listed = "; ".join(f"`{run}` ({why})" for run, why in sorted(unreadable.items()))
        intro += f" {len(unreadable)} run(s) could not be read and are left out of every table: {listed}."
        print(f"ablate report: warning: {len(unreadable)} run(s) could not be read: {listed.replace('`', '')}",
              file=sys.stderr)
    if frame is None:
        text, figures = f"# {title}\n\n{intro}\n", {}
    else:
        figures = save_figures(frame, out)
        tables = report_tables(frame, margins)  # computed once: the Markdown and W&B show the same tables
        text = build_report(frame, title, intro, figures, margins, tables)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    run_folder.atomic_write(report, text)
    if wandb and frame is not None:
        log_to_wandb(tables, figures, out, group=manifest["name"] if manifest else None, source=source)
    return report


def log_to_wandb(tables: dict[str, pd.DataFrame], figures: dict[str, Path], out: Path, group: str | None,
                 source: str) -> None:
    """The report's tables as ``wandb.Table``s and its figures as ``wandb.Image``s, in one run of job type
    ``report`` in the sweep's group (the project the runs logged to), resumed by each new report."""
    import wandb

    from lightning_modules.wandb_run import run_id, wandb_dir, wandb_mode

    project = "stacking-ablations"
    if source.startswith("wandb:"):
        project = source.removeprefix("wandb:")
    else:
        configs = [yaml.safe_load((p / run_folder.CONFIG).read_text()) for p in run_folders_of(Path(source))[:1]]
        project = (configs[0].get("wandb") or {}).get("project", project) if configs else project
    entity, _, name = project.rpartition("/")
    run = wandb.init(project=name, entity=entity or None, group=group, job_type="report",
                     name=f"{group or out.name}-report", id=run_id(out), resume="allow", mode=wandb_mode(),
                     dir=wandb_dir(out), config={"source": source})
    run.log({**{f"report/{title}": wandb.Table(dataframe=table.astype(object).where(table.notna(), None))
                for title, table in tables.items()},
             **{f"report/{name}": wandb.Image(str(path)) for name, path in figures.items()}})
    run.finish()
