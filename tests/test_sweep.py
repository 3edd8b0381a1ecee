"""Sweeps: grid expansion with stable ids, locks, a small parallel sweep on CPU, idempotent re-runs, the report."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ablations.cli import main as cli_main
from ablations.sweep import SweepSpec, read_status, run_sweep, sweep_status
from tests.specs import tiny_spec

ROOT = Path(__file__).resolve().parents[1]

TINY_SPEC = tiny_spec("tiny", "  model.init_args.model: [C-T, T-C]\n  seed_everything: [0, 1]\n")


def write_spec(tmp_path, text=TINY_SPEC) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_demo_spec_expands_to_the_five_layouts_with_stable_ids():
    spec = SweepSpec.load(ROOT / "ablations/sweeps/demo.yaml")
    runs = spec.expand()
    assert len(runs) == 5 * 2 * 3
    models = {r.overrides["model.init_args.model"] for r in runs}
    assert models == {"vit_rel_tiny", "cccc_tiny", "ccct_tiny", "cctt_tiny", "cttt_tiny"}
    assert [r.id for r in runs] == [r.id for r in SweepSpec.load(ROOT / "ablations/sweeps/demo.yaml").expand()]
    assert len({r.id for r in runs}) == len(runs)
    assert runs[0].id.startswith("vit_rel_tiny-f0.5-s0-")


@pytest.mark.parametrize("text,needle", [
    ("name: x\nconfig: c.yaml\ngrid: {layout: [C-C-T-T]}\n", "the layout axis needs a budget"),
    (f"name: x\nconfig: {ROOT / 'ablations/configs/digits_tiny.yaml'}\nbudget: tiny\ngrid: {{layout: [C-Q-T-T]}}\n",
     "unknown stage type 'Q' in layout 'C-Q-T-T'"),
    ("name: x\nconfig: c.yaml\ngird: {}\n", "unknown key\\(s\\) gird"),
    ("name: x\ngrid: {seed_everything: [0]}\n", "needs a 'config' entry"),
])
def test_bad_specs_name_the_problem(tmp_path, text, needle):
    with pytest.raises(ValueError, match=needle):
        SweepSpec.load(write_spec(tmp_path, text))


def test_two_trainings_on_one_run_folder_the_second_is_refused_naming_the_first(tmp_path, capsys):
    """While `ablate train` trains into a folder, a second one (here with another lr) is refused in one line naming
    the first's pid and host, and touches nothing; once the first is SIGKILLed the OS has freed the folder."""
    import signal
    import socket
    import time

    from ablations import runlock
    from ablations.training.cli import main as train_main
    from tests.test_train import SMALL_RUN

    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "ablations.cli", "train", *SMALL_RUN, "--trainer.max_epochs=500",
                              f"--run_dir={run_dir}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "WANDB_MODE": "disabled"})
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (run_dir / "metrics.csv").exists():
            time.sleep(0.2)
        config = (run_dir / "config.yaml").read_text()
        assert read_status(run_dir) == "running"
        assert train_main([*SMALL_RUN, "--model.init_args.lr=0.01", f"--run_dir={run_dir}"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"ablate train: error: run folder {run_dir} is in use by pid {first.pid} on host {socket.gethostname()} "
            "(its lock file lock); wait for that run to end, or choose another --run_dir")
        assert (run_dir / "config.yaml").read_text() == config
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert read_status(run_dir) != "running"  # no stale lock: freed with its holder
    fd = runlock.try_acquire(run_dir)
    assert fd is not None
    runlock.release(fd)
    assert not list(run_dir.rglob("*-v[0-9]*.ckpt"))


def test_parallel_sweep_runs_every_run_once_and_rerun_is_idempotent(tmp_path, capsys):
    spec = SweepSpec.load(write_spec(tmp_path))
    results = run_sweep(spec, tmp_path / "runs", parallel=2, progress=False, fork=True)
    assert sorted(results.values()) == ["completed"] * 4
    folder = tmp_path / "runs" / "tiny"
    assert all((folder / r.id / "attempts").read_text() == "1" for r in spec.expand())
    again = run_sweep(spec, tmp_path / "runs", parallel=2, progress=False)  # nothing runs twice
    assert sorted(again.values()) == ["completed"] * 4
    assert all((folder / r.id / "attempts").read_text() == "1" for r in spec.expand())
    assert [s for _, s in sweep_status(spec, tmp_path / "runs")] == ["completed"] * 4
    assert cli_main(["report", str(folder)]) == 0
    report = (folder / "report.md").read_text()
    assert "4 of 4 runs completed" in report and "| C-T | 0." in report
    for name in ("training_curves", "accuracy_vs_loss", "generalisation_gap", "capacity_vs_data"):
        assert f"]({name}.png)" in report and (folder / f"{name}.png").stat().st_size > 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [r["id"] for r in manifest["runs"]] == [r.id for r in spec.expand()]


def test_a_non_finite_loss_is_not_retried_and_is_reported_at_once(tmp_path, capsys):
    """At a fixed seed a non-finite loss comes back on every try: the run records the kind, the sweep reports it
    once and does not run it again."""
    bad = TINY_SPEC.replace("trainer.max_epochs: 1", "trainer.max_epochs: 1\n  model.init_args.lr: 1.0e+30\n"
                            "  model.init_args.warmup_epochs: 0")
    bad = bad.replace("grid:\n  model.init_args.model: [C-T, T-C]\n  seed_everything: [0, 1]",
                      "max_retries: 2\ngrid:\n  model.init_args.model: [C-T]")
    spec_path = write_spec(tmp_path, bad)
    assert cli_main(["sweep", str(spec_path), "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("failed (non_finite)") == 1 and "training loss became" in err
    run_dir = tmp_path / "runs" / "tiny" / SweepSpec.load(spec_path).expand()[0].id
    assert (run_dir / "attempts").read_text() == "1"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failure"] == "non_finite" and "training loss became" in summary["reason"]
    assert cli_main(["sweep", str(spec_path), "--root", str(tmp_path / "runs")]) == 2  # a re-run leaves it alone
    assert (run_dir / "attempts").read_text() == "1"
    capsys.readouterr()
    assert cli_main(["status", str(spec_path), "--root", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith(f"failed      {run_dir.name}     0/1")  # in epoch 0
    assert "(non_finite: " in out and "training loss became" in out


@pytest.mark.slow
def test_a_crash_is_retried_and_then_completes(tmp_path):
    """A crash may not happen again (a flaky node): the sweep tries again, up to max_retries."""
    flaky = TINY_SPEC.replace("trainer.max_epochs: 1", "trainer.max_epochs: 1\n  trainer.callbacks: [{class_path: "
                              f"tests.helpers.CrashOnce, init_args: {{marker: {tmp_path / 'crashed'}}}}}]")
    flaky = flaky.replace("seed_everything: [0, 1]", "seed_everything: [0]").replace("[C-T, T-C]", "[C-T]")
    spec = SweepSpec.load(write_spec(tmp_path, flaky))
    assert run_sweep(spec, tmp_path / "runs", progress=False) == {spec.expand()[0].id: "completed"}
    assert (tmp_path / "runs" / "tiny" / spec.expand()[0].id / "attempts").read_text() == "2"


def test_a_run_that_cannot_start_records_why_itself(tmp_path, capsys):
    spec_path = write_spec(tmp_path, TINY_SPEC.replace("[C-T, T-C]", "[C-T-T]").replace("seed_everything: [0, 1]",
                                                                                      "seed_everything: [0]"))
    assert cli_main(["sweep", str(spec_path), "--root", str(tmp_path / "runs")]) == 2
    run_dir = tmp_path / "runs" / "tiny" / SweepSpec.load(spec_path).expand()[0].id
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failure"] == "config" and (run_dir / "attempts").read_text() == "1"  # not retried
    assert summary["reason"].startswith("layout 'C-T-T' needs one depths entry per segment letter")
    capsys.readouterr()
    cli_main(["status", str(spec_path), "--root", str(tmp_path / "runs")])
    assert "(config: layout 'C-T-T' needs one depths entry per segment letter" in capsys.readouterr().out


def _sweep_process(spec_path, root, *extra):
    return subprocess.Popen([sys.executable, "-m", "ablations.cli", "sweep", str(spec_path), "--root", str(root), *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "WANDB_MODE": "disabled"})


@pytest.mark.slow
def test_sweep_killed_midway_then_rerun_completes_every_run_exactly_once(tmp_path):
    import signal
    import time

    spec_path = write_spec(tmp_path, TINY_SPEC.replace("trainer.max_epochs: 1", "trainer.max_epochs: 2"))
    spec = SweepSpec.load(spec_path)
    folder = tmp_path / "runs" / "tiny"
    proc = _sweep_process(spec_path, tmp_path / "runs")
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once one run is done and the next has started
        statuses = [read_status(folder / r.id) for r in spec.expand()]
        if statuses.count("completed") >= 1 and "running" in statuses:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its training process
    proc.wait()
    done_before = {r.id for r in spec.expand() if read_status(folder / r.id) == "completed"}
    assert 1 <= len(done_before) < 4
    results = run_sweep(spec, tmp_path / "runs", parallel=1, progress=False)
    assert sorted(results.values()) == ["completed"] * 4
    for run in spec.expand():
        attempts = int((folder / run.id / "attempts").read_text())
        assert attempts == 1 if run.id in done_before else attempts <= 2  # completed runs never ran again
        import csv

        with open(folder / run.id / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert [r["epoch"] for r in rows if r["train/loss"]] == ["0", "1"]  # each epoch's end once
        steps = [int(r["step"]) for r in rows]
        assert steps == sorted(set(steps))  # each evaluation once


@pytest.mark.slow
def test_a_killed_sweeps_training_child_keeps_its_run_and_a_rerun_does_not_start_it_again(tmp_path):
    """`kill -KILL <sweep pid>` alone: the training child trains on holding the run's lock, so `status` says running
    and a rerun of the sweep starts no second training into the folder."""
    import signal
    import time

    spec_path = write_spec(tmp_path, TINY_SPEC.replace("trainer.max_epochs: 1", "trainer.max_epochs: 500")
                           .replace("[C-T, T-C]", "[C-T]").replace("seed_everything: [0, 1]", "seed_everything: [0]"))
    spec = SweepSpec.load(spec_path)
    run = spec.expand()[0]
    run_dir = tmp_path / "runs" / "tiny" / run.id
    proc = _sweep_process(spec_path, tmp_path / "runs")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (run_dir / "metrics.csv").exists():  # the child is training
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the sweep process only
        proc.wait()
        child = json.loads((run_dir / "lock").read_text())["pid"]
        assert child != proc.pid and os.kill(child, 0) is None  # the training process, alive
        assert [s for _, s in sweep_status(spec, tmp_path / "runs")] == ["running"]
        assert run_sweep(spec, tmp_path / "runs", progress=False) == {run.id: "running"}
        assert (run_dir / "attempts").read_text() == "1"
        assert (run_dir / "train.log").read_text().count("--- attempt") == 1
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the child, still in the sweep's process group
    assert not list(run_dir.rglob("*-v1*"))


@pytest.mark.slow
def test_two_sweep_processes_on_one_folder_never_run_a_run_twice(tmp_path):
    spec_path = write_spec(tmp_path)
    procs = [_sweep_process(spec_path, tmp_path / "runs") for _ in range(2)]
    for proc in procs:
        proc.wait(timeout=600)
    spec = SweepSpec.load(spec_path)
    folder = tmp_path / "runs" / "tiny"
    assert [read_status(folder / r.id) for r in spec.expand()] == ["completed"] * 4
    assert [(folder / r.id / "attempts").read_text() for r in spec.expand()] == ["1"] * 4


def agent_command(sweep: dict, params: dict) -> list[str]:
    """The command a `wandb agent` runs for one grid point: ${env}, ${interpreter}, ${args} as W&B expands them."""
    out = []
    for part in sweep["command"]:
        if part == "${env}":
            out.append("/usr/bin/env")
        elif part == "${interpreter}":
            out.append(sys.executable)
        elif part == "${args}":
            out += [f"--{key}={value}" for key, value in params.items()]
        else:
            out.append(part)
    return out


@pytest.mark.slow
def test_exported_wandb_sweep_trains_as_the_agent_runs_it(tmp_path, capsys):
    import yaml

    spec_path = write_spec(tmp_path)
    out = tmp_path / "sweep.yaml"
    assert cli_main(["sweep", str(spec_path), "--export-wandb", str(out)]) == 0
    sweep = yaml.safe_load(out.read_text())
    assert sweep["method"] == "grid" and sweep["parameters"]["seed_everything"] == {"values": [0, 1]}
    assert sweep["parameters"]["model.init_args.model"] == {"values": ["C-T", "T-C"]}
    point = {k: (v["values"][0] if "values" in v else v["value"]) for k, v in sweep["parameters"].items()}
    command = agent_command(sweep, {**point, "run_dir": str(tmp_path / "agent-run")})
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "agent-run" / "summary.json").read_text())["status"] == "completed"


def test_cifar_spec_exports_the_layout_axis_as_model_names(tmp_path):
    from ablations.sweep import wandb_sweep_config

    sweep = wandb_sweep_config(SweepSpec.load(ROOT / "ablations/sweeps/cifar100.yaml"))
    assert sweep["parameters"]["model.init_args.model"]["values"][0] == "vit_rel_cifar"
    assert sweep["parameters"]["trainer.max_epochs"] == {"value": 100}


@pytest.mark.parametrize("name,runs", [("demo", 30), ("cifar100", 60), ("imagenet", 10)])
def test_shipped_specs_load(name, runs):
    from ablations.sweep import check_overrides

    spec = SweepSpec.load(ROOT / "ablations" / "sweeps" / f"{name}.yaml")
    assert len(spec.expand()) == runs and Path(spec.config).is_file()
    check_overrides(spec, spec.expand())  # every override is an `ablate train` option with a valid value


@pytest.mark.slow
def test_submitit_local_executor_runs_a_two_run_array(tmp_path):
    from ablations.sweep import submit_sweep

    spec_path = write_spec(tmp_path, TINY_SPEC.replace("seed_everything: [0, 1]", "seed_everything: [0]"))
    jobs = submit_sweep(str(spec_path), str(tmp_path / "runs"), executor="local", wait=True)
    assert len(jobs) == 2 and [job.result() for job in jobs] == ["completed", "completed"]
    assert submit_sweep(str(spec_path), str(tmp_path / "runs"), executor="local") == []  # nothing left to run


def test_ablate_demo_runs_the_study_and_prints_the_report(tmp_path, monkeypatch, capsys):
    import ablations.cli

    monkeypatch.setattr(ablations.cli, "DEMO_SPEC", write_spec(tmp_path, TINY_SPEC.replace("seed_everything: [0, 1]",
                                                                                           "seed_everything: [0]")))
    assert cli_main(["demo", "--root", str(tmp_path / "runs"), "--parallel", "2"]) == 0
    out = capsys.readouterr().out
    assert "# Sweep tiny" in out and "2 of 2 runs completed" in out and "## Final test accuracy" in out
    assert re.search(r"`ablate demo --parallel 2` took \d+\.\d min \(\d+ s, completed runs skipped\) on .+, \d+ cores",
                     (tmp_path / "runs" / "tiny" / "report.md").read_text())  # the machine that measured it


def test_runs_per_gpu_places_k_workers_on_each_gpu(monkeypatch):
    import torch

    from ablations.sweep import describe_slots, device_slots

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    slots = device_slots(parallel=None, gpus_per_run=1, runs_per_gpu=3)
    assert sorted(s["CUDA_VISIBLE_DEVICES"] for s in slots) == ["0", "0", "0", "1", "1", "1"]
    assert {s["OMP_NUM_THREADS"] for s in slots} == {"2"}  # 16 cores over 6 runs
    assert [s["CUDA_VISIBLE_DEVICES"] for s in device_slots(None, 2)] == ["0,1"]
    assert [s["CUDA_VISIBLE_DEVICES"] for s in device_slots(None, 1)] == ["0", "1"]  # default: one per GPU
    # --parallel is not ignored on GPUs: N slots round-robin over them, the first runs on different GPUs
    slots = device_slots(4, 1)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1", "0", "1"] and slots[0]["OMP_NUM_THREADS"] == "4"
    assert [s["CUDA_VISIBLE_DEVICES"] for s in device_slots(1, 1)] == ["0"]
    with pytest.raises(ValueError, match="--parallel 2 runs of 2 GPUs need 4 GPUs; 2 are visible"):
        device_slots(2, 2)
    with pytest.raises(ValueError, match="--parallel 4 and --runs-per-gpu 2 both set the slots; give one"):
        device_slots(4, 1, runs_per_gpu=2)
    with pytest.raises(ValueError, match="--runs-per-gpu 2 shares one GPU between runs; it cannot combine with --gpus-per-run 2"):
        device_slots(1, 2, runs_per_gpu=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--runs-per-gpu 2 needs GPUs and none is visible; on CPU use --parallel N"):
        device_slots(None, 1, runs_per_gpu=2)
    assert [s["OMP_NUM_THREADS"] for s in device_slots(None, 1)] == ["16"]  # CPU: one process by default
    assert describe_slots(device_slots(2, 1)) == "2 slots: CPU x2, 8 CPU threads each"


def test_sweep_flags_below_one_are_refused(tmp_path, capsys):
    assert cli_main(["sweep", str(write_spec(tmp_path)), "--runs-per-gpu", "0"]) == 2
    assert "--runs-per-gpu 0 must be at least 1" in capsys.readouterr().err


def test_an_interrupted_run_is_left_for_the_next_sweep_not_failed(tmp_path, monkeypatch):
    """`ablate train` stopped by SIGTERM/SIGUSR1 exits with code 3 and says interrupted: the sweep neither retries
    it nor marks it failed. The training process holds the run's lock while it runs (handed down by the sweep)."""
    from ablations.sweep import execute, launch

    spec = SweepSpec.load(write_spec(tmp_path))
    run = spec.expand()[0]
    script = ("import json, os, sys, pathlib; from ablations import runlock; d = pathlib.Path(sys.argv[1]); "
              "fd = runlock.acquire(d); (d / 'held').write_text(str(runlock.is_held(d))); "
              "(d / 'summary.json').write_text(json.dumps({'status': 'interrupted', 'reason': 'received SIGTERM'})); "
              "sys.exit(3)")
    monkeypatch.setattr(launch, "TRAIN_PROGRAM", [sys.executable, "-c", script, str(tmp_path / "runs" / run.id)])
    assert execute(spec, run, tmp_path / "runs", env={"PYTHONPATH": str(ROOT)}) == "interrupted"
    run_dir = tmp_path / "runs" / run.id
    assert (run_dir / "held").read_text() == "True"  # the child got the sweep's lock instead of being refused
    assert (run_dir / "attempts").read_text() == "1" and read_status(run_dir) == "pending"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"


def test_run_ids_do_not_depend_on_how_a_run_is_watched(tmp_path):
    """W&B, progress bars and loader workers in a spec's `set:` leave every run id as it was; the lr does not."""
    plain = [r.id for r in SweepSpec.load(write_spec(tmp_path)).expand()]
    watched = TINY_SPEC.replace("set:\n", "set:\n  wandb.enabled: true\n  wandb.project: other\n"
                                "  trainer.enable_progress_bar: true\n  data.init_args.num_workers: 2\n")
    assert [r.id for r in SweepSpec.load(write_spec(tmp_path, watched)).expand()] == plain
    other_lr = TINY_SPEC.replace("set:\n", "set:\n  model.init_args.lr: 0.01\n")
    assert not set(r.id for r in SweepSpec.load(write_spec(tmp_path, other_lr)).expand()) & set(plain)


@pytest.mark.slow
def test_a_forked_run_trains_as_a_new_process_does_and_a_killed_one_ends_alone(tmp_path):
    """CPU sweeps fork each run from a server that imported torch once (``launch.forked``): the run's metrics equal
    a fresh interpreter's to the last digit, and a run killed by a signal ends with its
    own exit code (``lost``, retried) while the server forks the next attempt."""
    import csv

    from ablations.sweep import execute, launch

    one = TINY_SPEC.replace("[C-T, T-C]", "[C-T]").replace("seed_everything: [0, 1]", "seed_everything: [0]")
    spec = SweepSpec.load(write_spec(tmp_path, one))
    run = spec.expand()[0]
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    assert execute(spec, run, tmp_path / "new", env, launcher=launch.in_new_process) == "completed"
    assert execute(spec, run, tmp_path / "forked", env, launcher=launch.forked) == "completed"

    def rows(root):  # every logged value but the clock's
        with open(root / run.id / "metrics.csv") as f:
            return [{k: v for k, v in row.items() if k not in ("epoch_time", "images_per_s")} for row in csv.DictReader(f)]

    assert rows(tmp_path / "forked") == rows(tmp_path / "new") and len(rows(tmp_path / "new")) > 2

    killed = spec.fixed | {"trainer.callbacks": [{"class_path": "tests.helpers.KillOnce", "init_args": {
        "epoch": 0, "batch": 1, "marker": str(tmp_path / "killed")}}]}
    spec = SweepSpec(spec.name, spec.config, killed, spec.budget, spec.grid)
    run = spec.expand()[0]
    assert execute(spec, run, tmp_path / "forked", env, launcher=launch.forked) == "completed"
    run_dir = tmp_path / "forked" / run.id
    assert (tmp_path / "killed").exists() and (run_dir / "attempts").read_text() == "2"
    assert "train exited with code -9" not in (run_dir / "summary.json").read_text()  # the retry's record replaced it
    assert (run_dir / "train.log").read_text().count("--- attempt") == 2


def test_a_new_executor_writes_only_launch_and_gets_the_checks_and_manifest(tmp_path):
    """Another scheduler is a subclass of ``Executor`` with a ``launch``: the sweep's overrides are checked and its
    manifest written before it is called, as for the local pool and SLURM."""
    from ablations.sweep import Executor

    class Recorder(Executor):
        def launch(self, spec, runs, folder):
            assert (folder / "manifest.json").exists()
            return [run.id for run in runs]

    spec = SweepSpec.load(write_spec(tmp_path))
    assert Recorder().run(spec, tmp_path / "runs") == [run.id for run in spec.expand()]
    typo = SweepSpec.load(write_spec(tmp_path, TINY_SPEC.replace("trainer.max_epochs: 1", "trainer.max_epochz: 1")))
    with pytest.raises(ValueError, match="set key trainer.max_epochz is not an `ablate train` option; the closest "
                                         "option is trainer.max_epochs"):
        Recorder().run(typo, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_options_of_a_class_the_overrides_pick_are_accepted_and_a_typo_beside_them_is_named(tmp_path):
    """``trainer.profiler.init_args.filename`` exists only once ``trainer.profiler.class_path`` picks a profiler:
    the two stand together; a typo among them is still named with its closest option."""
    from ablations.sweep import check_overrides

    profiler = TINY_SPEC.replace("trainer.max_epochs: 1", "trainer.max_epochs: 1\n  trainer.profiler.class_path: "
                                 "lightning.pytorch.profilers.SimpleProfiler\n  trainer.profiler.init_args.filename: perf")
    spec = SweepSpec.load(write_spec(tmp_path, profiler))
    check_overrides(spec, spec.expand())
    spec = SweepSpec.load(write_spec(tmp_path, profiler.replace("trainer.max_epochs: 1", "trainer.max_epochz: 1")))
    with pytest.raises(ValueError, match="set key trainer.max_epochz is not an `ablate train` option; the closest "
                                         "option is trainer.max_epochs"):
        check_overrides(spec, spec.expand())


def test_forked_runs_get_the_slots_thread_count_and_outlive_a_lost_fork_server(tmp_path):
    """A forked run's BLAS pools are sized for its slot, not for the machine the server saw; a killed server (the
    OOM killer picks the biggest process) takes no run with it: the sweep waits for the run, which completes once,
    in one attempt."""
    import threading
    import time
    from multiprocessing import forkserver

    from ablations.sweep import execute, launch

    slow = TINY_SPEC.replace("trainer.max_epochs: 1", "trainer.max_epochs: 6\n  trainer.callbacks: [{class_path: "
                             f"tests.helpers.BlasThreads, init_args: {{path: {tmp_path / 'threads'}}}}}]")
    slow = slow.replace("[C-T, T-C]", "[C-T]").replace("seed_everything: [0, 1]", "seed_everything: [0]")
    spec = SweepSpec.load(write_spec(tmp_path, slow))
    run = spec.expand()[0]
    run_dir = tmp_path / "runs" / run.id
    result = {}
    launch.start_fork_server()  # sized for the machine
    worker = threading.Thread(target=lambda: result.update(status=execute(
        spec, run, tmp_path / "runs", {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}, launcher=launch.forked)))
    worker.start()
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "metrics.csv").exists():
        time.sleep(0.1)
    os.kill(forkserver._forkserver._forkserver_pid, 9)
    worker.join(timeout=300)
    assert result == {"status": "completed"} and (run_dir / "attempts").read_text() == "1"
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 6
    assert json.loads((tmp_path / "threads").read_text()) == [1]


@pytest.mark.slow
def test_a_forked_cpu_ddp_run_relaunches_its_second_rank(tmp_path):
    """Lightning starts a DDP run's other ranks from ``sys.argv`` and ``__main__``: a run forked by ``ablate sweep``
    gives it the command ``ablate train`` would have, so both ranks train."""
    ddp = TINY_SPEC.replace("trainer.max_epochs: 1", "trainer.max_epochs: 1\n  trainer.devices: 2\n  trainer.strategy: ddp"
                            f"\n  trainer.callbacks: [{{class_path: tests.helpers.RankReport, init_args: "
                            f"{{out_dir: {tmp_path / 'ranks'}}}}}]")
    spec_path = write_spec(tmp_path, ddp.replace("[C-T, T-C]", "[C-T]").replace("seed_everything: [0, 1]",
                                                                                  "seed_everything: [0]"))
    assert _sweep_process(spec_path, tmp_path / "runs").wait(timeout=300) == 0
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir()) == ["rank0-epoch0.json", "rank1-epoch0.json"]


def test_a_linked_axis_sets_its_options_together_and_the_report_keeps_them_apart(tmp_path):
    """`a,b: [[a1, b1], [a2, b2]]`: two runs per seed, not four; each run's axes name both options; a value of the
    wrong length is refused naming it, and the W&B export (which crosses every axis) refuses the axis."""
    from ablations.sweep import wandb_sweep_config

    grid = ("  data.init_args.train_fraction,trainer.max_epochs: [[0.5, 2], [1.0, 1]]\n"
            "  seed_everything: [0, 1]\n")
    spec = SweepSpec.load(write_spec(tmp_path, tiny_spec("linked", grid)))
    runs = spec.expand()
    assert len(runs) == 4 and len({r.id for r in runs}) == 4
    assert [(r.axes["data.init_args.train_fraction"], r.axes["trainer.max_epochs"]) for r in runs[::2]] == [(0.5, 2), (1.0, 1)]
    assert runs[0].overrides["trainer.max_epochs"] == 2 and runs[2].overrides["trainer.max_epochs"] == 1
    with pytest.raises(ValueError, match=r"linked axis .* value \[0.5\] is not valid; expected a list of 2 values"):
        SweepSpec.load(write_spec(tmp_path, tiny_spec("linked", grid.replace("[[0.5, 2]", "[[0.5]"))))
    with pytest.raises(ValueError, match="a W&B grid sweep crosses every axis"):
        wandb_sweep_config(spec)


def test_spec_margins_are_checked_when_the_spec_loads(tmp_path):
    text = tiny_spec("m", "  seed_everything: [0]\n") + "margins: {accuracy: 0.5}\n"
    assert SweepSpec.load(write_spec(tmp_path, text)).margins == {"accuracy": 0.5, "log_loss": 0.1}
    with pytest.raises(ValueError, match=r"margin 'acc' is not a metric kind; valid: accuracy, log_loss"):
        SweepSpec.load(write_spec(tmp_path, text.replace("accuracy: 0.5", "acc: 0.5")))
    with pytest.raises(ValueError, match=r"margin accuracy=-1 is not valid; expected a positive number"):
        SweepSpec.load(write_spec(tmp_path, text.replace("accuracy: 0.5", "accuracy: -1")))


def test_the_same_configuration_spelled_twice_on_the_command_line_is_refused_before_any_run(tmp_path, capsys):
    assert cli_main(["sweep", str(write_spec(tmp_path)), "--root", str(tmp_path / "runs"),
                     "--grid", "data.init_args.train_fraction=1,1.0,0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ablate sweep: error: sweep tiny: grid points {") and "are the same run once parsed" in err
    assert "\n" not in err and not (tmp_path / "runs").exists()


def test_a_run_launched_under_an_earlier_id_keeps_its_folder(tmp_path):
    """A sweep folder whose manifest lists a run under an id from an earlier rule: the run keeps that id (its
    folder is left completed, or resumed), so a change of how ids are made never trains a run twice."""
    from ablations.sweep import write_manifest

    spec = SweepSpec.load(write_spec(tmp_path))
    runs = spec.expand()
    folder = tmp_path / "runs" / "tiny"
    old = folder / "C-T-s0-0ld1d000"
    old.mkdir(parents=True)
    (old / "summary.json").write_text(json.dumps({"status": "completed"}))
    write_manifest(spec, [type(runs[0])(old.name, runs[0].overrides, runs[0].axes)], folder)
    again = spec.expand(folder)
    assert [r.id for r in again] == [old.name, *(r.id for r in runs[1:])]
    assert [status for _, status in sweep_status(spec, tmp_path / "runs")][0] == "completed"
