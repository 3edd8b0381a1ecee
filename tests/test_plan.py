"""`ablate plan`: the seeds each relation needs and their cost, from a pilot whose spread and times are known."""

import re

import pytest
import yaml

from ablations.cli import main as cli_main
from ablations.verdicts import format_seeds, seeds_for_sd
from lightning_modules import run_folder
from tests.specs import ROOT
from tests.test_analysis import paper_study

SPEC = f"""
name: planned
config: {ROOT / 'ablations/configs/digits_tiny.yaml'}
budget: tiny
grid:
  layout: [VIT_REL, C-C-C-C, C-C-C-T, C-C-T-T, C-T-T-T]
  data.init_args.train_fraction: [1.0]
  seed_everything: [0, 1, 2]
"""


def write_pilot(folder, wall_time: float = 30.0):
    """The paper study's fifteen runs as run folders, as `ablate train` writes them (config, metrics, summary)."""
    for run, curve in paper_study().groupby("run"):
        first = curve.iloc[0]
        run_dir = folder / run
        config = {"seed_everything": int(first["seed"]), "trainer": {"accelerator": "cpu"},
                  "model": {"init_args": {"model": first["layout"], "warmup_epochs": 0.0}},
                  "data": {"init_args": {"train_fraction": 1.0}}}
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        rows = [{"epoch": int(r.epoch), "step": int(r.step), "train/loss": r.train_eval_loss,
                 "train_eval/loss": r.train_eval_loss, "train_eval/acc": r.train_eval_acc, "test/acc": r.test_acc,
                 "test/loss": r.test_loss} for r in curve.itertuples()]
        run_folder.write_rows(run_dir, rows)
        run_folder.write_summary(run_dir, {"status": "completed", "epochs": len(rows), "wall_time": wall_time})


def test_plan_gives_each_relation_its_seeds_and_the_study_its_cost(tmp_path, capsys):
    write_pilot(tmp_path / "pilot")
    spec = tmp_path / "planned.yaml"
    spec.write_text(SPEC)
    assert cli_main(["plan", str(spec), "--pilot", str(tmp_path / "pilot")]) == 0
    text = capsys.readouterr().out
    # C-C-C-C ≈ C-C-C-T at equal loss: paired differences -1, +1, 0 points (sd 1) over 3 seeds, a family of 4
    expected = seeds_for_sd(1.0, 3, 1.0, None, 0.05 / 4)
    row = next(line for line in text.splitlines() if "generalisation at equal loss" in line and "C-C-C-C ≈ C-C-C-T" in line)
    assert f"| {format_seeds(expected)} |" in row and "| 3 |" in row
    seeds = int(re.search(r"at \*\*(\d+) seeds\*\*", text).group(1))
    assert seeds >= expected["seeds"]
    assert f"{seeds * 5} runs (5 per seed) x 30 s per run on the pilot's cpu slots" in text
    assert f"= {seeds * 5 * 30 / 3600:.2f} slot-hours" in text


def test_plan_refuses_a_pilot_without_the_specs_layouts(tmp_path, capsys):
    write_pilot(tmp_path / "pilot")
    spec = tmp_path / "other.yaml"
    spec.write_text(SPEC.replace("[VIT_REL, C-C-C-C, C-C-C-T, C-C-T-T, C-T-T-T]", "[C-C-W-W, C-C-G-G]"))
    assert cli_main(["plan", str(spec), "--pilot", str(tmp_path / "pilot")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablate plan: error: pilot ") and "at least two of them" in err and len(err.splitlines()) == 1
    assert cli_main(["plan", str(spec), "--pilot", str(tmp_path / "nothing")]) == 2
    assert "no completed runs" in capsys.readouterr().err


@pytest.mark.parametrize("margin,needle", [("accuracy=abc", "margin accuracy='abc' is not valid; expected a positive number"),
                                           ("acc=1", "margin 'acc' is not a metric kind; valid: accuracy, log_loss"),
                                           ("accuracy", "--margin expects KEY=VALUE")])
def test_a_bad_margin_is_one_line_before_anything_is_read(tmp_path, capsys, margin, needle):
    write_pilot(tmp_path / "pilot")
    assert cli_main(["report", str(tmp_path / "pilot"), "--margin", margin]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.splitlines()) == 1 and not (tmp_path / "pilot" / "report.md").exists()
