"""What `ablate train` records for comparing runs statistically: stopping at a target clean training loss (exact
across kills and preemption), denser evaluations, per-image test predictions and whether a run converged."""

import signal
from pathlib import Path

import numpy as np
import pytest

from ablations.training.cli import main as train_main
from lightning_modules import run_folder
from lightning_modules.checkpoints import load_checked
from lightning_modules.curves import convergence
from tests.test_faults import rows, summary
from tests.test_train import read_metrics, run_cli

# digits, a tiny model: 144 training images in batches of 32 are 4 steps an epoch, 12 in all
RUN = ["--config=ablations/configs/digits_tiny.yaml", "--model.init_args.model=C-T",
       "--model.init_args.model_args={depths: [1, 1], dims: [16, 32], stem_dim: 16, head_dim: 16}",
       "--model.init_args.lr=0.005", "--data.init_args.train_samples=160", "--data.init_args.batch_size=32",
       "--trainer.max_epochs=3", "--eval_every_n_steps=3"]
STEPS_PER_EPOCH = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A run without a target: its curve says where a target is first reached."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert train_main([*RUN, f"--run_dir={run_dir}"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def target(reference) -> tuple[str, int]:
    """A target (as typed) and the step where the reference curve first reaches it: a mid-epoch evaluation after
    the first epoch, so that stopping there ends an epoch early and a resume can start from an epoch's end. The
    target is that evaluation's own loss: "at or below" is tested at its edge."""
    best = float("inf")
    for row in read_metrics(reference):
        loss = float(row["train_eval/loss"])
        if loss < best and int(row["epoch"]) >= 1 and int(row["step"]) % STEPS_PER_EPOCH:
            return row["train_eval/loss"], int(row["step"])
        best = min(best, loss)
    pytest.fail("the reference curve has no new lowest loss in the middle of a later epoch")


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, target) -> Path:
    """The same run with the target: uninterrupted, the reference for the faulted ones."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    assert train_main([*RUN, f"--target_loss={target[0]}", f"--run_dir={run_dir}"]) == 0
    return run_dir


def test_eval_every_n_steps_adds_an_evaluation_after_every_kth_step(reference):
    steps = [int(r["step"]) for r in read_metrics(reference)]
    powers, epoch_ends, every_3 = {1, 2, 4, 8}, {4, 8, 12}, {3, 6, 9, 12}
    assert steps == sorted(powers | epoch_ends | every_3)


def test_stops_at_the_first_evaluation_at_or_below_the_target(reference, target, stopped):
    loss, step = float(target[0]), target[1]
    got = read_metrics(stopped)
    assert int(got[-1]["step"]) == step  # no later row
    assert all(float(r["train_eval/loss"]) > loss for r in got[:-1]) and float(got[-1]["train_eval/loss"]) <= loss
    before = [r for r in rows(reference) if int(r[1]) < step]
    assert rows(stopped)[:-1] == before  # the same run up to the stop
    record = summary(stopped)
    assert record["status"] == "completed"
    assert record["target"] == {"loss": loss, "reached": True, "step": step, "epoch": step // STEPS_PER_EPOCH}
    assert record["convergence"] is None  # not trained to its budget
    # the stop's row ends the (shortened) epoch: its training loss and learning rate, and the final test there
    assert got[-1]["train/loss"] != "" and got[-1]["lr"] != "" and record["final"]["step"] == step
    assert load_checked(stopped / "checkpoints" / "last.ckpt")["global_step"] == step
    predictions = run_folder.read_predictions(stopped)
    assert (predictions["pred"] == predictions["target"]).mean() == pytest.approx(record["final"]["test/acc"], abs=1e-6)


@pytest.mark.parametrize("at,epoch,signal_name,extra,saved", [
    # after the stop's last.ckpt, while testing: the resumed run trains no further and tests the model at the stop
    pytest.param("test", 0, "SIGKILL", [], "stop", id="sigkill-while-testing"),
    # during the stop's evaluation, with a checkpoint due every 3 steps: none is saved in front of an evaluation
    # (the resumed run would skip it), so the run resumes after step 5 and evaluates step 6 again
    pytest.param("validation", 1, "SIGKILL", ["--checkpoint_every_n_steps=3"], 5, id="sigkill-in-the-stops-evaluation"),
    # as the stop's last.ckpt is about to be written: resumed from the previous epoch's end, the stop comes again
    pytest.param("checkpoint", 1, "SIGKILL", [], 4, id="sigkill-before-the-stops-checkpoint"),
    # preempted mid-epoch before the stop (after step 5): resumed mid-epoch, it stops at the next evaluation
    pytest.param("train", 1, "SIGTERM", [], 5, id="sigterm-before-the-stop"),
])
@pytest.mark.slow
def test_killed_or_preempted_then_resumed_stops_where_an_uninterrupted_run_stops(stopped, target, tmp_path, at, epoch,
                                                                                signal_name, extra, saved):
    run_dir = tmp_path / "run"
    fault = [*extra, f"--target_loss={target[0]}", "--trainer.callbacks+=tests.helpers.KillOnce",
             f"--trainer.callbacks.epoch={epoch}", f"--trainer.callbacks.at={at}", "--trainer.callbacks.batch=0",
             f"--trainer.callbacks.signal={signal_name}", f"--trainer.callbacks.marker={tmp_path / 'killed'}"]
    if signal_name == "SIGKILL":
        assert run_cli(*RUN, *fault, f"--run_dir={run_dir}", check=False).returncode == -signal.SIGKILL
        assert summary(run_dir)["status"] == "running"
    else:
        assert train_main([*RUN, *fault, f"--run_dir={run_dir}"]) == 3
        assert summary(run_dir)["status"] == "interrupted"
    assert (tmp_path / "killed").read_text() == at
    saved = target[1] if saved == "stop" else saved  # the step of the checkpoint the resume starts from
    assert load_checked(run_dir / "checkpoints" / "last.ckpt")["global_step"] == saved
    assert train_main([*RUN, *fault, f"--run_dir={run_dir}"]) == 0  # the same command resumes
    assert rows(run_dir) == rows(stopped)
    a, b = summary(stopped), summary(run_dir)
    assert b["status"] == "completed" and a["target"] == b["target"] and b["convergence"] is None
    assert {k: v for k, v in a["final"].items() if k not in ("epoch_time", "images_per_s")} == \
        {k: v for k, v in b["final"].items() if k not in ("epoch_time", "images_per_s")}
    assert load_checked(run_dir / "checkpoints" / "last.ckpt")["global_step"] == target[1]  # trained no further
    pa, pb = run_folder.read_predictions(stopped), run_folder.read_predictions(run_dir)
    assert all(np.array_equal(pa[k], pb[k]) for k in ("target", "pred", "loss"))


def test_a_target_never_reached_completes_and_says_so(reference, tmp_path):
    run_dir = tmp_path / "run"
    assert train_main([*RUN, "--target_loss=1e-6", f"--run_dir={run_dir}"]) == 0
    record = summary(run_dir)
    assert record["status"] == "completed"
    assert record["target"] == {"loss": 1e-6, "reached": False, "step": None, "epoch": None}
    assert rows(run_dir) == rows(reference)  # trained to its budget, as without a target
    assert record["convergence"] == summary(reference)["convergence"] and record["convergence"] is not None
    assert summary(reference)["target"] is None  # no target asked for


def test_predictions_pair_image_by_image_with_the_test_set(reference):
    from datamodules import DigitsDataModule

    predictions = run_folder.read_predictions(reference)
    assert sorted(predictions) == ["loss", "pred", "target"]
    assert predictions["target"].dtype == predictions["pred"].dtype == np.uint8 and predictions["loss"].dtype == np.float32
    assert np.array_equal(predictions["target"], np.asarray(DigitsDataModule().load_test().targets))
    final = summary(reference)["final"]
    assert (predictions["pred"] == predictions["target"]).mean() == pytest.approx(final["test/acc"], abs=1e-6)
    assert predictions["loss"].mean() == pytest.approx(final["test/loss"], rel=1e-5)
    assert run_folder.read_predictions(reference / "checkpoints") is None  # a folder without any


def test_the_summary_says_whether_the_run_converged(reference):
    record = summary(reference)["convergence"]
    evaluations = [(int(r["step"]), float(r["train_eval/loss"])) for r in read_metrics(reference)]
    assert record == convergence(*zip(*evaluations), total_steps=3 * STEPS_PER_EPOCH)


@pytest.mark.parametrize("steps,losses,total,expected", [
    # the window (steps >= 90) holds 90 and 100: L0 = 1.0, L1 = 0.96, a 4% fall
    ([10, 50, 90, 100], [3.0, 1.5, 1.0, 0.96], 100, (0.04, True)),
    ([10, 50, 90, 100], [3.0, 1.5, 1.0, 0.9], 100, (0.1, False)),
    # only the last evaluation in the window: L0 is the one before it (step 50)
    ([10, 50, 100], [3.0, 2.0, 1.0], 100, (0.5, False)),
    # a loss that rose at the end has not fallen: converged
    ([10, 95, 100], [3.0, 1.0, 1.2], 100, (-0.2, True)),
    # the window starts at (1 - 0.1) * 20 = 18, inclusive
    ([1, 2, 4, 8, 16, 18, 20], [2.3, 2.2, 2.0, 1.5, 1.05, 1.0, 0.951], 20, (0.049, True)),
    ([0, 5], [0.0, 0.0], 5, (0.0, True)),  # a loss of zero cannot fall
])
def test_convergence_on_hand_made_curves(steps, losses, total, expected):
    out = convergence(steps, losses, total)
    assert (out["rel_change"], out["converged"]) == (pytest.approx(expected[0]), expected[1])
    assert out["rule"] == "clean training loss fell by <= 5% over the last 10% of steps"


def test_convergence_window_and_tolerance_are_parameters():
    steps, losses = [10, 50, 90, 100], [3.0, 1.5, 1.0, 0.9]
    out = convergence(steps, losses, 100, last_fraction=0.5, tolerance=0.5)
    assert out["rel_change"] == pytest.approx(0.4) and out["converged"]  # L0 = 1.5 at step 50
    assert out["rule"] == "clean training loss fell by <= 50% over the last 50% of steps"
    assert convergence([100], [1.0], 100)["converged"] is None  # one evaluation tells nothing
