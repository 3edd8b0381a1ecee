"""The transfer comparison: fine-tuned runs linked to the runs they started from, on run folders written here in the
on-disk format; verdicts checked against plain scipy and, by simulation, against a known truth."""

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from ablations.analysis import load_runs, transfer_checks, transfer_verdicts
from ablations.cli import main as cli_main
from lightning_modules import run_folder

LAYOUTS = ("C-C-T-T", "C-T-T-T")


IMAGES = 200


def correct(acc, seed):
    """Which of the test images a run with accuracy ``acc`` gets right (a seed-dependent set)."""
    right = np.zeros(IMAGES, dtype=bool)
    right[np.random.default_rng(seed).permutation(IMAGES)[:round(acc * IMAGES)]] = True
    return right


def write_run(run_dir, layout, seed, final_loss, final_acc, init_from=None, status="completed", classes=None):
    """A run folder as `ablate train` leaves it: config.yaml, metrics.csv (three epochs, the last at ``final_loss``
    and ``final_acc``), summary.json and predictions.npz (``correct(final_acc, seed)``)."""
    config = {"seed_everything": seed, "trainer": {"accelerator": "cpu"},
              "model": {"init_args": {"model": layout, "warmup_epochs": 0.0, "init_from": init_from}},
              "data": {"init_args": {"train_fraction": 1.0, "classes": classes}}}
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    losses, accs = [4 * final_loss, 2 * final_loss, final_loss], [final_acc - 0.2, final_acc - 0.1, final_acc]
    rows = [{"epoch": i, "step": 10 * (i + 1), "train/loss": loss, "train_eval/loss": loss,
             "train_eval/acc": 1 - loss / 4, "test/acc": acc, "test/loss": loss + 0.5}
            for i, (loss, acc) in enumerate(zip(losses, accs))]
    run_folder.write_rows(run_dir, rows)
    run_folder.write_summary(run_dir, {"status": status, "epochs": len(rows), "wall_time": 1.0})
    target = np.arange(IMAGES) % 5
    run_folder.write_predictions(run_dir, {"target": target, "pred": np.where(correct(final_acc, seed), target,
                                                                             (target + 1) % 5)})


def name(layout, seed):
    return f"{layout.lower().replace('-', '')}-s{seed}"


# pre-training: equal fits (C-C-T-T's accuracy within 0.1 point of C-T-T-T's, its loss within 1%);
# fine-tuning: C-C-T-T ahead by 3 points (+/- 0.5)
PRE = {("C-C-T-T", s): (0.200 * (1 + d), 0.800 + a) for s, d, a in [(0, 0.01, 0.001), (1, -0.005, -0.0005), (2, 0.0, 0.0)]}
PRE |= {("C-T-T-T", s): (0.200, 0.800) for s in range(3)}
TUNED = {("C-C-T-T", s): 0.90 + d for s, d in [(0, 0.005), (1, -0.005), (2, 0.002)]}
TUNED |= {("C-T-T-T", s): 0.87 for s in range(3)}


def write_study(root, relative=True, skip=()):
    """Pre-training runs under ``root/pretrain``, fine-tuning runs under ``root/finetune`` recording their sources
    as a chained sweep does (``pretrain/ID`` from ``root``, or absolute); sources in ``skip`` are not written."""
    for (layout, seed), (loss, acc) in PRE.items():
        if (layout, seed) not in skip:
            write_run(root / "pretrain" / name(layout, seed), layout, seed, loss, acc, classes=[0, 1, 2, 3, 4])
    for (layout, seed), acc in TUNED.items():
        source = root / "pretrain" / name(layout, seed)
        write_run(root / "finetune" / name(layout, seed), layout, seed, 0.1, acc, classes=[5, 6, 7, 8, 9],
                  init_from=str(source.relative_to(root) if relative else source))


@pytest.mark.parametrize("relative", [True, False], ids=["recorded relative", "recorded absolute"])
def test_each_finetuned_run_is_linked_to_its_source_in_another_folder(tmp_path, relative):
    write_study(tmp_path, relative)
    table = transfer_checks(load_runs(tmp_path / "finetune"))["linked runs"].set_index("run")
    assert sorted(table.index) == sorted(name(l, s) for l, s in TUNED)
    for (layout, seed), acc in TUNED.items():
        row = table.loc[name(layout, seed)]
        loss, pre_acc = PRE[(layout, seed)]
        assert row["source_run"] == f"pretrain/{name(layout, seed)}" and row["source_seed"] == seed
        assert row["pretrain_loss"] == pytest.approx(loss) and row["pretrain_acc"] == pytest.approx(pre_acc)
        assert row["finetune_acc"] == pytest.approx(acc) and pd.isna(row["not_comparable"])


def test_each_family_counts_the_test_set_noise_of_its_own_runs(tmp_path):
    """The fine-tuned runs' predictions in the transfer verdict, the sources' in the pre-training accuracy one."""
    from ablations.verdicts import image_variance

    write_study(tmp_path)
    checks = transfer_checks(load_runs(tmp_path / "finetune"))
    for family, values in (("transfer", TUNED), ("pre-training accuracy", {k: v[1] for k, v in PRE.items()})):
        a, b = ([correct(values[(layout, s)], s) for s in range(3)] for layout in LAYOUTS)
        row = checks[family].iloc[0]
        assert row["image_var"] == pytest.approx(image_variance(np.array(a), np.array(b)) * 100 ** 2)
        assert "the test set's sampling noise" in row["method"]
    assert pd.isna(checks["pre-training loss"].iloc[0]["image_var"])  # no per-image record of a training loss


def test_verdicts_equal_a_plain_scipy_computation(tmp_path):
    write_study(tmp_path)
    for run_dir in tmp_path.glob("*/*"):  # the seeds alone: scipy's paired t
        (run_dir / run_folder.PREDICTIONS).unlink()
    checks = transfer_checks(load_runs(tmp_path / "finetune"))
    seeds = range(3)
    tuned = np.array([TUNED[("C-C-T-T", s)] - TUNED[("C-T-T-T", s)] for s in seeds]) * 100
    row = checks["transfer"].iloc[0]
    t = stats.ttest_rel([TUNED[("C-C-T-T", s)] * 100 for s in seeds], [TUNED[("C-T-T-T", s)] * 100 for s in seeds])
    low, high = stats.t.interval(0.95, 2, loc=tuned.mean(), scale=stats.sem(tuned))
    assert row["pair"] == "C-C-T-T > C-T-T-T" and row["n"] == 3 and row["family"] == 1
    assert row["effect"] == pytest.approx(tuned.mean()) and (row["low"], row["high"]) == pytest.approx((low, high))
    assert row["p_holm"] == pytest.approx(t.pvalue) and t.pvalue < 0.05 and row["verdict"] == "A better"
    assert row["paper"] == "supported"  # superiority, one-sided: half the two-sided p of a positive effect
    assert "paired t over 3 seed(s)" in row["method"] and "margin 1 points" in row["method"]
    # pre-training accuracy: TOST at the 1-point margin, both one-sided tests by scipy
    pre = np.array([PRE[("C-C-T-T", s)][1] - PRE[("C-T-T-T", s)][1] for s in seeds]) * 100
    tost = max(stats.ttest_1samp(pre, -1.0, alternative="greater").pvalue,
               stats.ttest_1samp(pre, 1.0, alternative="less").pvalue)
    acc = checks["pre-training accuracy"].iloc[0]
    assert acc["pair"] == "C-C-T-T ≈ C-T-T-T" and tost < 0.05 and acc["verdict"] == "equivalent"
    # pre-training loss: log units, B's minus A's, TOST at 0.1
    pre_loss = np.array([math.log(PRE[("C-T-T-T", s)][0]) - math.log(PRE[("C-C-T-T", s)][0]) for s in seeds])
    loss = checks["pre-training loss"].iloc[0]
    assert loss["effect"] == pytest.approx(pre_loss.mean()) and loss["verdict"] == "equivalent"
    assert loss["p_holm"] == pytest.approx(stats.ttest_1samp(pre_loss, 0.0).pvalue)
    assert row["pre-training fit"] == "equivalent" and row["reading"] == "equal pre-training fit, different transfer"


def test_the_summarys_resolved_source_is_read_and_a_moved_tree_still_links(tmp_path):
    """summary.json's record (an absolute run folder) over the config's spelling; after the study moves, the
    source is found as SWEEP/RUN from a folder above the fine-tuning run."""
    write_study(tmp_path / "before", relative=False)
    for run_dir in (tmp_path / "before" / "finetune").iterdir():
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        source = config["model"]["init_args"]["init_from"]
        config["model"]["init_args"]["init_from"] = "a spelling that names nothing"
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        summary = run_folder.load_summary(run_dir)
        run_folder.write_summary(run_dir, {**summary, "init_from": {"kind": "run", "run_dir": source}})
    (tmp_path / "before").rename(tmp_path / "after")
    table = transfer_checks(load_runs(tmp_path / "after" / "finetune"))["linked runs"]
    assert table["not_comparable"].isna().all() and len(table) == len(TUNED)
    assert all(s.startswith(str(tmp_path / "after" / "pretrain")) for s in table["source"])


@pytest.mark.parametrize("given", ["timm:coatnet_0_224", "{tmp}/weights.pth"], ids=["timm", "a weights file"])
def test_a_source_that_is_no_run_folder_is_said_to_have_no_pre_training_record(tmp_path, given):
    write_study(tmp_path)
    given = given.format(tmp=tmp_path)
    (tmp_path / "weights.pth").write_bytes(b"weights")
    run_dir = tmp_path / "finetune" / name("C-C-T-T", 0)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["model"]["init_args"]["init_from"] = given
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    table = transfer_checks(load_runs(tmp_path / "finetune"))["linked runs"].set_index("run")
    assert table.loc[name("C-C-T-T", 0), "not_comparable"] == f"source {given} is not a run folder: no pre-training record"


def test_a_source_given_as_a_checkpoint_of_a_run_is_that_run(tmp_path):
    """``RUN/checkpoints/best.ckpt`` (a chain with checkpoint: best) links to RUN's pre-training fit."""
    write_study(tmp_path)
    for run_dir in (tmp_path / "finetune").iterdir():
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        config["model"]["init_args"]["init_from"] += "/checkpoints/best.ckpt"
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    table = transfer_checks(load_runs(tmp_path / "finetune"))["linked runs"].set_index("run")
    assert table["not_comparable"].isna().all()
    assert table.loc[name("C-T-T-T", 2), "source_run"] == f"pretrain/{name('C-T-T-T', 2)}"


def test_a_missing_source_is_reported_not_dropped(tmp_path):
    write_study(tmp_path, skip={("C-T-T-T", 1)})
    checks = transfer_checks(load_runs(tmp_path / "finetune"))
    table = checks["linked runs"].set_index("run")
    assert len(table) == len(TUNED)
    why = table.loc[name("C-T-T-T", 1), "not_comparable"]
    assert why == f"source pretrain/{name('C-T-T-T', 1)} not found"
    assert math.isnan(table.loc[name("C-T-T-T", 1), "pretrain_acc"])
    row = checks["transfer"].iloc[0]
    assert row["verdict"] == "not comparable" and row["why"] == why
    assert row["pre-training fit"] == f"not comparable: {why}"


def test_an_unfinished_source_is_named_with_its_status(tmp_path):
    write_study(tmp_path)
    summary = run_folder.load_summary(tmp_path / "pretrain" / name("C-C-T-T", 0))
    run_folder.write_summary(tmp_path / "pretrain" / name("C-C-T-T", 0), {**summary, "status": "running"})
    table = transfer_checks(load_runs(tmp_path / "finetune"))["linked runs"].set_index("run")
    assert table.loc[name("C-C-T-T", 0), "not_comparable"].endswith("is not completed (running)")


def test_unequal_pre_training_fits_are_said_beside_the_transfer_verdict(tmp_path, monkeypatch):
    monkeypatch.setitem(PRE, ("C-C-T-T", 0), (0.100, 0.85))  # one seed far apart: the fits are not shown equal
    write_study(tmp_path)
    row = transfer_checks(load_runs(tmp_path / "finetune"))["transfer"].iloc[0]
    assert row["verdict"] == "A better"
    assert row["pre-training fit"] == "not shown equivalent (accuracy inconclusive, loss inconclusive)"
    assert row["reading"] == "different transfer, but the pre-training fits are not shown equivalent"


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["finetune", "."], ids=["fine-tuning sweep", "folder holding both"])
def test_report_writes_a_transfer_section(tmp_path, folder, capsys):
    write_study(tmp_path)
    assert cli_main(["report", str(tmp_path / folder)]) == 0
    text = (tmp_path / folder / "report.md").read_text()
    section = text[text.index("## Transfer"):]
    assert "C-C-T-T > C-T-T-T" in section and "equal pre-training fit, different transfer" in section
    assert f"pretrain/{name('C-T-T-T', 2)}" in section  # each fine-tuned run beside its source
    assert "](transfer.png)" in text and (tmp_path / folder / "transfer.png").exists()


def simulated_table(rng, seeds, transfer_effect, pre_effect=0.0):
    """A linked-runs table of two layouts: per seed a shared seed effect plus noise (sd 1 point) on the fine-tuned
    accuracy, and pre-training fits that differ by ``pre_effect`` points."""
    rows = []
    for seed in range(seeds):
        shared = rng.normal(0.80, 0.02)
        for layout, shift in zip(LAYOUTS, (transfer_effect, 0.0)):
            pre_acc = 0.7 + (pre_effect if layout == LAYOUTS[0] else 0) / 100 + rng.normal(0, 0.001)
            rows.append({"run": f"{layout}-{seed}", "layout": layout, "data_size": 1.0, "seed": seed,
                         "source": f"pre/{layout}-{seed}", "source_seed": seed, "pretrain_acc": pre_acc,
                         "log_pretrain_loss": math.log(0.2) + rng.normal(0, 0.005),
                         "finetune_acc": shared + shift / 100 + rng.normal(0, 0.01), "not_comparable": None})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_simulated_studies_find_a_real_effect_and_no_false_one():
    """5 seeds, 1 point of noise: with no layout effect a `better` verdict comes at about the nominal 5%; an effect
    of 3 points is found nearly always, and the equal pre-training fits are shown equal."""
    rng = np.random.default_rng(0)
    null = [transfer_verdicts(simulated_table(rng, 5, 0.0))["transfer"].iloc[0]["verdict"] for _ in range(200)]
    false = sum(v in ("A better", "B better") for v in null) / len(null)
    assert false <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / len(null))
    assert set(null) <= {"A better", "B better", "inconclusive", "equivalent"}
    real = [transfer_verdicts(simulated_table(rng, 5, 3.0))["transfer"].iloc[0] for _ in range(50)]
    assert sum(r["verdict"] == "A better" for r in real) >= 45
    assert sum(r["reading"] == "equal pre-training fit, different transfer" for r in real) >= 45
    # pre-training fits 3 points apart are never called equal
    apart = [transfer_verdicts(simulated_table(rng, 5, 3.0, pre_effect=3.0))["transfer"].iloc[0] for _ in range(20)]
    assert all(r["pre-training fit"] != "equivalent" for r in apart)


@pytest.mark.slow
def test_notebook_shows_the_reports_transfer_tables(tmp_path, monkeypatch):
    """The notebook's transfer cell shows the report's own transfer tables, on a folder holding both sweeps."""
    import json

    from ablations import analysis
    from ablations.report import report_tables
    from tests.test_notebooks import NOTEBOOKS

    monkeypatch.setenv("MPLBACKEND", "Agg")
    write_study(tmp_path)
    frame = load_runs(tmp_path)
    monkeypatch.setattr(analysis, "load_source", lambda source: frame)
    shown = []
    namespace = {"display": shown.append}
    cells = json.loads(NOTEBOOKS[0].read_text())["cells"]
    source = "".join("".join(c["source"]) + "\n" for c in cells if c["cell_type"] == "code")
    exec(source, namespace)
    expected = [t for title, t in report_tables(frame).items() if title.startswith("transfer: ")]
    transfer = [t for t in shown if any(t.equals(e) for e in expected)]
    assert len(expected) == 4 and len(transfer) == 4  # two layouts: no exploratory family beside the test
    assert "equal pre-training fit, different transfer" in set(expected[1]["reading"])


def test_digits_keep_the_classes_asked_for_labelled_in_their_order():
    """The transfer demo's split: digits 5-9 only, labelled 0-4, their test images those of the full test split."""
    from datamodules import DigitsDataModule

    full_train, full_test = DigitsDataModule()._arrays
    data = DigitsDataModule(classes=[5, 6, 7, 8, 9])
    train, test = data._arrays
    assert data.num_classes == 5
    for part, full in ((train, full_train), (test, full_test)):
        kept = [i for i, t in enumerate(full.targets) if t >= 5]
        assert part.targets == [full.targets[i] - 5 for i in kept]
        assert np.array_equal(part.data, full.data[kept])


@pytest.mark.parametrize("classes", [[], [1, 1], [3, 10]], ids=["none", "repeated", "not a digit"])
def test_bad_digit_classes_are_one_line(classes):
    from datamodules import DigitsDataModule

    with pytest.raises(ValueError, match=r"^--data.init_args.classes .* is not valid; expected distinct digits 0-9"):
        DigitsDataModule(classes=classes)


def test_the_transfer_demo_refuses_another_root_before_any_run(tmp_path, capsys):
    """Its fine-tuning spec chains onto runs/transfer_demo_pretrain: another --root is one line, exit 2, no run."""
    assert cli_main(["demo", "--transfer", "--root", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ablate demo: error: --root {tmp_path / 'elsewhere'} is not valid with --transfer")
    assert len(err.splitlines()) == 1 and not (tmp_path / "elsewhere").exists()


def test_the_transfer_demo_takes_runs_however_it_is_spelled(tmp_path, capsys, monkeypatch):
    """An absolute path to runs/ under the working directory is the default root, not another one."""
    import ablations.cli

    class Started(Exception):
        pass

    def first_sweep(args):
        raise Started(args.root)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ablations.cli, "cmd_sweep", first_sweep)
    with pytest.raises(Started, match=str(tmp_path / "runs")):  # accepted: the first sweep starts there
        cli_main(["demo", "--transfer", "--root", str(tmp_path / "runs")])


def test_the_transfer_demo_specs_chain_each_fine_tuning_run_to_its_layout_and_seed():
    from ablations.cli import TRANSFER_SPECS

    pretrain, finetune = (yaml.safe_load(p.read_text()) for p in TRANSFER_SPECS)
    assert finetune["init_from"]["sweep"] == f"runs/{pretrain['name']}"
    assert finetune["grid"] == pretrain["grid"] and finetune["budget"] == pretrain["budget"]
    assert set(pretrain["set"]["data.init_args.classes"]).isdisjoint(finetune["set"]["data.init_args.classes"])


def test_one_source_fine_tuned_three_times_is_one_pre_training_pair_not_three(tmp_path):
    """A chain matched by layout alone: three fine-tuning seeds start from each layout's one source. Their transfer
    is paired by the fine-tuned seeds (n=3); the sources' fits are one pair (n=1: no verdict), never `equivalent`
    from three copies of one difference; the report names the runs whose source has another seed."""
    from ablations.report import _transfer_section
    from ablations.verdicts import MARGINS

    for layout in LAYOUTS:
        write_run(tmp_path / "pretrain" / name(layout, 0), layout, 0, *PRE[(layout, 0)], classes=[0, 1, 2, 3, 4])
        for seed in range(3):
            write_run(tmp_path / "finetune" / name(layout, seed), layout, seed, 0.1, TUNED[(layout, seed)],
                      classes=[5, 6, 7, 8, 9], init_from=f"pretrain/{name(layout, 0)}")
    checks = transfer_checks(load_runs(tmp_path / "finetune"))
    assert checks["transfer"].iloc[0]["n"] == 3 and checks["transfer"].iloc[0]["verdict"] == "A better"
    for family in ("pre-training accuracy", "pre-training loss"):
        row = checks[family].iloc[0]
        assert row["n"] == 1 and row["verdict"] == "inconclusive", (family, row.to_dict())
    assert checks["transfer"].iloc[0]["pre-training fit"] == ("not shown equivalent (accuracy inconclusive, "
                                                              "loss inconclusive)")
    assert "exploratory: fine-tuned layout pairs" not in checks  # with two layouts it would be the test above
    text = "\n".join(_transfer_section({f"transfer: {k}": v for k, v in checks.items()}, MARGINS))
    assert ("4 fine-tuned run(s) started from a source of another seed (a chain matched without the seed): "
            f"{name('C-C-T-T', 1)} (seed 1) from pretrain/{name('C-C-T-T', 0)} (seed 0)") in text
    assert "Exploratory" not in text
    assert "| layout | data_size | seed | run | source | source_seed |" in text  # the data size shown, as everywhere
