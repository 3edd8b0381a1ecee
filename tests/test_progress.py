"""`ablate status`: epochs, accuracies and ETAs read from hand-made run folders with known epoch times."""

import io
import json
import os
import time
from pathlib import Path

import pytest

from ablations import runlock
from ablations.cli import main as cli_main
from ablations.progress import collect, read_run, render, watch

HEADER = "epoch,step,val/acc,test/acc,epoch_time\n"
HELD: dict[str, int] = {}  # run id -> the lock this test process holds for it, as a sweep would


def make_run(folder: Path, run_id: str, max_epochs: int, rows: list[str], summary: dict | None = None,
             running: bool = False, now: float = 0.0) -> None:
    run = folder / run_id
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"trainer:\n  max_epochs: {max_epochs}\n")
    os.utime(run / "config.yaml", (now - 100, now - 100))
    if rows:
        (run / "metrics.csv").write_text(HEADER + "".join(r + "\n" for r in rows))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    if running:  # held by this (live) process, as a sweep would
        HELD[run_id] = runlock.try_acquire(run)
        (run / "attempts").write_text("1")
        os.utime(run / "attempts", (now - 40, now - 40))
        if rows:
            os.utime(run / "metrics.csv", (now - 5, now - 5))  # the last epoch ended 5 s ago


def overrides(model: str, seed: int, epochs: int) -> dict:
    return {"model.init_args.model": model, "seed_everything": seed, "trainer.max_epochs": epochs}


@pytest.fixture
def sweep(tmp_path):
    """m1: one completed (4 x 10 s epochs in a 46 s run), one running (12 s, 14 s, then a mid-epoch evaluation
    row without an epoch time, 5 s into epoch 2), one pending; m2 (2 epochs): one failed after a 30 s epoch, one
    pending."""
    now = time.time()
    folder = tmp_path / "runs" / "hand"
    runs = {"m1-s0": overrides("m1", 0, 4), "m1-s1": overrides("m1", 1, 4), "m1-s2": overrides("m1", 2, 4),
            "m2-s0": overrides("m2", 0, 2), "m2-s1": overrides("m2", 1, 2)}
    make_run(folder, "m1-s0", 4, [f"{e},{e},0.{5 + e},0.{4 + e},10" for e in range(4)],
             {"status": "completed", "wall_time": 46.0})
    make_run(folder, "m1-s1", 4, ["0,10,0.5,0.45,12", "1,20,0.52,0.5,14", "2,25,0.55,0.53,"], {"status": "running"},
             running=True, now=now)
    make_run(folder, "m2-s0", 2, ["0,10,0.3,0.3,30"], {"status": "failed", "failure": "non_finite",
                                                       "reason": "training loss became nan at step 12"})
    (folder / "manifest.json").write_text(json.dumps(
        {"name": "hand", "config": None, "runs": [{"id": k, "axes": {}, "overrides": v} for k, v in runs.items()]}))
    yield folder, now
    while HELD:
        runlock.release(HELD.popitem()[1])


def test_each_run_shows_epoch_accuracies_and_an_eta_from_its_epoch_times(sweep):
    folder, now = sweep
    name, runs = collect(folder, now=now)
    by_id = {r.id: r for r in runs}
    assert name == "hand" and [r.status for r in runs] == ["completed", "running", "pending", "failed", "pending"]
    running = by_id["m1-s1"]
    assert (running.epochs_done, running.max_epochs) == (2, 4)  # the evaluation row is not a finished epoch
    assert (running.val_acc, running.test_acc) == (0.55, 0.53)  # the latest values, from that row
    assert running.elapsed == pytest.approx(12 + 14 + 5, abs=0.01)
    # mean epoch 13 s: 8 s left of epoch 2 (5 s in), then epoch 3
    assert running.remaining == pytest.approx(13 - 5 + 13, abs=0.01)
    # pending: the epochs of its seed siblings (10, 10, 10, 10, 12, 14: mean 11) x 4 + 6 s of start-up and test
    assert by_id["m1-s2"].remaining == pytest.approx(4 * 11 + 6)
    assert by_id["m2-s1"].remaining == pytest.approx(2 * 30 + 6)  # its own model's failed run measured 30 s
    assert by_id["m1-s0"].elapsed == 46.0 and by_id["m1-s0"].remaining is None
    (folder / "m1-s0" / "metrics.csv").write_text("epoch,step,val/acc\n0,5,0.5\n0,10,0.6\n")  # evaluations only
    assert (read_run(folder / "m1-s0", {}).epochs_done, read_run(folder / "m1-s0", {}).val_acc) == (0, 0.6)
    text = render(name, runs, slots=None, now=now)
    assert "\n    (non_finite: training loss became nan at step 12)\n" in text  # under the failed run's row
    # one slot (one run now running): 21 s, then 50 s, then 66 s
    assert text.splitlines()[-1].startswith("hand: 1 completed, 1 running, 1 failed, 2 pending of 5; ETA 2m17s")
    assert "on 1 slot" in text
    # two slots: m1-s2 starts now (50 s), m2-s1 after the running run (21 + 66 s)
    assert "ETA 1m27s" in render(name, runs, slots=2, now=now)


def test_a_run_just_started_and_a_run_timed_by_its_folder(sweep):
    folder, now = sweep
    started = folder / "m1-s2"  # running for 7 s, no epoch yet: start-up and epoch 0 still to come
    make_run(folder, "m1-s2", 4, [], running=True, now=now)
    os.utime(started / "attempts", (now - 7, now - 7))
    done = folder / "m1-s0"  # one attempt: its process ran from the attempt's start to its last summary
    (done / "attempts").write_text("1")
    os.utime(done / "attempts", (now - 200, now - 200))
    os.utime(done / "summary.json", (now - 150, now - 150))
    runs = {r.id: r for r in collect(folder, now=now)[1]}
    assert runs["m1-s0"].elapsed == pytest.approx(50) and runs["m1-s0"].overhead == pytest.approx(10)
    # mean epoch 11 s (m1-s0 and m1-s1), overhead 10 s: 3 epochs after (11 + 10 - 7) s
    assert runs["m1-s2"].status == "running" and runs["m1-s2"].remaining == pytest.approx(3 * 11 + 14, abs=0.01)


def test_status_of_a_spec_and_of_its_folder_agree_and_report_takes_a_spec(sweep, capsys, monkeypatch):
    import types

    import ablations.progress

    folder, now = sweep
    clock = types.SimpleNamespace(time=lambda: now, localtime=time.localtime, strftime=time.strftime, sleep=time.sleep)
    monkeypatch.setattr(ablations.progress, "time", clock)  # loading the spec takes a while: the same moment
    spec = folder.parent.parent / "hand.yaml"
    config = Path(__file__).resolve().parents[1] / "ablations/configs/digits_tiny.yaml"
    spec.write_text(f"name: hand\nconfig: {config}\ngrid: {{seed_everything: [0]}}\n")
    assert cli_main(["status", str(folder), "--slots", "2"]) == 0
    by_folder = capsys.readouterr().out
    assert cli_main(["status", str(spec), "--root", str(folder.parent), "--slots", "2"]) == 0
    assert capsys.readouterr().out == by_folder
    row = next(line for line in by_folder.splitlines() if " m1-s1 " in line).split()
    assert row[:5] == ["running", "m1-s1", "2/4", "0.5500", "0.5300"] and row[-1] == "21s"
    assert "ETA 1m27s" in by_folder
    assert cli_main(["status", str(folder), "--slots", "0"]) == 2
    assert "--slots 0 must be at least 1" in capsys.readouterr().err
    assert cli_main(["status", str(folder.parent / "none")]) == 2
    assert "none is neither a sweep spec nor a folder" in capsys.readouterr().err
    (folder.parent / "empty").mkdir()
    assert cli_main(["status", str(folder.parent / "empty")]) == 2
    said = capsys.readouterr().err
    assert "empty holds no runs (a sweep folder has manifest.json" in said
    assert cli_main(["report", str(folder.parent / "empty")]) == 2  # the same line, and no report.md
    assert capsys.readouterr().err == said.replace("ablate status", "ablate report")
    assert not (folder.parent / "empty" / "report.md").exists()
    assert cli_main(["status", str(folder.parent)]) == 0  # any folder of run folders, as `ablate report` takes
    assert [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:3]] == [
        ["completed", "m1-s0", "4/4"], ["running", "m1-s1", "2/4"]]
    assert cli_main(["status", str(folder), "--watch", "0"]) == 2
    assert "--watch 0 must be a positive number of seconds" in capsys.readouterr().err
    other = folder.parent / "other"  # a sweep with no run finished yet: its report says so
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"name": "other", "config": str(config), "budget": None,
                                                               "grid": {"seed_everything": [0]},
                                                               "runs": [{"id": "o-s0", "axes": {}, "overrides": {}}]}))
    spec.write_text(spec.read_text().replace("name: hand", "name: other"))
    assert cli_main(["report", str(spec), "--root", str(folder.parent)]) == 0
    assert capsys.readouterr().out.strip() == str(other / "report.md")
    assert (other / "report.md").read_text().startswith("# Sweep other\n\n0 of 1 runs completed; base config")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_redraws_on_a_terminal_and_prints_changes_elsewhere(sweep):
    folder, _ = sweep
    screen = Terminal()
    watch(folder, "runs", slots=None, every=0.01, out=screen, rounds=2)
    assert screen.getvalue().count("\x1b[H\x1b[2J") == 2 and "ETA" in screen.getvalue()
    log = io.StringIO()
    watch(folder, "runs", slots=None, every=0.01, out=log, rounds=2)
    lines = log.getvalue().splitlines()
    assert "\x1b" not in log.getvalue()
    assert sum(" m1-s1 " in line for line in lines) == 1  # unchanged runs are not printed again
    assert sum(line.startswith("hand: ") for line in lines) == 2  # the sweep's line every round
    for run_id in ("m1-s1", "m1-s2", "m2-s1"):  # nothing left to wait for: one round, then it returns
        (folder / run_id).mkdir(exist_ok=True)
        runlock.release(HELD.pop(run_id, None))
        (folder / run_id / "summary.json").write_text(json.dumps({"status": "completed"}))
    done = io.StringIO()
    watch(folder, "runs", slots=None, every=60, out=done)
    assert done.getvalue().splitlines()[-1] == "hand: 4 completed, 0 running, 1 failed of 5"


def test_still_running_is_a_live_lock_not_a_summary(sweep):
    """The runs a report names as still running are those `ablate status` shows running: a live process holds
    the lock. A summary that says running, its lock free, is a dead run; a folder without a manifest is searched."""
    from ablations.progress import still_running

    folder, _ = sweep
    (folder / "m1-s0" / "lock").write_text("")  # a lock file nobody holds
    assert still_running(folder) == ["m1-s1"]
    (folder / "manifest.json").unlink()
    assert still_running(folder.parent) == ["hand/m1-s1"]
    runlock.release(HELD.pop("m1-s1"))
    assert json.loads((folder / "m1-s1" / "summary.json").read_text())["status"] == "running"
    assert still_running(folder) == [] and still_running(folder.parent) == []
