"""Analysis numbers on hand-made run tables whose right answers are known, and the loader on real run folders."""

import json
import math
import re

import pandas as pd
import pytest

from ablations.analysis import accuracy_at_loss, describe_model, equal_loss_table, final_gap, load_runs, settings, summarise
from ablations.training.cli import main as train_main
from tests.wandb_records import OfflineApi, OfflineRun


def curve(run, layout, losses, accs, seed=0, data_size=1.0, warmup_steps=0.0, target=math.nan):
    """A run's evaluations every 10 steps; a flat tail (the last 10% of steps) makes it converged."""
    return pd.DataFrame({"run": run, "layout": layout, "data_size": data_size, "seed": seed,
                         "warmup_steps": warmup_steps, "target": target,
                         "target_reached": None if math.isnan(target) else min(losses) <= target,
                         "epoch": range(len(losses)), "step": [10 * (i + 1) for i in range(len(losses))],
                         "train_eval_loss": losses, "test_acc": accs,
                         "train_eval_acc": [1 - l / 4 for l in losses], "test_loss": [l + 0.5 for l in losses]})


@pytest.mark.parametrize("loss,expected", [(0.75, 0.7), (1.0, 0.6), (2.0, 0.2), (1.5, 0.4), (0.1, math.nan), (3.0, math.nan)])
def test_accuracy_interpolated_linearly_at_equal_training_loss(loss, expected):
    c = curve("a", "C-C-T-T", [2.0, 1.0, 0.5], [0.2, 0.6, 0.8])
    got = accuracy_at_loss(c, loss, scale="linear")
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_accuracy_interpolated_in_log_loss_by_default():
    c = curve("a", "C-C-T-T", [2.0, 1.0, 0.5], [0.2, 0.6, 0.8])
    assert accuracy_at_loss(c, 0.75) == pytest.approx(0.6 + 0.2 * math.log(0.75) / math.log(0.5))
    assert accuracy_at_loss(c, 1.0) == pytest.approx(0.6)
    # dropping the evaluation at or below the loss reads across the wider segment 2.0 -> 0.5
    assert accuracy_at_loss(c, 1.0, drop="below") == pytest.approx(0.2 + 0.6 * math.log(2.0) / math.log(4.0))
    assert accuracy_at_loss(c, 0.75, drop="above") == pytest.approx(0.2 + 0.6 * math.log(0.75 / 2) / math.log(0.25))


def test_first_crossing_counts_on_a_non_monotonic_curve():
    c = curve("a", "C-C-T-T", [2.0, 1.0, 1.4, 0.6], [0.2, 0.5, 0.4, 0.9])
    assert accuracy_at_loss(c, 1.2, scale="linear") == pytest.approx(0.2 + (0.5 - 0.2) * (1.2 - 2.0) / (1.0 - 2.0))


def test_equal_loss_ranks_the_better_generaliser_first():
    frame = pd.concat([curve("conv", "C-C-C-C", [2.0, 1.0, 0.5], [0.3, 0.7, 0.8]),
                       curve("vit", "VIT_REL", [2.0, 1.0, 0.5], [0.2, 0.4, 0.5])])
    table = equal_loss_table(frame, 1.0, scale="linear").set_index("layout")["test_acc_at_loss"]
    assert table["C-C-C-C"] == pytest.approx(0.7) and table["VIT_REL"] == pytest.approx(0.4)


def test_final_gap_and_summary_over_seeds():
    frame = pd.concat([curve("a0", "C-T-T-T", [1.0, 0.4], [0.5, 0.7], seed=0),
                       curve("a1", "C-T-T-T", [1.0, 0.8], [0.5, 0.6], seed=1)])
    gaps = final_gap(frame).set_index("run")
    assert gaps.loc["a0", "acc_gap"] == pytest.approx((1 - 0.4 / 4) - 0.7)
    assert gaps.loc["a1", "loss_gap"] == pytest.approx(0.5)
    stats = summarise(final_gap(frame), "test_acc").iloc[0]
    assert stats["mean"] == pytest.approx(0.65) and stats["std"] == pytest.approx(0.0707107, rel=1e-4) and stats["count"] == 2


def test_describe_model():
    assert describe_model("cctt_tiny") == ("C-C-T-T", "tiny")
    assert describe_model("vit_rel_paper") == ("VIT_REL", "paper")
    assert describe_model("C-T") == ("C-T", None)


BASE = ["--model.class_path=lightning_modules.classifier.ImageClassifier", "--model.init_args.mixup_alpha=0.0",
            "--model.init_args.model_args={depths: [1, 1], dims: [16, 32], stem_dim: 16, head_dim: 16}",
            "--data=datamodules.SyntheticDataModule", "--data.init_args.image_size=16", "--data.init_args.num_classes=4",
            "--data.init_args.train_size=64", "--data.init_args.test_size=16", "--data.init_args.batch_size=16",
            "--data.init_args.train_fraction=0.5",
            "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.logger=false", "--trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two real `ablate train` runs in a loose folder (no manifest), logged to W&B offline as well."""
    root = tmp_path_factory.mktemp("loose")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        for model, seed in (("C-T", 0), ("T-C", 1)):
            assert train_main([*BASE, f"--model.init_args.model={model}", f"--seed_everything={seed}",
                               "--wandb.enabled=true", f"--run_dir={root / f'{model}-{seed}'}"]) == 0
    return root


def test_load_runs_from_real_run_folders(two_runs):
    frame = load_runs(two_runs)
    assert list(frame.columns[:14]) == ["run", "layout", "model", "budget", "data_size", "seed", "params", "flops",
                                        "wall_time", "warmup_steps", "target", "target_reached", "epoch", "step"]
    assert (frame["warmup_steps"] == 1.0).all()  # warmup_epochs 1.0 x one batch per epoch (the log says so)
    assert {"train_loss", "train_eval_loss", "val_acc", "test_acc", "lr", "images_per_s"} <= set(frame.columns)
    assert (frame.groupby("run")["step"].min() == 1).all()  # the first evaluation comes after the first step
    assert set(frame["layout"]) == {"C-T", "T-C"} and set(frame["seed"]) == {0, 1}
    assert (frame["data_size"] == 0.5).all() and frame["params"].gt(0).all() and frame["test_acc"].notna().all()
    with pytest.raises(FileNotFoundError, match="no completed runs"):
        load_runs(two_runs / "T-C-1" / "checkpoints")


def per_run_table(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"run": f"{k}-{i}", "layout": k, "data_size": 1.0, "seed": i, "test_acc": v}
                         for k, vs in values.items() for i, v in enumerate(vs)])


BASE_SEEDS = [0.80, 0.70, 0.75, 0.85, 0.78]  # seeds differ far more than the layouts: only pairing resolves them


def test_paper_ordering_gets_a_verdict_per_relation_and_a_test_of_the_paper_claim():
    from ablations.analysis import PAPER_GENERALISATION, check_order

    base = pd.Series(BASE_SEEDS)
    jitter = pd.Series([0.001, 0.0, -0.001, 0.0005, -0.0005])
    table = per_run_table({
        "C-C-C-C": list(base + jitter), "C-C-C-T": list(base),       # within 0.1 point: equivalent
        "C-C-T-T": list(base - 0.05 + jitter),                       # 5 points below C-C-C-T: ≥ supported
        "C-T-T-T": list(base - 0.02 - jitter),                       # 3 points above C-C-T-T: > contradicted
        "VIT_REL": list(base - 0.32),                                # 30 points below: ≫ supported
    })
    checks = check_order(table, "test_acc", PAPER_GENERALISATION).set_index("pair")
    assert checks["verdict"].to_dict() == {"C-C-C-C ≈ C-C-C-T": "equivalent", "C-C-C-T ≥ C-C-T-T": "A better",
                                           "C-C-T-T > C-T-T-T": "B better", "C-T-T-T ≫ VIT_REL": "A better"}
    assert checks["paper"].to_dict() == {"C-C-C-C ≈ C-C-C-T": "supported", "C-C-C-T ≥ C-C-T-T": "supported",
                                         "C-C-T-T > C-T-T-T": "contradicted", "C-T-T-T ≫ VIT_REL": "supported"}
    assert checks.loc["C-C-T-T > C-T-T-T", "effect"] == pytest.approx(-3.0)  # in points, A − B
    assert (checks["n"] == 5).all() and checks["method"].str.contains("Holm over 4 relation").all()


def test_overlapping_seeds_are_inconclusive_lower_is_better_flips_and_a_missing_layout_is_not_comparable():
    from ablations.analysis import check_order

    noisy = per_run_table({"A": [0.5, 0.9, 0.6], "B": [0.7, 0.55, 0.8]})
    row = check_order(noisy, "test_acc", "A > B").iloc[0]
    assert row["verdict"] == "inconclusive" and row["seeds_needed"]  # and what would resolve it
    losses = per_run_table({"A": [0.1, 0.11, 0.12], "B": [0.5, 0.52, 0.55]})
    assert check_order(losses, "test_acc", "A > B", higher_is_better=False)["verdict"][0] == "A better"
    missing = check_order(losses, "test_acc", "A > C").iloc[0]
    assert missing["verdict"] == "not comparable" and missing["why"] == "no runs of C"


def test_pairs_are_matched_by_seed():
    """A layout better at every seed is found even when the seeds differ more than the layouts."""
    from ablations.analysis import check_order

    seeds_apart = per_run_table({"A": [0.50, 0.70, 0.90, 0.60], "B": [0.49, 0.68, 0.885, 0.59]})
    row = check_order(seeds_apart, "test_acc", "A > B").iloc[0]
    assert row["verdict"] == "A better" and row["n"] == 4 and row["low"] > 0  # unpaired, the spread would swamp it


def test_kept_predictions_add_the_test_sets_noise_to_a_relation():
    """Per-image predictions of every run of a pair: the relation carries the test set's share (the variance over
    images of the per-image difference, seed noise taken out), and the method says so; without them, it does not."""
    import numpy as np

    from ablations.analysis import check_order

    rng = np.random.default_rng(0)
    target = rng.integers(0, 10, 400)
    easy_for_a = rng.random(400) < 0.5  # images that favour A, and the rest B: a test-set effect
    predictions, rows = {}, []
    for seed in range(3):
        for layout, favoured in (("A", easy_for_a), ("B", ~easy_for_a)):
            correct = np.where(favoured, rng.random(400) < 0.95, rng.random(400) < 0.75)
            predictions[f"{layout}-{seed}"] = {"target": target, "pred": np.where(correct, target, (target + 1) % 10)}
            rows.append({"run": f"{layout}-{seed}", "layout": layout, "data_size": 1.0, "seed": seed,
                         "test_acc": correct.mean()})
    table = pd.DataFrame(rows)
    plain = check_order(table, "test_acc", "A > B").iloc[0]
    noisy = check_order(table, "test_acc", "A > B", predictions=predictions).iloc[0]
    assert "test set's sampling noise" in noisy["method"] and "test set" not in plain["method"]
    # Each image's expected difference is +-20 points (95% against 75%): a variance of 400 points^2 over images,
    # 400 / 400 images = 1 point^2 on the mean. Three seeds estimate it to +-0.2 (sd over test sets drawn like this
    # one); with the seeds' own noise left in it would read 2.6 here.
    assert noisy["image_var"] == pytest.approx(1.0, abs=0.5) and plain["image_var"] is None
    # the interval's coverage with this share is checked by simulation in test_verdicts.py


def test_order_syntax_errors_name_the_order():
    from ablations.analysis import parse_order

    assert parse_order("A >= B >> C ~ D") == [("A", "≥", "B"), ("B", "≫", "C"), ("C", "≈", "D")]
    with pytest.raises(ValueError, match="order 'A B' must alternate"):
        parse_order("A B")


def offline_api(folder) -> OfflineApi:
    """`wandb.Api()` over what the runs' offline W&B logs really recorded (their `.wandb` files)."""
    return OfflineApi([OfflineRun(p) for p in sorted(folder.iterdir()) if (p / "metrics.csv").exists()])


def test_wandb_and_local_tables_agree(two_runs):
    """The table read from W&B (config and history as the offline runs recorded them) equals the run folders'."""
    from ablations.analysis import load_wandb

    local = load_runs(two_runs)
    remote = load_wandb("entity/stacking-ablations", api=offline_api(two_runs))
    key = ["run", "step"]
    assert remote["wall_time"].notna().all()  # W&B's runtime: its own clock (whole seconds), not the run folder's
    columns = [c for c in local.columns if c != "wall_time"]
    pd.testing.assert_frame_equal(local.sort_values(key).reset_index(drop=True)[columns],
                                  remote.sort_values(key).reset_index(drop=True)[columns], check_dtype=False)


def test_wandb_runs_bring_their_per_image_predictions(two_runs):
    """The predictions each run uploaded to W&B come back with the frame, as the run folders' do."""
    import numpy as np

    from ablations.analysis import load_wandb

    local = load_runs(two_runs).attrs["predictions"]
    remote = load_wandb("entity/stacking-ablations", api=offline_api(two_runs)).attrs["predictions"]
    assert sorted(local) == sorted(remote) == ["C-T-0", "T-C-1"]
    for run in local:
        assert all(np.array_equal(local[run][key], remote[run][key]) for key in ("target", "pred", "loss"))


def test_capacity_uses_the_largest_data_size_and_the_lowest_loss():
    from ablations.analysis import capacity

    frame = pd.concat([curve("big-a", "C-C-T-T", [1.0, 0.2, 0.3], [0.5, 0.7, 0.7], data_size=1.0),
                       curve("big-b", "C-C-C-C", [1.0, 0.6, 0.5], [0.5, 0.6, 0.6], data_size=1.0),
                       curve("small", "C-C-T-T", [0.5, 0.01], [0.3, 0.3], data_size=0.1)])
    table = capacity(frame).set_index("run")
    assert list(table.index) == ["big-a", "big-b"]  # the small-data run does not count
    assert table.loc["big-a", "min_train_eval_loss"] == pytest.approx(0.2)
    assert table.loc["big-a", "max_train_eval_acc"] == pytest.approx(1 - 0.2 / 4)
    assert table.loc["big-b", "min_train_eval_loss"] == pytest.approx(0.5)


def test_comparison_loss_is_set_by_converged_runs_only():
    from ablations.analysis import comparison_loss, run_facts

    converged = curve("a", "C-C-C-C", [2.0, 1.0, 0.3, 0.3, 0.3], [0.3, 0.6, 0.8, 0.8, 0.8])
    falling = curve("b", "VIT_REL", [2.2, 1.5, 1.0, 0.8, 0.6], [0.2, 0.3, 0.4, 0.45, 0.5])
    facts = run_facts(pd.concat([converged, falling])).set_index("run")
    assert facts["converged"].to_dict() == {"a": True, "b": False}
    assert comparison_loss(facts) == pytest.approx(0.3)  # not b's 0.6: b was still falling
    assert math.isnan(comparison_loss(run_facts(falling)))  # nothing converged: no loss to compare at
    stopped = run_facts(curve("c", "C-C-C-C", [2.0, 1.0, 0.25], [0.3, 0.6, 0.8], target=0.3))
    assert comparison_loss(stopped) == 0.3 and stopped["converged"][0] is None  # a stopped run: its target


def test_generalisation_compares_each_data_size_at_its_own_loss():
    from ablations.analysis import generalisation

    frame = pd.concat([
        curve("a-small", "C-C-C-C", [2.0, 0.5, 0.1, 0.1], [0.3, 0.5, 0.6, 0.6], data_size=0.5),
        curve("b-small", "VIT_REL", [2.0, 1.0, 0.2, 0.2], [0.2, 0.3, 0.4, 0.4], data_size=0.5),
        curve("a-full", "C-C-C-C", [2.0, 1.0, 0.6, 0.6], [0.4, 0.7, 0.8, 0.8], data_size=1.0),
        curve("b-full", "VIT_REL", [2.0, 1.2, 0.8, 0.8], [0.3, 0.5, 0.6, 0.6], data_size=1.0),
    ])
    table = generalisation(frame).set_index("run")
    assert table.loc["a-small", "at_loss"] == pytest.approx(0.2) and table.loc["a-full", "at_loss"] == pytest.approx(0.8)
    assert table.loc["a-small", "test_acc_at_loss"] == pytest.approx(0.5 + 0.1 * math.log(0.2 / 0.5) / math.log(0.1 / 0.5))
    assert table.loc["b-small", "test_acc_at_loss"] == pytest.approx(0.4)
    assert table.loc["a-full", "test_acc_at_loss"] == pytest.approx(0.7 + 0.1 * math.log(0.8) / math.log(0.6))
    assert table.loc["b-full", "acc_gap"] == pytest.approx((1 - 0.8 / 4) - 0.6)


def test_a_reading_that_hangs_on_the_interpolation_is_not_robust():
    """A jumps from loss 1.0 (50%) to 0.01 (95%) between two evaluations; B is read exactly at 0.1 (80%). In log loss
    A reads 72.5% there, in linear loss 90.9%: B better one way, A better the other, so no verdict."""
    from ablations.analysis import check_order_at_equal_loss

    frames = []
    for seed, j in ((0, 0.0), (1, 0.005), (2, -0.005)):
        frames += [curve(f"a{seed}", "A", [2.0, 1.0, 0.01, 0.01, 0.01], [0.1, 0.5 + j, 0.95, 0.95, 0.95], seed=seed),
                   curve(f"b{seed}", "B", [2.0, 0.5, 0.1, 0.1, 0.1], [0.1, 0.6, 0.8 + j, 0.8 + j, 0.8 + j], seed=seed)]
    row = check_order_at_equal_loss(pd.concat(frames), "A > B").iloc[0]
    assert row["at_loss"] == pytest.approx(0.1)
    assert row["verdict"] == "not robust" and "log: B better" in row["why"] and "linear: A better" in row["why"]


def test_a_layout_that_never_reaches_the_loss_or_reaches_it_in_warm_up_is_not_comparable():
    from ablations.analysis import check_order_at_equal_loss

    frames = []
    for seed in range(3):
        frames += [curve(f"c{seed}", "C", [2.0, 0.5, 0.1, 0.1, 0.1], [0.1, 0.7, 0.9, 0.9, 0.9], seed=seed),
                   curve(f"v{seed}", "V", [2.0, 1.5, 1.2, 1.0, 0.8], [0.1, 0.2, 0.3, 0.4, 0.5], seed=seed),
                   curve(f"w{seed}", "W", [2.0, 0.05, 0.05, 0.05, 0.05], [0.1, 0.8, 0.8, 0.8, 0.8], seed=seed,
                         warmup_steps=25.0)]
    checks = check_order_at_equal_loss(pd.concat(frames), "C > V").iloc[0]
    assert checks["verdict"] == "not comparable" and checks["why"] == "V never reaches it (0.1) within the budget"
    warm = check_order_at_equal_loss(pd.concat(frames), "C > W").iloc[0]
    assert warm["verdict"] == "not comparable" and "W reaches 0.1 during warm-up (step 20 <= 25)" in warm["why"]


def test_capacity_reads_the_largest_data_size_unless_asked_for_all():
    from ablations.analysis import capacity

    frame = pd.concat([curve("s", "C-C-T-T", [2.0, 0.1], [0.1, 0.2], data_size=0.5),
                       curve("f", "C-C-T-T", [2.0, 0.4, 0.6], [0.1, 0.2, 0.3], data_size=1.0)])
    largest = capacity(frame)
    assert list(largest["run"]) == ["f"] and largest["min_train_eval_loss"][0] == pytest.approx(0.4)
    assert largest["max_train_eval_acc"][0] == pytest.approx(1 - 0.4 / 4)
    assert capacity(frame, largest_only=False).set_index("run")["min_train_eval_loss"].to_dict() == \
        pytest.approx({"s": 0.1, "f": 0.4})


def test_ranking_orders_layouts_with_intervals_around_their_means():
    from ablations.analysis import ranking

    table = ranking(per_run_table({"A": [0.5, 0.6], "B": [0.9, 0.8, 0.85], "C": [0.1]}), "test_acc")
    assert list(table["layout"]) == ["B", "A", "C"] and list(table["rank"]) == [1, 2, 3]
    b = table.iloc[0]
    half = 4.3027 * 0.05 / math.sqrt(3)  # t table: 97.5% quantile at 2 degrees of freedom; B's seeds have sd 0.05
    assert b["mean"] == pytest.approx(0.85) and b["n"] == 3
    assert (b["low"], b["high"]) == pytest.approx((0.85 - half, 0.85 + half), rel=1e-4)  # a t interval, not the seeds' range
    assert math.isnan(table.iloc[2]["low"])  # one seed: no interval
    assert list(ranking(per_run_table({"A": [2.0], "B": [1.0]}), "test_acc", higher_is_better=False)["layout"]) == ["B", "A"]


def paper_study() -> pd.DataFrame:
    """Five layouts x three seeds with known curves, evaluated densely: every run passes clean training loss 0.3
    at its third evaluation and its test accuracy stays flat from there, so every equal-loss reading is that
    accuracy; each settles at its own floor (the capacity), ViT_REL at 0.3."""
    at_03 = {"C-C-C-C": (0.80, 0.81, 0.805), "C-C-C-T": (0.81, 0.80, 0.805), "C-C-T-T": (0.78, 0.785, 0.775),
             "C-T-T-T": (0.70, 0.705, 0.69), "VIT_REL": (0.40, 0.402, 0.404)}
    floor = {"C-C-C-C": 0.25, "C-C-C-T": 0.20, "C-C-T-T": 0.05, "C-T-T-T": 0.05, "VIT_REL": 0.3}
    frames = []
    for seed in range(3):
        for layout, accs in at_03.items():
            low = floor[layout] * (1 + 0.01 * seed) if layout != "VIT_REL" else 0.3
            frames.append(curve(f"{layout}-{seed}", layout, [2.0, 1.0, 0.3, 0.3, 0.3, low, low],
                                [0.1, 0.5, *[accs[seed]] * 5], seed=seed))
    return pd.concat(frames)


def _verdicts(section: str, seeds: int = 3) -> dict[str, tuple[str, str]]:
    """{pair: (verdict, paper)} of the first table after a heading; every row names n and its method."""
    lines = next(block for block in section.split("\n\n") if block.startswith("|")).splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines]
    pair, n, method, verdict, paper = (cells[0].index(c) for c in ("pair", "n", "method", "verdict", "paper"))
    assert all(row[n] == str(seeds) and row[method].startswith("paired t") and "Holm over" in row[method]
               for row in cells[2:])
    return {row[pair]: (row[verdict], row[paper]) for row in cells[2:]}


def test_report_states_the_paper_orderings_verdicts(tmp_path):
    from ablations.plots import save_figures
    from ablations.report import build_report

    frame = paper_study()
    frame["train_loss"] = frame["train_eval_loss"]
    text = build_report(frame, "Study", "fifteen runs", save_figures(frame, tmp_path))
    at_loss = _verdicts(text.split("### Generalisation at equal clean training loss")[1])
    assert at_loss["C-C-C-C ≈ C-C-C-T"][0] == "inconclusive"  # ±1 point over 3 seeds: the margin is not resolved
    assert at_loss["C-T-T-T ≫ VIT_REL"] == ("A better", "supported")
    capacity = _verdicts(text.split("### Capacity at data size 1")[1])
    assert capacity["C-C-T-T ≈ C-T-T-T"] == ("equivalent", "supported")  # both fit to 0.05
    assert capacity["VIT_REL > C-C-C-T"] == ("B better", "contradicted")  # ViT_REL settles at 0.3, C-C-C-T at 0.2
    assert capacity["C-C-C-T > C-C-C-C"] == ("A better", "supported")
    assert "| C-C-C-C | 0.8050 ± 0.0050 (n=3) |" in text
    assert "## Exploratory: every pair of layouts" in text and "not as its findings" in text
    seeds = text.split("### Generalisation at equal clean training loss")[1].split("\n\n")[2]
    assert re.search(r"\| inconclusive \| not shown \| \d+ \(\d+–(\d+|> 1000)\) \|", seeds)  # seeds needed, with range
    assert all((tmp_path / f"{name}.png").stat().st_size > 0 for name in
               ("training_curves", "accuracy_vs_loss", "generalisation_gap", "capacity_vs_data"))


def test_runs_stopped_at_a_target_are_read_where_they_stopped():
    """Stopped at clean training loss 0.3: each run's last evaluation is its reading (no interpolation, so no
    variants); a layout that never got there, or got there in warm-up, is not comparable, and the stopped runs give
    no capacity verdict."""
    import numpy as np

    from ablations.analysis import capacity, check_order, check_order_at_equal_loss

    frames, predictions = [], {}
    target = np.arange(1000) % 10
    for seed, j in ((0, 0.0), (1, 0.01), (2, -0.01)):
        frames += [curve(f"a{seed}", "A", [2.0, 1.0, 0.5, 0.28], [0.1, 0.5, 0.7, 0.9 + j], seed=seed, target=0.3),
                   curve(f"b{seed}", "B", [2.0, 1.2, 0.6, 0.25], [0.1, 0.4, 0.6, 0.8 + j], seed=seed, target=0.3),
                   curve(f"c{seed}", "C", [2.0, 1.5, 1.2, 1.0], [0.1, 0.2, 0.3, 0.4], seed=seed, target=0.3),
                   curve(f"d{seed}", "D", [2.0, 0.2], [0.1, 0.6], seed=seed, target=0.3, warmup_steps=20.0)]
        for run, right in ((f"a{seed}", 90), (f"b{seed}", 80)):
            predictions[run] = {"target": target, "pred": np.where(np.arange(1000) < 10 * right, target, (target + 1) % 10)}
    frame = pd.concat(frames)
    checks = check_order_at_equal_loss(frame, "A > B > C", predictions=predictions).set_index("pair")
    ab = checks.loc["A > B"]
    assert ab["at_loss"] == 0.3 and ab["effect"] == pytest.approx(10.0) and ab["verdict"] == "A better"
    assert "test set's sampling noise" in ab["method"]
    assert checks.loc["B > C", "verdict"] == "not comparable"
    assert checks.loc["B > C", "why"] == "C did not reach the target loss (0.3) within the budget"
    warm = check_order_at_equal_loss(frame, "A > D").iloc[0]
    assert warm["verdict"] == "not comparable" and "D reaches 0.3 during warm-up (step 20 <= 20)" in warm["why"]
    fits = check_order(capacity(frame), "log_min_train_eval_loss", "A > B", False, "log_loss").iloc[0]
    assert fits["verdict"] == "not comparable" and fits["why"].startswith("runs stopped at a target loss")


def test_equal_loss_ordering_compares_each_pair_where_both_curves_overlap():
    """ViT settles at 1.0 while the convnets settle near 0.1 and 0.2: no loss is common to all, but each pair has
    one, and every curve is evaluated densely around it."""
    from ablations.analysis import check_order_at_equal_loss, comparison_loss, run_facts

    frames = []
    for seed, j in ((0, 0.0), (1, 0.01), (2, 0.005)):
        frames += [curve(f"cc-{seed}", "C-C", [0.9, 0.5, 0.35, 0.25, 0.18, 0.1 + j, 0.1 + j],
                         [0.2, 0.8 + j, 0.85 + j, 0.88 + j, 0.9 + j, 0.92 + j, 0.92 + j], seed=seed),
                   curve(f"ct-{seed}", "C-T", [2.0, 1.2, 0.6, 0.4, 0.3, 0.2 + j, 0.2 + j],
                         [0.2, 0.5 + j, 0.7 + j, 0.75 + j, 0.78 + j, 0.8 + j, 0.8 + j], seed=seed),
                   curve(f"vit-{seed}", "VIT", [2.5, 2.0, 1.5, 1.2, 1.1, 1.0 + j, 1.0 + j],
                         [0.1, 0.2 + j, 0.3 + j, 0.35 + j, 0.38 + j, 0.4 + j, 0.4 + j], seed=seed)]
    frame = pd.concat(frames)
    assert comparison_loss(run_facts(frame)) == pytest.approx(1.01)  # where all three could be read
    checks = check_order_at_equal_loss(frame, "C-C > C-T > VIT").set_index("pair")
    assert checks.loc["C-C > C-T", "at_loss"] == pytest.approx(0.21)
    assert checks.loc["C-T > VIT", "at_loss"] == pytest.approx(1.01)
    assert checks.loc["C-C > C-T", "verdict"] == checks.loc["C-T > VIT", "verdict"] == "A better"
    assert check_order_at_equal_loss(frame, "C-C > VIT2")["verdict"][0] == "not comparable"


def test_report_from_a_wandb_project_needs_an_output_folder(two_runs, tmp_path, monkeypatch, capsys):
    import ablations.analysis
    from ablations.cli import main as cli_main

    api = offline_api(two_runs)
    real = ablations.analysis.load_wandb
    monkeypatch.setattr(ablations.analysis, "load_wandb", lambda project: real(project, api=api))
    assert cli_main(["report", "wandb:entity/stacking-ablations", "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert text.startswith("# W&B project entity/stacking-ablations") and "| C-T | " in text
    assert (tmp_path / "report" / "training_curves.png").exists()
    assert cli_main(["report", "wandb:entity/stacking-ablations"]) == 2
    assert "needs --out FOLDER" in capsys.readouterr().err


REL_POS = "model.init_args.model_args.rel_pos"


def test_every_setting_of_a_sweep_is_kept_apart(tiny_study):
    """A sweep over rel_pos [pre, none] x two layouts x 2 seeds: pre and none are separate rows in the table, the
    report and the comparisons, never averaged as if they were more seeds."""
    from ablations.analysis import check_order_at_equal_loss, generalisation
    from ablations.report import write_report

    frame = load_runs(tiny_study)
    assert set(frame[REL_POS]) == {"pre", "none"}
    stats = summarise(generalisation(frame), "test_acc")
    assert len(stats) == 4 and (stats["count"] == 2).all() and set(stats[REL_POS]) == {"pre", "none"}
    checks = check_order_at_equal_loss(frame, "C-T > T-T")
    assert sorted(checks[REL_POS]) == ["none", "pre"] and (checks["n"] == 2).all()
    text = write_report(tiny_study).read_text()
    for rel_pos in ("pre", "none"):
        assert f"| C-T | {rel_pos} | " in text and f"| T-T | {rel_pos} | " in text
        assert f"| 1.0000 | {rel_pos} | C-T vs T-T | 2 | " in text  # the layout pairs, one row per setting
    assert "_(" not in text  # no table came out empty


def test_any_folder_of_runs_reports_and_twins_are_an_error(tiny_study, tmp_path, capsys):
    """Runs copied into a folder of one's own (no manifest): the settings are the config keys that differ. Two
    runs with the same settings and seed are an error naming both folders."""
    import shutil

    from ablations.cli import main as cli_main

    loose = tmp_path / "mine"
    runs = sorted(p for p in tiny_study.iterdir() if (p / "metrics.csv").exists())
    for run in runs[:4]:
        shutil.copytree(run, loose / "by-hand" / run.name, ignore=shutil.ignore_patterns("checkpoints"))
    frame = load_runs(loose)
    assert frame["run"].nunique() == 4 and {c for c in frame.columns if "." in c} == set(
        [REL_POS] if frame[REL_POS].nunique() > 1 else [])
    assert cli_main(["report", str(loose)]) == 0
    assert (loose / "report.md").read_text().startswith(f"# Runs under {loose}")
    shutil.copytree(runs[0], loose / "again", ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(ValueError, match=f"runs .*again and .*{runs[0].name} have the same settings and seed"):
        load_runs(loose)


def test_report_logs_its_tables_and_figures_to_one_wandb_run_in_the_sweeps_group(tiny_study, tmp_path, monkeypatch):
    """`ablate report --wandb`: read back from the offline run's .wandb log, the tables are wandb.Tables and the
    figures wandb.Images, in one run of job type report in the sweep's group."""
    from ablations.cli import main as cli_main

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "report"
    assert cli_main(["report", str(tiny_study), "--out", str(out), "--wandb"]) == 0
    run = OfflineRun(out)
    assert (run.group, run.job_type, run.name) == ("study", "report", "study-report"), run.__dict__
    logged = {k: v for row in run.rows for k, v in row.items() if k.startswith("report/")}
    assert logged["report/final test accuracy"]["_type"] == "table-file"
    assert logged["report/exploratory: layout pairs by final test accuracy"]["_type"] == "table-file"
    assert logged["report/training_curves"]["_type"] == "image-file"


def test_a_report_lists_runs_it_cannot_read_and_its_counts_match_its_tables(tiny_study, tmp_path, capsys):
    """A copy of a finished sweep with one truncated metrics.csv and one config.yaml missing: both are named with
    the reason, counted apart, and every table holds exactly the runs the header counts as completed."""
    import re
    import shutil

    from ablations.report import write_report

    copy = tmp_path / "study"
    shutil.copytree(tiny_study, copy, ignore=shutil.ignore_patterns("*.ckpt", "*.png", "report.md"))
    runs = sorted(p.name for p in copy.iterdir() if (p / "summary.json").exists())
    truncated, no_config = copy / runs[0] / "metrics.csv", copy / runs[1] / "config.yaml"
    lines = truncated.read_text().splitlines(keepends=True)
    truncated.write_text("".join(lines[: len(lines) // 2]))  # a copy cut short at a row's end
    no_config.unlink()
    text = write_report(copy).read_text()
    assert f"6 of {len(runs)} runs completed" in text
    assert re.search(rf"2 run\(s\) could not be read and are left out of every table: `{runs[0]}` \(metrics.csv holds "
                     rf"[012] epoch row\(s\), summary.json records 3\); `{runs[1]}` \(config.yaml missing\)", text)
    assert capsys.readouterr().err.startswith(f"ablate report: warning: 2 run(s) could not be read: {runs[0]} (")
    final_table = text.split("## Final test accuracy")[1].split("##")[0]
    assert sum(int(n) for n in re.findall(r"\(n=(\d+)\)", final_table)) == 6


def test_a_base_config_edited_between_launches_is_a_setting_not_a_seed(tiny_study, tmp_path):
    """Run ids hash the overrides, not the base config: a sweep relaunched after an edit of its base config reuses
    the runs already done and trains the rest with the new value. The differing key becomes a setting column,
    so the old and new runs are never averaged as seeds of one setting."""
    import shutil

    import yaml

    sweep = tmp_path / "study"
    shutil.copytree(tiny_study, sweep, ignore=shutil.ignore_patterns("checkpoints", "*.png", "report.md"))
    edited = sorted(p for p in sweep.iterdir() if (p / "config.yaml").exists())[0]
    config = yaml.safe_load((edited / "config.yaml").read_text())
    config["model"]["init_args"]["lr"] = 0.5
    (edited / "config.yaml").write_text(yaml.safe_dump(config))
    frame = load_runs(sweep)
    assert sorted(frame["model.init_args.lr"].unique()) == [0.002, 0.5]
    stats = summarise(final_gap(frame), "acc_gap")
    assert len(stats) == 5 and sorted(stats["count"]) == [1, 1, 2, 2, 2]  # the edited group split in two
    assert "model.init_args.lr" not in load_runs(tiny_study).columns  # an unedited sweep has only its grid axes


def test_a_run_recorded_before_an_option_existed_is_pooled_with_runs_at_its_default(tiny_study, tmp_path):
    """A config.yaml written before an option existed lacks it: the run had the option's default, so the report
    pools it with runs that name the default (no setting column, nothing split) and still tells a run at another
    value apart."""
    import shutil

    import yaml

    sweep = tmp_path / "study"
    shutil.copytree(tiny_study, sweep, ignore=shutil.ignore_patterns("checkpoints", "*.png", "report.md"))
    runs = sorted(p for p in sweep.iterdir() if (p / "config.yaml").exists())
    for run in runs[::2]:  # half the runs predate cutmix_alpha (default 0.0) and label_smoothing (default 0.1)
        config = yaml.safe_load((run / "config.yaml").read_text())
        del config["model"]["init_args"]["cutmix_alpha"]
        config["model"]["init_args"]["label_smoothing"] = 0.1
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    for run in runs[1::2]:
        config = yaml.safe_load((run / "config.yaml").read_text())
        del config["model"]["init_args"]["label_smoothing"]
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    frame = load_runs(sweep)
    assert not {"model.init_args.cutmix_alpha", "model.init_args.label_smoothing"} & set(frame.columns)
    assert settings(frame) == settings(load_runs(tiny_study))
    config = yaml.safe_load((runs[0] / "config.yaml").read_text())
    config["model"]["init_args"]["cutmix_alpha"] = 0.5  # a value other than the default is a setting
    (runs[0] / "config.yaml").write_text(yaml.safe_dump(config))
    assert sorted(load_runs(sweep)["model.init_args.cutmix_alpha"].unique()) == [0.0, 0.5]


def test_a_sweep_rerun_while_two_runs_still_train_names_them_and_so_does_its_report(tiny_study, tmp_path, capsys):
    """The sweep's process killed while two of its runs train on (their processes hold the runs' locks), then the
    sweep run again: it trains nothing, and its last line and the report's header name the two runs still running.
    Once their locks are free, a summary that still says running is a dead run: no longer named as running."""
    import shutil

    from ablations import runlock
    from ablations.cli import main as cli_main
    from ablations.report import write_report
    from tests.conftest import STUDY_SPEC

    root = tmp_path / "runs"
    shutil.copytree(tiny_study, root / "study", ignore=shutil.ignore_patterns("*.ckpt", "*.png", "report.md"))
    spec = tmp_path / "study.yaml"
    spec.write_text(STUDY_SPEC)
    runs = sorted(p for p in (root / "study").iterdir() if (p / "summary.json").exists())
    training = [run.name for run in runs[:2]]
    attempts = {run.name: (run / "attempts").read_text() for run in runs}
    held = []
    try:
        for run in runs[:2]:  # as their training processes would: a summary saying running, the lock held
            (run / "summary.json").write_text(json.dumps({"status": "running"}))
            held.append(runlock.try_acquire(run))
        assert cli_main(["sweep", str(spec), "--root", str(root)]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert last == (f"sweep study: 6 completed, 2 running; report: {root / 'study' / 'report.md'}; still running "
                        f"in another process: {', '.join(training)} (`ablate status {spec}` follows them)")
        assert {run.name: (run / "attempts").read_text() for run in runs} == attempts  # nothing trained again
        header = (root / "study" / "report.md").read_text().split("\n\n")[1]
        assert header.startswith(f"6 of 8 runs completed, 2 still running (`{training[0]}`, `{training[1]}`; the "
                                 "tables hold the runs completed so far: report again once they end); base config")
    finally:
        for fd in held:
            runlock.release(fd)
    header = write_report(root / "study").read_text().split("\n\n")[1]
    assert header.startswith("6 of 8 runs completed; base config")  # dead runs: nothing holds their locks


def test_the_report_says_how_far_each_layout_is_from_its_budget(tmp_path):
    """The paper compares at comparable size and compute: a layout 8% over its budget's parameters is named as
    compared at an unequal size, one 2% under its MACs is not, and a fine-tuned run (its cost at another
    resolution is no budget's) gets no miss."""
    import yaml

    from ablations.report import size_table
    from lightning_modules import run_folder
    from lightning_modules.backbones import BUDGETS

    tiny = BUDGETS["tiny"]
    cases = {"C-C-T-T": (1.08 * tiny.params, tiny.macs, None), "C-T-T-T": (tiny.params, 0.98 * tiny.macs, None),
             "C-C-C-T": (tiny.params, 4 * tiny.macs, "runs/pretrain/source")}
    for layout, (params, macs, source) in cases.items():
        for seed in (0, 1):
            run_dir = tmp_path / f"{layout}-s{seed}"
            run_dir.mkdir()
            (run_dir / "config.yaml").write_text(yaml.safe_dump({"seed_everything": seed, "model": {"init_args": {
                "model": layout, "budget": "tiny", "init_from": source}}, "data": {"init_args": {"train_fraction": 1.0}}}))
            run_folder.write_rows(run_dir, [{"epoch": 0, "step": 5, "train/loss": 1.0, "test/acc": 0.5}])
            run_folder.write_summary(run_dir, {"status": "completed", "params": int(params), "flops": int(macs)})
    table = size_table(load_runs(tmp_path)).set_index("layout")["miss of the budget"]
    assert table["C-C-T-T"] == "8.0% (over 5%: not at a comparable size)"
    assert table["C-T-T-T"] == "2.0%"
    assert table["C-C-C-T"] == ""
