"""The study's figures, drawn from the tidy frame of ``ablations.analysis``: one function a figure, each returning
its matplotlib Figure so a notebook shows it and a report saves it.

Layouts keep one colour across every figure, in the paper's order from all-attention to all-convolution.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
import pandas as pd

from .analysis import capacity, final_gap, generalisation, settings, transfer_table

PAPER_LAYOUTS = ("VIT_REL", "C-T-T-T", "C-C-T-T", "C-C-C-T", "C-C-C-C")


def layout_order(layouts) -> list[str]:
    """The paper's five first, in its order, then any other layout alphabetically."""
    present = set(layouts)
    return [l for l in PAPER_LAYOUTS if l in present] + sorted(present - set(PAPER_LAYOUTS))


def _colours(layouts) -> dict[str, tuple]:
    cmap = plt.get_cmap("viridis")
    order = layout_order(layouts)
    return {l: cmap(i / max(len(order) - 1, 1)) for i, l in enumerate(order)}


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """Each line and bar is a layout with its other settings (``C-C-T-T rel_pos=none``): never two settings pooled."""
    extra = settings(frame)[1:]
    if not extra:
        return frame
    frame = frame.copy()
    frame.attrs = {}  # per-image predictions (arrays) are not for figures, and pandas compares attrs when it combines
    frame["layout"] = frame["layout"] + " " + frame[extra].astype(str).apply(
        lambda row: " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in row.items()), axis=1)
    return frame


def _over_seeds(per_run: pd.DataFrame, value: str) -> pd.DataFrame:
    return per_run.groupby(["layout", "data_size"])[value].agg(["mean", "std"]).reset_index().fillna({"std": 0.0})


def training_curves(frame: pd.DataFrame, data_size: float | None = None) -> plt.Figure:
    """The paper's Figure 1: the clean training loss (no augmentation, evaluated densely: at steps 1, 2, 4, ...,
    every ``--eval_every_n_steps`` and every epoch's end) and test accuracy against steps, one line per layout:
    the mean over seeds, the band ± one standard deviation over the n seeds the legend names, at the largest data
    size unless told otherwise."""
    frame = _labelled(frame)
    data_size = frame["data_size"].max() if data_size is None else data_size
    part = frame[frame["data_size"] == data_size]
    colours = _colours(part["layout"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, value, label in ((axes[0], "train_eval_loss", "clean training loss"), (axes[1], "test_acc", "test accuracy")):
        for layout in layout_order(part["layout"]):
            runs = part[part["layout"] == layout]
            stats = runs.groupby("step")[value].agg(["mean", "std", "count"]).dropna(subset=["mean"])
            seeds = runs["seed"].nunique()
            ax.plot(stats.index, stats["mean"], marker="o", ms=2, color=colours[layout], label=f"{layout} (n={seeds})")
            spread = stats["std"].fillna(0.0)
            ax.fill_between(stats.index, stats["mean"] - spread, stats["mean"] + spread, color=colours[layout], alpha=0.2)
        ax.set(xlabel="training step", ylabel=label)
    axes[0].set_yscale("log")
    axes[1].legend(title="layout (band: ± sd over n seeds)", fontsize="small")
    fig.suptitle(f"Training curves at data size {data_size:g}: mean over seeds, band ± 1 sd")
    fig.tight_layout()
    return fig


def accuracy_vs_loss(frame: pd.DataFrame) -> plt.Figure:
    """Test accuracy against clean training loss, a panel per data size: at equal loss, higher is better
    generalisation. Each run is one line, coloured by layout; the dashed line is the comparison loss of that size
    (``comparison_loss``) and the layouts that cannot be read there are named in the panel."""
    sizes = sorted(frame["data_size"].unique())
    labelled = _labelled(frame)
    colours = _colours(labelled["layout"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes):
        part = labelled[labelled["data_size"] == size]
        for layout in layout_order(part["layout"]):
            for i, (_, run) in enumerate(part[part["layout"] == layout].groupby("run")):
                run = run.sort_values("step").dropna(subset=["train_eval_loss", "test_acc"])
                ax.plot(run["train_eval_loss"], run["test_acc"], marker="o", ms=3, color=colours[layout],
                        label=layout if i == 0 else None)
        readings = generalisation(frame[frame["data_size"] == size])
        loss = readings["at_loss"].dropna()
        if len(loss):
            ax.axvline(loss.iloc[0], color="black", ls="--", lw=1, label=f"comparison loss {loss.iloc[0]:.3g}")
        blocked = sorted(readings.loc[readings["not_comparable"].notna(), "layout"].unique())
        if blocked:
            ax.text(0.02, 0.02, "not comparable here: " + ", ".join(blocked), transform=ax.transAxes, fontsize="small")
        ax.set(xscale="log", xlabel="clean training loss", title=f"data size {size:g}")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on a short log axis
        ax.invert_xaxis()  # training moves to the right
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(title="layout", fontsize="small")
    fig.tight_layout()
    return fig


def _bars(ax, stats: pd.DataFrame, colours: dict) -> None:
    sizes = sorted(stats["data_size"].unique())
    layouts = layout_order(stats["layout"])
    width = 0.8 / len(layouts)
    for j, layout in enumerate(layouts):
        rows = stats[stats["layout"] == layout].set_index("data_size").reindex(sizes)
        xs = [i + (j - (len(layouts) - 1) / 2) * width for i in range(len(sizes))]
        ax.bar(xs, rows["mean"], width, yerr=rows["std"], color=colours[layout], label=layout, capsize=2)
    ax.set_xticks(range(len(sizes)), [f"{s:g}" for s in sizes])
    ax.set_xlabel("data size")


def generalisation_gap(frame: pd.DataFrame) -> plt.Figure:
    """Final train-minus-test accuracy gap and test accuracy at equal clean training loss, per layout per data
    size (bar: mean over seeds, error bar ± 1 sd; a layout not comparable at the loss has no bar)."""
    frame = _labelled(frame)
    per_run = generalisation(frame)
    colours = _colours(frame["layout"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _bars(axes[0], _over_seeds(per_run, "acc_gap"), colours)
    axes[0].set(ylabel="train accuracy − test accuracy", title="Final gap (lower generalises better; ± 1 sd)")
    _bars(axes[1], _over_seeds(per_run, "test_acc_at_loss"), colours)
    axes[1].set(ylabel="test accuracy", title="Test accuracy at equal clean training loss (± 1 sd)")
    axes[1].legend(title="layout", fontsize="small")
    fig.tight_layout()
    return fig


def capacity_vs_data(frame: pd.DataFrame) -> plt.Figure:
    """Lowest clean training loss reached and final test accuracy against data size: the capacity and the payoff
    of each layout as data grows."""
    frame = _labelled(frame)
    colours = _colours(frame["layout"])
    fits = _over_seeds(capacity(frame, largest_only=False), "min_train_eval_loss")
    tests = _over_seeds(final_gap(frame), "test_acc")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, stats in ((axes[0], fits), (axes[1], tests)):
        for layout in layout_order(stats["layout"]):
            rows = stats[stats["layout"] == layout].sort_values("data_size")
            ax.errorbar(rows["data_size"], rows["mean"], yerr=rows["std"], marker="o", capsize=2,
                        color=colours[layout], label=layout)
        ax.set_xlabel("data size")
    axes[0].set(yscale="log", ylabel="lowest clean training loss", title="Capacity (lower fits more; ± 1 sd)")
    axes[1].set(ylabel="final test accuracy", title="Test accuracy (± 1 sd)")
    axes[1].legend(title="layout")
    fig.tight_layout()
    return fig


def transfer(frame: pd.DataFrame) -> plt.Figure:
    """Each fine-tuned run's test accuracy against its source's pre-training fit (test accuracy; clean training
    loss), a point per run: the paper's finding is layouts at one x and apart in y. Runs whose source could not be
    read are left out (the report names them)."""
    linked = transfer_table(frame)
    linked = _labelled(linked[linked["not_comparable"].isna()])
    colours = _colours(linked["layout"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x, label in ((axes[0], "pretrain_acc", "pre-training test accuracy"),
                         (axes[1], "pretrain_loss", "pre-training clean training loss")):
        for layout in layout_order(linked["layout"]):
            runs = linked[linked["layout"] == layout]
            ax.scatter(runs[x], runs["finetune_acc"], color=colours[layout], label=f"{layout} (n={len(runs)})")
        ax.set_xlabel(label)
    axes[1].set_xscale("log")
    axes[0].set(ylabel="fine-tuned test accuracy", title="Transfer: a point per fine-tuned run")
    axes[1].legend(title="layout", fontsize="small")
    fig.tight_layout()
    return fig


FIGURES = {
    "training_curves": training_curves,
    "accuracy_vs_loss": accuracy_vs_loss,
    "generalisation_gap": generalisation_gap,
    "capacity_vs_data": capacity_vs_data,
}


def save_figures(frame: pd.DataFrame, folder: str | Path) -> dict[str, Path]:
    """Every figure as ``folder/<name>.png``; ``transfer`` where runs were started from weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    tuned = "source" in frame and frame["source"].notna().any()
    for name, draw in {**FIGURES, **({"transfer": transfer} if tuned else {})}.items():
        fig = draw(frame)
        paths[name] = folder / f"{name}.png"
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)
    return paths
