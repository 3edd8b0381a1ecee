"""Nothing lost: runs killed at any point, preempted, or left with damaged files end as an uninterrupted run does.

Every fault test compares the metrics of a faulted-then-resumed run with those of one uninterrupted run (CPU,
deterministic), row by row, to the last digit.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ablations.training.cli import main as train_main
from lightning_modules.checkpoints import AtomicCheckpointIO, load_checked, read_summary, resume_checkpoint
from tests.test_train import SMALL_RUN, read_metrics, run_cli

RUN = [*SMALL_RUN, "--trainer.max_epochs=2"]
COLUMNS = ("epoch", "step", "train/loss", "train_eval/loss", "val/acc", "test/loss", "test/acc")


def rows(run_dir: Path) -> list[list[str]]:
    return [[r[c] for c in COLUMNS] for r in read_metrics(run_dir)]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """One uninterrupted run: the reference every faulted run must match."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert train_main([*RUN, f"--run_dir={run_dir}"]) == 0
    return run_dir


def assert_same_as(straight: Path, run_dir: Path) -> None:
    assert rows(run_dir) == rows(straight)  # every epoch's row once, with the same numbers
    assert summary(run_dir)["status"] == "completed"
    a, b = summary(straight)["final"], summary(run_dir)["final"]
    assert (a["test/loss"], a["test/acc"]) == (b["test/loss"], b["test/acc"])
    assert not list(run_dir.rglob("*-v[0-9]*.ckpt"))  # checkpoints replaced in place, never forked into -v1


@pytest.mark.parametrize("at,batch,extra", [
    pytest.param("validation", 0, [], id="validation"),  # during the last epoch's validation, after its first batch
    # after the last epoch's metrics row, before its checkpoint: the epoch runs again and its row is written once
    pytest.param("checkpoint", 0, [], id="checkpoint"),
    # half-way through writing the checkpoint file: the previous one is still whole; with loader workers, whose
    # iterator must be made after the resumed epoch is known
    pytest.param("checkpoint_write", 0, ["--data.init_args.num_workers=2"], id="checkpoint_write-workers"),
])
@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_equals_uninterrupted(straight, tmp_path, at, batch, extra):
    run_dir = tmp_path / "run"
    killer = [*extra, "--trainer.callbacks+=tests.helpers.KillOnce", "--trainer.callbacks.epoch=1", f"--trainer.callbacks.at={at}",
              f"--trainer.callbacks.batch={batch}", f"--trainer.callbacks.marker={tmp_path / 'killed'}"]
    first = run_cli(*RUN, *killer, f"--run_dir={run_dir}", check=False)
    assert first.returncode == -signal.SIGKILL and (tmp_path / "killed").read_text() == at
    assert summary(run_dir)["status"] == "running"  # never marked completed
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        load_checked(path)  # whatever is under a checkpoint's name is complete
    if at == "checkpoint_write":  # half a checkpoint is on disk, under a temporary name only
        assert len(list((run_dir / "checkpoints").glob(".*.ckpt.*.tmp"))) == 1
    assert train_main([*RUN, *killer, f"--run_dir={run_dir}"]) == 0  # the same command resumes
    assert_same_as(straight, run_dir)
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob("*.corrupt-*"))  # nothing half-written left


def test_preemption_signal_saves_and_stops_then_resumes_exactly(straight, tmp_path, capsys, name="SIGTERM"):
    """SLURM announces preemption (and the time limit, with --signal) by SIGTERM or SIGUSR1: the run saves
    last.ckpt mid-epoch, says interrupted, exits with code 3; the requeued command resumes mid-epoch exactly.
    (SIGUSR1 takes the same path: see the corrupt-checkpoint test, which stops its run with it.)"""
    run_dir = tmp_path / "run"
    before, before_usr1 = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    signaller = ["--trainer.callbacks+=tests.helpers.KillOnce", "--trainer.callbacks.epoch=1",
                 "--trainer.callbacks.batch=2", f"--trainer.callbacks.signal={name}",
                 f"--trainer.callbacks.marker={tmp_path / 'signalled'}"]
    assert train_main([*RUN, *signaller, f"--run_dir={run_dir}"]) == 3
    assert f"received {name}: saved" in capsys.readouterr().err
    interrupted = summary(run_dir)
    assert interrupted["status"] == "interrupted" and name in interrupted["reason"]
    checkpoint = load_checked(run_dir / "checkpoints" / "last.ckpt")
    # epoch 0's five batches and four of epoch 1: saved mid-epoch, after the batch that the evaluation after step
    # 8 follows (stopping before it, the resumed run would never make that evaluation)
    assert checkpoint["global_step"] == 5 + 4
    assert signal.getsignal(signal.SIGTERM) == before and signal.getsignal(signal.SIGUSR1) == before_usr1  # restored
    assert train_main([*RUN, *signaller, f"--run_dir={run_dir}"]) == 0
    assert_same_as(straight, run_dir)


@pytest.mark.slow
def test_sigterm_from_outside_stops_a_subprocess_cleanly(tmp_path):
    """As a scheduler sends it: to the `ablate train` process, from another process, while it trains."""
    import time

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ablations.cli", "train", *RUN, "--trainer.max_epochs=50",
                             f"--run_dir={run_dir}"], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    deadline = time.time() + 240
    while time.time() < deadline and (read_summary(run_dir) or {}).get("epochs", 0) < 1:  # an epoch has ended
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 3, err[-2000:]
    assert summary(run_dir)["status"] == "interrupted" and "SIGTERM" in summary(run_dir)["reason"]
    assert load_checked(run_dir / "checkpoints" / "last.ckpt")["epoch"] >= 1


def test_corrupt_checkpoint_and_summary_are_set_aside_and_the_run_resumes_from_the_previous_good_one(
        straight, tmp_path, capsys):
    run_dir = tmp_path / "run"
    stopper = ["--trainer.callbacks+=tests.helpers.KillOnce", "--trainer.callbacks.epoch=1",
               "--trainer.callbacks.batch=1", "--trainer.callbacks.signal=SIGUSR1",
               f"--trainer.callbacks.marker={tmp_path / 'stopped'}"]
    assert train_main([*RUN, *stopper, f"--run_dir={run_dir}"]) == 3  # last.ckpt mid-epoch 1, best.ckpt epoch 0
    assert summary(run_dir)["status"] == "interrupted" and "SIGUSR1" in summary(run_dir)["reason"]
    last, best = run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "best.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as a full disk or a non-atomic copy leaves it
    (run_dir / "summary.json").write_text('{"status": "comp')  # truncated
    capsys.readouterr()
    assert train_main([*RUN, *stopper, f"--run_dir={run_dir}"]) == 0
    err = capsys.readouterr().err
    assert f"{last} is unreadable" in err and f"{run_dir / 'summary.json'} is unreadable" in err
    kept = sorted(p.name.split(".corrupt-")[0] for p in run_dir.rglob("*.corrupt-*"))
    assert kept == ["last.ckpt", "summary.json"]  # kept aside, not deleted
    assert_same_as(straight, run_dir)  # resumed from best.ckpt (end of epoch 0): epoch 1 again, exactly


def test_no_readable_checkpoint_means_a_fresh_start(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"\x00" * 100)
    (folder / "best.ckpt").write_text("not a checkpoint")
    assert resume_checkpoint(folder) is None
    assert sorted(p.name.split(".corrupt-")[0] for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_a_checkpoint_cannot_execute_code(tmp_path):
    """weights_only=True: a pickle that would run a command is refused and set aside, and the command never runs."""
    _Payload.marker = tmp_path / "pwned"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with open(folder / "last.ckpt", "wb") as f:
        torch.save({"state_dict": {}, "loops": {}, "epoch": 0, "evil": _Payload()}, f)
    assert resume_checkpoint(folder) is None
    assert not _Payload.marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(next(folder.iterdir()))
    assert not _Payload.marker.exists()


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    good = {"state_dict": {"w": torch.ones(3)}, "loops": {}, "epoch": 0}
    io.save_checkpoint(good, path)

    def crash(checkpoint, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(io, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({**good, "epoch": 1}, path)
    assert torch.equal(load_checked(path)["state_dict"]["w"], torch.ones(3)) and load_checked(path)["epoch"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_unreadable_summary_is_not_completed(tmp_path, capsys):
    (tmp_path / "summary.json").write_bytes(b'{"status": "completed", "final": {"test/acc": 0.9')
    assert read_summary(tmp_path) is None
    assert "summary.json is unreadable" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists() and len(list(tmp_path.glob("summary.json.corrupt-*"))) == 1


def test_analysis_never_counts_an_unreadable_summary_as_completed(tmp_path):
    from ablations.analysis import load_runs

    run = tmp_path / "sweep" / "run"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,test/acc\n0,0.5\n")
    (run / "summary.json").write_text('{"status": "compl')
    with pytest.raises(FileNotFoundError, match="no completed runs"):
        load_runs(tmp_path / "sweep")


@pytest.mark.slow
@pytest.mark.parametrize("data", [["--data.init_args.device_data=true"],
                                  ["--data.init_args.device_data=false", "--data.init_args.num_workers=2"]],
                         ids=["device-path", "loader-workers"])
@pytest.mark.slow
def test_mid_epoch_resume_is_exact_with_mixup_and_stochastic_depth(tmp_path, data):
    """The randomness of the training step (MixUp's mixing weights and partners, stochastic depth's dropped paths)
    is seeded per step, so a preempted run that resumes mid-epoch draws what the uninterrupted one drew."""
    run = [*RUN, *data, "--model.init_args.mixup_alpha=0.8", "--model.init_args.drop_path=0.2"]
    assert train_main([*run, f"--run_dir={tmp_path / 'straight'}"]) == 0
    signaller = ["--trainer.callbacks+=tests.helpers.KillOnce", "--trainer.callbacks.epoch=1",
                 "--trainer.callbacks.batch=2", "--trainer.callbacks.signal=SIGUSR1",
                 f"--trainer.callbacks.marker={tmp_path / 'signalled'}"]
    assert train_main([*run, *signaller, f"--run_dir={tmp_path / 'run'}"]) == 3
    assert train_main([*run, *signaller, f"--run_dir={tmp_path / 'run'}"]) == 0
    assert_same_as(tmp_path / "straight", tmp_path / "run")


def test_a_resume_with_other_settings_is_refused_and_config_yaml_is_never_rewritten(straight, tmp_path, capsys):
    """A run folder belongs to one config. A rerun that changes a result-affecting setting (the learning rate, the
    model) is refused in one line naming the differing keys, before anything is built; one that changes only how
    the run is shown or logged resumes, exactly; config.yaml stays the first run's."""
    run_dir = tmp_path / "run"
    stopper = ["--trainer.callbacks+=tests.helpers.KillOnce", "--trainer.callbacks.epoch=1",
               "--trainer.callbacks.batch=1", "--trainer.callbacks.signal=SIGUSR1",
               f"--trainer.callbacks.marker={tmp_path / 'stopped'}"]
    assert train_main([*RUN, *stopper, f"--run_dir={run_dir}"]) == 3  # last.ckpt mid-epoch 1
    config = (run_dir / "config.yaml").read_text()
    capsys.readouterr()
    for change, differ in ((["--model.init_args.lr=0.05"], "model.init_args.lr 0.003 -> 0.05"),
                           (["--model.init_args.model=T-T"], "model.init_args.model C-T -> T-T"),
                           (["--trainer.max_epochs=3", "--seed_everything=1"],
                            "seed_everything 0 -> 1; trainer.max_epochs 2 -> 3")):
        assert train_main([*RUN, *stopper, *change, f"--run_dir={run_dir}"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"ablate train: error: run folder {run_dir} holds a run with other settings ({differ}); a resume must "
            "repeat them: choose a new --run_dir for these settings")
        assert (run_dir / "config.yaml").read_text() == config
        assert summary(run_dir)["status"] == "interrupted"
    watched = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--wandb.project=other",
               "--checkpoint_every_n_steps=100"]
    assert train_main([*RUN, *stopper, *watched, f"--run_dir={run_dir}"]) == 0
    assert_same_as(straight, run_dir)
    assert not list(run_dir.rglob("*.corrupt-*"))  # resumed from its own last.ckpt, not started again
    assert (run_dir / "config.yaml").read_text() == config


def test_the_default_run_folder_depends_only_on_result_settings(tmp_path, monkeypatch):
    """The same command lands in the same folder with or without a terminal (progress bar, model summary), with
    W&B on or off and any number of loader workers; a changed learning rate or seed gets its own."""
    from ablations.training.cli import AblateCLI

    seen = []

    def stop(self):
        seen.append(self.run_dir)
        raise SystemExit(0)

    monkeypatch.setattr(AblateCLI, "instantiate_classes", stop)
    base = [*SMALL_RUN, f"--runs_root={tmp_path}"]
    variants = [[], "terminal", ["--trainer.enable_progress_bar=false", "--data.init_args.num_workers=2",
                                 "--wandb.enabled=true", "--wandb.project=p", "--wandb.tags=[a]"],
                ["--model.init_args.lr=0.01"], ["--seed_everything=1"]]
    for extra in variants:
        with monkeypatch.context() as mp:
            mp.setattr(sys.stderr, "isatty", lambda: extra == "terminal")
            with pytest.raises(SystemExit):
                train_main([*base, *([] if extra == "terminal" else extra)])
    assert seen[0] == seen[1] == seen[2] and len(set(seen)) == 3
    assert seen[0].parent == tmp_path and seen[0].name.startswith("C-T-synthetic-")
