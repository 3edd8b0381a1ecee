"""One `ablate train` command's hold on its run folder (``ablations.training.run_setup``): a failed run is written
down once, with the kind that decides a sweep's retry, the line the user saw and the run's own record; a folder the
command made but never set a run up in is gone when it ends; the lock is released either way."""

import json

import pytest

from ablations import runlock
from ablations.training.cli import main as train_main
from tests.test_train import SMALL_RUN


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("named", [True, False], ids=["--run_dir", "default run folder"])
def test_out_of_memory_is_recorded_as_oom_with_the_line_the_user_saw(tmp_path, capsys, named):
    args = [*SMALL_RUN, "--trainer.callbacks+=tests.helpers.OutOfMemoryAt"]
    assert train_main([*args, f"--run_dir={tmp_path / 'run'}" if named else f"--runs_root={tmp_path}"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("ablate train: error: out of memory: batch_size=16 does not fit in memory")
    [run_dir] = [path.parent for path in tmp_path.rglob("summary.json")]
    record = summary(run_dir)
    assert (record["status"], record["failure"]) == ("failed", "oom")  # oom: a sweep tries it again
    assert record["reason"] == line.removeprefix("ablate train: error: ")
    assert record["params"] > 0 and record["run_dir"] == str(run_dir)  # the run's own record, not the failure alone
    assert not runlock.is_held(run_dir)


def test_a_crash_is_recorded_with_its_error_and_raised(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="segfault-like"):
        train_main([*SMALL_RUN, "--trainer.callbacks+=tests.helpers.CrashOnce",
                    f"--trainer.callbacks.marker={tmp_path / 'crashed'}", f"--run_dir={run_dir}"])
    record = summary(run_dir)
    assert (record["status"], record["failure"]) == ("failed", "crash")
    assert record["reason"] == "RuntimeError: segfault-like crash of a flaky node"
    assert not runlock.is_held(run_dir)


def test_a_folder_a_refused_command_made_is_removed_and_one_it_found_says_why(tmp_path, capsys):
    """A sweep makes the folder before the run starts: a run that cannot be built says why there; a folder the
    command made itself would hold nothing but that, and is gone."""
    made, found = tmp_path / "made", tmp_path / "found"
    found.mkdir()
    for run_dir in (made, found):
        assert train_main([*SMALL_RUN, "--model.init_args.model=C-Q-T", f"--run_dir={run_dir}"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1].removeprefix("ablate train: error: ")
    assert not made.exists()
    record = summary(found)
    assert (record["status"], record["failure"], record["reason"]) == ("failed", "config", line)
    assert "unknown stage type 'Q'" in line and not runlock.is_held(found)
