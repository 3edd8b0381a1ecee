"""``ablate plan SPEC --pilot RUNS``: before a study is launched, the seeds each of its relations needs and what they
cost, from a pilot's observed paired spread and measured time per run.

The relations are the report's families (``analysis.ordering_checks``: the paper's orders, per data size and at the
largest) restricted to the spec's layouts and data sizes, read on the pilot. Each gets the seeds that resolve its
margin at 80% power (``verdicts.seeds_for_sd``, at 5% / family size, Holm's strictest step), with the range the
pilot's few seeds leave. The cost is the spec's runs at that many seeds times the pilot's mean wall time per run
(the mean over its layouts and data sizes), on the pilot's slot kind (its ``trainer.accelerator``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .analysis import describe_model, load_runs, ordering_checks
from .report import markdown_table
from .sweep import SweepSpec
from .verdicts import ALPHA, format_seeds, parse_margins, seeds_for_sd

FAMILY_KIND = {"generalisation at equal loss": "accuracy", "generalisation by final gap": "accuracy",
               "capacity": "log_loss"}


def _spec_cells(spec: SweepSpec) -> tuple[list[str], list[float], int]:
    """The spec's layouts, data sizes and its runs per seed (every other grid combination)."""
    runs = spec.expand()
    layouts = sorted({describe_model(str(r.overrides.get("model.init_args.model", "")))[0] for r in runs})
    sizes = sorted({float(r.overrides.get("data.init_args.train_fraction", 1.0)) for r in runs})
    seeds = len(spec.grid.get("seed_everything", [spec.fixed.get("seed_everything", 0)]))
    return layouts, sizes, len(runs) // max(seeds, 1)


def plan(spec_path: str | Path, pilot: str | Path, margins: dict | None = None) -> str:
    """The plan as Markdown: a row per relation, then the seeds and cost of the whole study."""
    spec = SweepSpec.load(spec_path)
    margins = parse_margins({**spec.margins, **(margins or {})})
    frame = load_runs(pilot)
    layouts, sizes, runs_per_seed = _spec_cells(spec)
    present = sorted(set(layouts) & set(frame["layout"]))
    if len(present) < 2:
        raise ValueError(f"pilot {pilot} has runs of {', '.join(sorted(frame['layout'].unique()))}; the spec compares "
                         f"{', '.join(layouts)}: a plan needs pilot runs of at least two of them")
    frame = frame[frame["layout"].isin(layouts)]
    rows = []
    for family, table in ordering_checks(frame, margins).items():
        margin = margins[FAMILY_KIND[family]]
        for _, row in table.iterrows():
            if row["verdict"] == "not comparable" or not row["data_size"] in sizes:
                continue
            need = seeds_for_sd(row["sd"], int(row["n"]), margin, row["image_var"] if pd.notna(row["image_var"]) else None,
                                ALPHA / max(int(row["family"]), 1))
            rows.append({"family": family, "data size": row["data_size"], "pair": row["pair"], "pilot n": row["n"],
                         "paired sd": row["sd"], "pilot verdict": row["verdict"], "seeds needed": format_seeds(need),
                         "_seeds": need["seeds"]})
    table = pd.DataFrame(rows)
    lines = [f"# Plan for sweep {spec.name}", "",
             f"From the pilot {pilot} ({frame['run'].nunique()} runs). Seeds needed to resolve each relation's margin "
             f"(accuracy {margins['accuracy']:g} point(s), log loss {margins['log_loss']:g}) at 80% power, at 5% / "
             "family size, from the pilot's paired spread (its range: the spread's 80% interval). Relations the pilot "
             "cannot read at all (not comparable at its budget) are left out.", ""]
    if table.empty:
        return "\n".join([*lines, "_no relation of the spec can be read on the pilot_", ""])
    lines += [markdown_table(table.drop(columns="_seeds")), ""]
    resolvable = table["_seeds"].dropna()
    seeds = int(resolvable.max()) if len(resolvable) else None
    unreachable = int(table["_seeds"].isna().sum())
    times = frame.drop_duplicates("run")
    accelerator = "cpu"
    if "trainer.accelerator" in times:
        accelerator = str(times["trainer.accelerator"].iloc[0])
    per_run = times.groupby(["layout", "data_size"])["wall_time"].mean()
    if seeds is None:
        lines.append("No relation can be resolved by more seeds alone (the test set's noise or a spread beyond "
                     "1000 seeds); a larger test set or margin is needed.")
    else:
        mean_time = float(per_run.mean()) if per_run.notna().any() else math.nan
        cost = seeds * runs_per_seed * mean_time
        lines.append(f"The study resolves every resolvable relation at **{seeds} seeds**: {seeds * runs_per_seed} runs "
                     f"({runs_per_seed} per seed) x {mean_time:.0f} s per run on the pilot's {accelerator} slots = "
                     f"{cost / 3600:.2f} slot-hours ({cost / 3600 / 2:.2f} h on 2 slots)."
                     + (f" {unreachable} relation(s) cannot be resolved by seeds at all." if unreachable else ""))
    return "\n".join(lines) + "\n"
