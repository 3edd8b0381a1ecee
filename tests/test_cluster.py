"""SLURM sweeps without a cluster: submitit writes the real sbatch script (only `sbatch` itself is replaced, by a
stand-in that answers as sbatch does), and the training command of the submitted job must pass Lightning's own
check of the SLURM environment that script asks for."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from ablations.cli import main as cli_main
from ablations.sweep import SweepSpec
from tests.specs import tiny_spec
from tests.test_sweep import TINY_SPEC, write_spec


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """`sbatch` answers as the real one does and submits nothing; `srun` exists, as submitit requires."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho \"$1\" >> \"$(dirname \"$0\")/submitted\"\n"
                                    "echo 'Submitted batch job 4242'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir / "submitted"


def sbatch_options(script: str) -> dict[str, str]:
    return dict(line.removeprefix("#SBATCH --").split("=", 1) for line in script.splitlines()
                if line.startswith("#SBATCH --") and "=" in line)


def trainer_flags(command: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--trainer.").split("=", 1) for arg in command if arg.startswith("--trainer."))


def test_two_node_job_script_and_training_command_agree(tmp_path, fake_sbatch, monkeypatch, capsys):
    import lightning as L
    from submitit.core.utils import DelayedSubmission

    from ablations.sweep import launch, slurm

    spec_text = TINY_SPEC + ("slurm:\n  account: proj\n  qos: high\n  mem: 64G\n  constraint: a100\n  time: 120\n"
                             "  cpus_per_task: 4\n")
    spec_path = write_spec(tmp_path, spec_text)
    root = tmp_path / "runs"
    assert cli_main(["sweep", str(spec_path), "--root", str(root), "--executor", "slurm", "--nodes-per-run", "2",
                     "--gpus-per-run", "4", "--slurm", "cpus_per_task=12", "--slurm", "array_parallelism=3",
                     "--slurm", "partition=gpu", "--set", "trainer.max_epochs=2", "--grid", "seed_everything=0,1,2"]) == 0
    assert "submitted 6 run(s)" in capsys.readouterr().out
    folder = root / "tiny" / "submitit"
    script = (folder / "4242_submission.sh").read_text()
    options = sbatch_options(script)
    assert {k: options[k] for k in ("nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "account", "qos",
                                    "mem", "constraint", "time", "partition", "array", "job-name")} == {
        "nodes": "2", "ntasks-per-node": "4", "gpus-per-node": "4", "cpus-per-task": "12", "account": "proj",
        "qos": "high", "mem": "64G", "constraint": "a100", "time": "120", "partition": "gpu", "array": "0-5%3",
        "job-name": "ablate-tiny"}  # command line over spec: cpus_per_task 12, not 4
    assert len(fake_sbatch.read_text().splitlines()) == 1  # one job array

    # --set/--grid give the ids a spec with those values gives, and the submitted jobs carry them
    same = tiny_spec("tiny", "  model.init_args.model: [C-T, T-C]\n  seed_everything: [0, 1, 2]\n", epochs=2)
    (tmp_path / "same").mkdir()
    expected = [r.id for r in SweepSpec.load(write_spec(tmp_path / "same", same)).expand()]
    manifest = json.loads((root / "tiny" / "manifest.json").read_text())
    assert [r["id"] for r in manifest["runs"]] == expected

    # what every task of the job runs, under the variables SLURM sets for that script
    job = DelayedSubmission.load(folder / "4242_5_submitted.pkl").function
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": options["job-name"], "SLURM_NNODES": options["nodes"],
           "SLURM_NTASKS_PER_NODE": options["ntasks-per-node"], "SLURM_NODELIST": "gpu[1-2]",
           "SLURM_NTASKS": str(int(options["nodes"]) * int(options["ntasks-per-node"])),
           "SLURM_NODEID": "1", "SLURM_LOCALID": "1", "SLURM_PROCID": "5"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    commands = []
    monkeypatch.setattr(slurm.subprocess, "run", lambda command, **kw: (commands.append(command),
                                                                        subprocess.CompletedProcess(command, 0))[1])
    assert job() == "0"  # task 5: a training process

    class Failed:  # task 0's training process, as execute starts it: the run fails
        returncode = 1

        def __init__(self, command, **kw):
            commands.append(command)
            run_dir = Path(next(a for a in command if a.startswith("--run_dir=")).split("=", 1)[1])
            (run_dir / "summary.json").write_text(json.dumps({"status": "failed", "reason": "NCCL timeout"}))

        def wait(self, timeout=None):
            return 1

    monkeypatch.setattr(launch.subprocess, "Popen", Failed)
    monkeypatch.setenv("SLURM_PROCID", "0")
    # one attempt: task 0 alone retrying would wait for 7 tasks that have exited; the next submission retries
    assert job() == "failed" and (root / "tiny" / job.run_id / "attempts").read_text() == "1"
    assert len(commands) == 2 and commands[0] == commands[1]
    (root / "tiny" / job.run_id / "summary.json").write_text(json.dumps({"status": "completed"}))
    monkeypatch.setenv("SLURM_PROCID", "5")
    assert job() == "completed" and len(commands) == 2  # a requeued job's other tasks do not start it again
    assert "--seed_everything=2" in commands[0] and "--trainer.max_epochs=2" in commands[0]
    flags = trainer_flags(commands[0])
    assert flags == {"max_epochs": "2", "num_nodes": "2", "devices": "4", "strategy": "ddp"}
    # Lightning's SLURM environment accepts that shape (it raises when num_nodes or devices differ)
    trainer = L.Trainer(accelerator="cpu", devices=int(flags["devices"]), num_nodes=int(flags["num_nodes"]),
                        strategy=flags["strategy"], logger=False, enable_checkpointing=False)
    assert type(trainer.strategy.cluster_environment).__name__ == "SLURMEnvironment"
    assert trainer.strategy.launcher.launch(lambda: "started") == "started"


@pytest.mark.parametrize("args,message", [
    (["--nodes-per-run", "-1"], "--nodes-per-run -1 must be at least 1"),
    (["--slurm", "nodes=0"], "SLURM setting nodes=0 must be at least 1"),
    (["--slurm", "acount=proj"], "unknown SLURM setting 'acount' (did you mean 'account'?); valid: account,"),
    (["--slurm", "cpus_per_task=many"], "SLURM setting cpus_per_task='many' has the wrong type: submitit's "
                                        "cpus_per_task takes int"),
    (["--slurm", "setup=module load cuda"], "SLURM setting setup='module load cuda' has the wrong type"),
    (["--slurm", "gpus_per_task=1"], "SLURM setting 'gpus_per_task': a run's GPUs are set per node"),
    (["--slurm", "tasks_per_node=2"], "tasks_per_node=2 must equal gpus_per_node (1): Lightning runs one process"),
    (["--slurm", "account"], "--slurm expects KEY=VALUE, got 'account'"),
    (["--set", "trainer.max_epochs"], "--set expects KEY=VALUE, got 'trainer.max_epochs'"),
    (["--set", "seed_everything=3"], "--set seed_everything: seed_everything is a grid axis of"),
    (["--grid", "seed_everything="], "--grid expects KEY=V1,V2,..., got 'seed_everything='"),
    (["--grid", "seed_everything=[0,"], "--grid 'seed_everything=[0,': the value is not valid YAML"),
    (["--grid", "layout=C-C-T-T"], "the layout axis needs a budget"),
])
def test_bad_sweep_settings_are_one_line_exit_2_and_submit_nothing(tmp_path, fake_sbatch, capsys, args, message):
    spec_path = write_spec(tmp_path)
    assert cli_main(["sweep", str(spec_path), "--root", str(tmp_path / "runs"), "--executor", "slurm", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablate sweep: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not fake_sbatch.exists() and not (tmp_path / "runs").exists()


def test_a_bad_slurm_mapping_in_the_spec_is_refused_when_loaded(tmp_path):
    with pytest.raises(ValueError, match="unknown SLURM setting 'gpus'.*; valid: account"):
        SweepSpec.load(write_spec(tmp_path, TINY_SPEC + "slurm:\n  gpus: 8\n"))
    with pytest.raises(ValueError, match="sweep spec .*: slurm \\['account'\\] is not valid; expected a mapping of submitit parameters"):
        SweepSpec.load(write_spec(tmp_path, TINY_SPEC + "slurm: [account]\n"))


def test_a_later_time_limit_replaces_an_earlier_one_whatever_its_name(tmp_path, fake_sbatch, capsys):
    """submitit lets `slurm_time` win over `timeout_min`; the command line must win over the spec either way."""
    spec_path = write_spec(tmp_path, TINY_SPEC + "slurm:\n  time: '2-00:00:00'\n")
    root = tmp_path / "runs"
    assert cli_main(["sweep", str(spec_path), "--root", str(root), "--executor", "slurm", "--time", "90"]) == 0
    options = sbatch_options((root / "tiny" / "submitit" / "4242_submission.sh").read_text())
    assert options["time"] == "90" and "gpus-per-node" in options and options["ntasks-per-node"] == "1"
    (root / "tiny" / "submitit" / "4242_submission.sh").unlink()
    assert cli_main(["sweep", str(spec_path), "--root", str(root), "--executor", "slurm",
                     "--slurm", "time=36:00:00"]) == 0
    options = sbatch_options((root / "tiny" / "submitit" / "4242_submission.sh").read_text())
    assert options["time"] == "36:00:00"  # text, not YAML's 129600 (seconds)
