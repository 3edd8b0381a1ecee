"""Chained sweeps: a fine-tuning sweep whose runs start from a pre-training sweep's runs (``init_from``).

The fast tests stand in for the pre-training sweep with its manifest alone (as ``ablate sweep`` writes it before any
run starts) and hand-written summaries; the slow one trains both sweeps at once on the embedded digits."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from ablations.cli import main as cli_main
from ablations.sweep import SweepSpec, SlurmRun, read_status, run_sweep, write_manifest
from ablations.sweep import chain
from tests.test_cluster import fake_sbatch, sbatch_options  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
TINY = "{depths: [1, 1], dims: [16, 32], stem_dim: 16, head_dim: 16}"
INIT = "model.init_args.init_from"


def digits_spec(name: str, grid: str, epochs: int = 1, extra: str = "") -> str:
    """A two-stage model on the embedded digits at 16x16, a tenth of the training images."""
    return f"""
name: {name}
config: {ROOT / 'ablations/configs/digits_tiny.yaml'}
set:
  model.init_args.model_args: {TINY}
  data.init_args.image_size: 16
  data.init_args.train_fraction: 0.1
  data.init_args.batch_size: 32
  trainer.max_epochs: {epochs}
{extra}grid:
{grid}"""


LAYOUTS_AND_SEEDS = "  model.init_args.model: [C-T, T-C]\n  seed_everything: [0, 1]\n"


def finetune_spec(source: Path, grid: str = LAYOUTS_AND_SEEDS, init_from: str = "", extra: str = "") -> str:
    return digits_spec("finetune", grid, extra=extra) + (init_from or f"init_from:\n  sweep: {source}\n")


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


@pytest.fixture(scope="module")
def launched_source(tmp_path_factory):
    """The pre-training sweep as launched and not yet run: its folder holds only the manifest."""
    folder = tmp_path_factory.mktemp("source")
    spec = SweepSpec.load(write(folder, "pretrain.yaml", digits_spec("pretrain", LAYOUTS_AND_SEEDS)))
    write_manifest(spec, spec.expand(), folder / "runs" / "pretrain")
    return spec, folder / "runs" / "pretrain"


@pytest.fixture
def source(launched_source, tmp_path):
    """A fresh copy of the launched pre-training sweep: (its runs by (model, seed), its folder)."""
    spec, folder = launched_source
    copy = tmp_path / "runs" / "pretrain"
    shutil.copytree(folder, copy)
    runs = {(r.overrides["model.init_args.model"], r.overrides["seed_everything"]): copy / r.id for r in spec.expand()}
    return runs, copy


def finish(run_dir: Path, status: str = "completed", **extra) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": status, **extra}))


def test_each_run_starts_from_the_source_of_its_layout_and_seed_and_the_manifest_records_it(source, tmp_path):
    runs, folder = source
    spec = SweepSpec.load(write(tmp_path, "finetune.yaml", finetune_spec(folder)))
    expanded = spec.expand()
    assert len(expanded) == 4
    for run in expanded:
        model, seed = run.overrides["model.init_args.model"], run.overrides["seed_everything"]
        assert run.source == str(runs[model, seed]) == run.overrides["model.init_args.init_from"]
    write_manifest(spec, expanded, tmp_path / "runs" / "finetune")
    manifest = json.loads((tmp_path / "runs" / "finetune" / "manifest.json").read_text())
    assert manifest["init_from"] == {"sweep": str(folder), "match": ["layout", "seed_everything"], "checkpoint": "last"}
    assert [r["source"] for r in manifest["runs"]] == [r.source for r in expanded]

    # the id depends on the source: the same grid from another pre-training sweep gives other runs
    other = tmp_path / "other" / "pretrain"
    shutil.copytree(folder, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["runs"] = [{**r, "overrides": {**r["overrides"], "model.init_args.lr": 0.001}} for r in manifest["runs"]]
    (other / "manifest.json").write_text(json.dumps(manifest))
    again = SweepSpec.load(write(tmp_path / "other", "finetune.yaml", finetune_spec(other))).expand()
    assert not {r.id for r in again} & {r.id for r in expanded}


@pytest.mark.parametrize("case,message", [
    ("a seed the source lacks", "run {model.init_args.model: C-T, seed_everything: 2} has no source in {folder} "
                                "(init_from match: layout, seed_everything); its runs have layout C-T, T-C; "
                                "seed_everything 0, 1"),
    ("two sources", "run {model.init_args.model: C-T, seed_everything: 0} matches 2 runs of {folder} "
                    "({ids}); add the axis that tells them apart to init_from match (they differ in seed_everything)"),
    ("no source sweep", "init_from sweep {missing} does not exist; launch the source sweep first"),
    ("a match key of neither", "init_from match 'sed_everything' is not an axis or option of"),
    ("init_from in set too", "model.init_args.init_from is given by init_from, per run; remove it from set and grid"),
    ("another checkpoint", "init_from checkpoint 'final' is not valid; expected last (the source's final weights, "
                           "which its results come from) or best"),
])
def test_a_missing_or_ambiguous_source_is_one_line_exit_2_at_load(source, tmp_path, capsys, case, message):
    runs, folder = source
    missing = tmp_path / "runs" / "nowhere"
    spec = {"a seed the source lacks": finetune_spec(folder, LAYOUTS_AND_SEEDS.replace("[0, 1]", "[0, 1, 2]")),
            "two sources": finetune_spec(folder, init_from=f"init_from: {{sweep: {folder}, match: [layout]}}\n"),
            "no source sweep": finetune_spec(missing),
            "a match key of neither": finetune_spec(folder, init_from=f"init_from: {{sweep: {folder}, "
                                                                     "match: [layout, sed_everything]}\n"),
            "init_from in set too": finetune_spec(folder, extra=f"  model.init_args.init_from: {runs['C-T', 0]}\n"),
            "another checkpoint": finetune_spec(folder, init_from=f"init_from: {{sweep: {folder}, "
                                                                 "checkpoint: final}\n"),
            }[case]
    path = write(tmp_path, "finetune.yaml", spec)
    assert cli_main(["sweep", str(path), "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    ids = f"{runs['C-T', 0].name}, {runs['C-T', 1].name}"
    assert err.startswith("ablate sweep: error: ") and len(err.strip().splitlines()) == 1
    for name, value in {"{folder}": folder, "{missing}": missing, "{ids}": ids}.items():
        message = message.replace(name, str(value))
    assert message in err, err
    assert not (tmp_path / "runs" / "finetune").exists()  # nothing written, nothing started


def test_a_source_is_waited_for_while_its_sweep_trains_and_never_after_it_stopped_or_failed(source):
    runs, folder = source
    watch = chain.SourceWatch(idle_s=60)
    pending, done, failed = str(runs["C-T", 0]), str(runs["C-T", 1]), str(runs["T-C", 0])
    finish(Path(done))
    finish(Path(failed), "failed", failure="crash", reason="segfault")
    assert watch.verdict(None) == "start"  # no source: an ordinary run
    assert watch.verdict(done) == "start"
    assert watch.verdict(failed) == "source failed"
    assert watch.verdict(pending, now=1000) == "wait"  # the source sweep may be starting its next run
    assert watch.verdict(pending, now=1059) == "wait"
    assert watch.verdict(pending, now=1061) == "waiting"  # a minute with no run of it training: nothing will
    from ablations import runlock

    lock = runlock.try_acquire(runs["T-C", 1])  # another run of the source sweep trains: it is progressing
    try:
        assert watch.verdict(pending, now=5000) == "wait"
        assert watch.verdict(pending, now=9000) == "wait"
    finally:
        runlock.release(lock)
    assert watch.verdict(pending, now=9061) == "waiting"


def test_the_runs_whose_sources_are_done_go_first(source, tmp_path):
    runs, folder = source
    finish(runs["C-T", 1])
    finish(runs["T-C", 1])
    spec = SweepSpec.load(write(tmp_path, "finetune.yaml", finetune_spec(folder)))
    order = [Path(r.source) for r in chain.ready_first(spec.expand())]
    assert order == [runs["C-T", 1], runs["T-C", 1], runs["C-T", 0], runs["T-C", 0]]  # then grid order


def test_a_chain_may_start_from_the_sources_best_checkpoint_as_another_run(source, tmp_path):
    runs, folder = source
    last = SweepSpec.load(write(tmp_path, "last.yaml", finetune_spec(folder))).expand()
    best = SweepSpec.load(write(tmp_path, "best.yaml", finetune_spec(
        folder, init_from=f"init_from: {{sweep: {folder}, checkpoint: best}}\n"))).expand()
    for by_last, by_best in zip(last, best):
        assert by_best.source == by_last.source == by_last.overrides[INIT]  # the run folder: last, its final weights
        assert by_best.overrides[INIT] == str(Path(by_best.source) / "checkpoints" / "best.ckpt")
    assert not {r.id for r in best} & {r.id for r in last}  # other starting weights, other runs


def test_a_sources_identity_is_its_own_once_it_has_run(tmp_path):
    """Once a source has written its config.yaml, a fine-tuning run's id counts the source's identity as `ablate
    train` computes it from that file: an edit of the source sweep's base config after the source ran changes no
    id, and a source trained on two devices (trainer.devices in its config) gives the id the run's own config
    gives (what every later launch recomputes)."""
    from ablations.sweep.overrides import resolved_settings, train_args
    from ablations.sweep.run_ids import run_id
    from ablations.training.cli import training_parser

    base = write(tmp_path, "base.yaml", (ROOT / "ablations/configs/digits_tiny.yaml").read_text())
    seeds = "  model.init_args.model: [C-T]\n  seed_everything: [0, 1]\n"
    pre_text = digits_spec("pretrain", seeds).replace(str(ROOT / "ablations/configs/digits_tiny.yaml"), str(base))
    pre_spec = SweepSpec.load(write(tmp_path, "pretrain.yaml", pre_text))
    folder = tmp_path / "runs" / "pretrain"
    write_manifest(pre_spec, pre_spec.expand(), folder)
    path = write(tmp_path, "finetune.yaml", finetune_spec(folder, seeds))
    before = [r.id for r in SweepSpec.load(path).expand()]  # from the manifest: the sources have not started

    parser = training_parser()
    for run, gpus in zip(pre_spec.expand(), (1, 2)):  # seed 0 on one device, seed 1 on two
        run_dir = folder / run.id
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text(parser.dump(parser.parse_args(train_args(pre_spec, run, run_dir, gpus))))
    spec = SweepSpec.load(path)
    ran = spec.expand()
    assert ran[0].id == before[0]  # one device: its config says what its manifest entry said
    for run in ran:
        assert run.id == run_id(run.overrides, resolved_settings(spec.config, run.overrides))

    base.write_text(base.read_text().replace("lr: 0.002", "lr: 0.003"))  # the source sweep's base, edited later
    assert [r.id for r in SweepSpec.load(path).expand()] == [r.id for r in ran]


def test_one_poll_reads_each_source_and_its_sweep_once(source, monkeypatch):
    """Many runs waiting on one source sweep: a poll reads its manifest once and each run's state once, not once
    per waiting run; the next poll reads them again."""
    from ablations.sweep import attempts
    from lightning_modules import run_folder

    runs, folder = source
    manifests, states = [], []
    monkeypatch.setattr(run_folder, "read_manifest",
                        lambda f, read=run_folder.read_manifest: manifests.append(f) or read(f))
    monkeypatch.setattr(attempts, "read_status", lambda d, read=attempts.read_status: states.append(d) or read(d))
    watch = chain.SourceWatch()
    waiting = [str(r) for r in runs.values()] * 3  # three fine-tuning runs per source
    assert [watch.verdict(s, now=1000.0) for s in waiting] == ["wait"] * len(waiting)
    assert len(manifests) == 1 and len(states) == 2 * len(runs)  # each source's state, each run's lock in the sweep
    watch.verdict(waiting[0], now=1002.0)
    assert len(manifests) == 2


def test_the_local_pool_starts_no_run_whose_source_is_not_done_and_status_shows_the_chain(source, tmp_path, capsys,
                                                                                           monkeypatch):
    runs, folder = source
    finish(runs["T-C", 0], "failed", failure="crash", reason="segfault-like crash")
    path = write(tmp_path, "finetune.yaml", finetune_spec(folder))
    spec = SweepSpec.load(path)
    monkeypatch.setattr(chain, "SOURCE_IDLE_S", 0.0)  # the pre-training sweep is not running: no waiting in a test
    results = run_sweep(spec, tmp_path / "runs", progress=False)
    by_source = {Path(r.source).name: results[r.id] for r in spec.expand()}
    assert by_source == {runs["C-T", 0].name: "waiting", runs["C-T", 1].name: "waiting",
                         runs["T-C", 0].name: "source failed", runs["T-C", 1].name: "waiting"}
    err = capsys.readouterr().err
    assert f"not started: waiting for pretrain/{runs['C-T', 0].name} (pending); run this sweep again" in err
    assert f"not started: source failed: pretrain/{runs['T-C', 0].name} (crash: segfault-like crash)" in err
    assert [p.name for p in (tmp_path / "runs" / "finetune").iterdir()] == ["manifest.json"]  # no run started

    finish(runs["C-T", 1])
    assert cli_main(["status", str(path), "--root", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    ids = {Path(r.source).name: r.id for r in spec.expand()}
    assert f"pending     {ids[runs['C-T', 1].name]}" in out  # its source done: it may start
    assert f"waiting     {ids[runs['C-T', 0].name]}" in out and f"waiting for pretrain/{runs['C-T', 0].name} (pending)" in out
    assert f"blocked     {ids[runs['T-C', 0].name]}" in out
    assert f"source failed: pretrain/{runs['T-C', 0].name} (crash: segfault-like crash)" in out
    assert "finetune: 0 completed, 0 running, 0 failed, 1 pending, 2 waiting, 1 blocked of 4" in out
    assert f"; sources in {folder}: 1 completed, 2 pending, 1 failed" in out


def test_a_sweep_that_left_runs_unstarted_for_their_sources_exits_2(source, tmp_path, capsys, monkeypatch):
    runs, folder = source
    path = write(tmp_path, "finetune.yaml", finetune_spec(folder, "  model.init_args.model: [C-T]\n  seed_everything: [0]\n"))
    monkeypatch.setattr(chain, "SOURCE_IDLE_S", 0.0)
    assert cli_main(["sweep", str(path), "--root", str(tmp_path / "runs")]) == 2
    out, err = capsys.readouterr()
    assert "sweep finetune: 1 waiting; report: " in out
    assert err.strip().endswith("ablate sweep: error: 1 run(s) not started: their sources are not completed (named "
                                f"above); `ablate status {path}` shows them; run this command again once they are")


def test_slurm_submits_only_runs_whose_sources_completed_and_a_second_launch_the_rest(source, tmp_path, fake_sbatch,
                                                                                      capsys, monkeypatch):
    from submitit.core.utils import DelayedSubmission

    from ablations.sweep import launch

    runs, folder = source
    finish(runs["C-T", 0])
    finish(runs["T-C", 1])
    path = write(tmp_path, "finetune.yaml", finetune_spec(folder))
    spec = SweepSpec.load(path)
    ids = {Path(r.source).name: r.id for r in spec.expand()}
    root = tmp_path / "runs"
    # the runs it could submit are submitted; those left for a second launch make it exit 2, as the local pool does
    assert cli_main(["sweep", str(path), "--root", str(root), "--executor", "slurm"]) == 2
    out, err = capsys.readouterr()
    assert "submitted 2 run(s)" in out
    assert err.strip().splitlines()[-1] == ("ablate sweep: error: 2 run(s) not started: their sources are not "
                                            f"completed (named above); `ablate status {path}` shows them; run this "
                                            "command again once they are")
    assert f"{ids[runs['C-T', 1].name]}: not started: waiting for pretrain/{runs['C-T', 1].name} (pending)" in err
    submitit = root / "finetune" / "submitit"
    assert sbatch_options((submitit / "4242_submission.sh").read_text())["array"].startswith("0-1%")  # 2 runs
    jobs = [DelayedSubmission.load(submitit / f"4242_{i}_submitted.pkl").function for i in range(2)]
    assert sorted(job.run_id for job in jobs) == sorted([ids[runs["C-T", 0].name], ids[runs["T-C", 1].name]])

    # a job whose source is not completed when it starts trains nothing (it would start from random weights)
    job = SlurmRun(spec, ids[runs["C-T", 1].name], str(root))
    with monkeypatch.context() as patch:
        patch.setattr(launch.subprocess, "Popen", lambda *a, **k: pytest.fail("a training process was started"))
        assert job() == f"waiting for {runs['C-T', 1]}"
    assert read_status(root / "finetune" / ids[runs["C-T", 1].name]) == "pending"

    # the first jobs ran; the other sources completed: the same command submits the rest, and only them
    for name in (runs["C-T", 0].name, runs["T-C", 1].name):
        finish(root / "finetune" / ids[name])
    finish(runs["C-T", 1])
    finish(runs["T-C", 0])
    (submitit / "4242_submission.sh").unlink()
    assert cli_main(["sweep", str(path), "--root", str(root), "--executor", "slurm"]) == 0
    assert "submitted 2 run(s)" in capsys.readouterr().out
    jobs = [DelayedSubmission.load(submitit / f"4242_{i}_submitted.pkl").function for i in range(2)]
    assert sorted(job.run_id for job in jobs) == sorted([ids[runs["C-T", 1].name], ids[runs["T-C", 0].name]])
    assert len(fake_sbatch.read_text().splitlines()) == 2  # one array per launch


class FirstWeights(L.Callback):
    """Saves the backbone's weights as training starts (after ``init_from`` loaded them) into the run folder."""

    def on_fit_start(self, trainer, pl_module):
        run_dir = Path(trainer.checkpoint_callback.dirpath).parent
        torch.save({k: v.detach().clone() for k, v in pl_module.backbone.state_dict().items()},
                   run_dir / "first_weights.pt")


def backbone_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


@pytest.mark.slow
def test_a_chained_sweep_beside_its_running_source_sweep_starts_each_run_after_its_source_from_its_weights(tmp_path):
    seeds = "  model.init_args.model: [C-T]\n  seed_everything: [0, 1]\n"  # layouts are matched in the tests above
    pre_path = write(tmp_path, "pretrain.yaml", digits_spec("pretrain", seeds))
    root = tmp_path / "runs"
    pretraining = subprocess.Popen([sys.executable, "-m", "ablations.cli", "sweep", str(pre_path), "--root", str(root)],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, "WANDB_MODE": "disabled"})
    try:
        deadline = time.time() + 120
        while not (root / "pretrain" / "manifest.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        callbacks = "  trainer.callbacks: [{class_path: tests.test_chain.FirstWeights}]\n"
        spec = SweepSpec.load(write(tmp_path, "finetune.yaml", finetune_spec(root / "pretrain", seeds, extra=callbacks)))
        assert read_status(Path(spec.expand()[-1].source)) != "completed"  # it starts while the pre-training trains
        results = run_sweep(spec, root, progress=False, fork=True)
    finally:
        assert pretraining.wait(timeout=600) == 0
    assert sorted(results.values()) == ["completed"] * 2
    sources = {r.source: backbone_of(Path(r.source) / "checkpoints" / "last.ckpt") for r in spec.expand()}
    other_seed = {r.source: next(o.source for o in spec.expand() if o.axes["model.init_args.model"] ==
                                 r.axes["model.init_args.model"] and o.source != r.source) for r in spec.expand()}
    for run in spec.expand():
        run_dir = root / "finetune" / run.id
        assert (run_dir / "attempts").read_text() == "1"  # never tried (and refused) before its source was done
        assert (run_dir / "attempts").stat().st_mtime >= (Path(run.source) / "summary.json").stat().st_mtime
        first = torch.load(run_dir / "first_weights.pt")
        own = sources[run.source]
        assert first.keys() == own.keys() and all(torch.equal(first[k], own[k]) for k in own)
        assert not all(torch.equal(first[k], sources[other_seed[run.source]][k]) for k in own)  # not the other seed's

    again = run_sweep(spec, root, progress=False)  # a rerun after completion starts nothing
    assert sorted(again.values()) == ["completed"] * 2
    assert all((root / "finetune" / r.id / "attempts").read_text() == "1" for r in spec.expand())


@pytest.mark.slow  # 7 s on the loaded 2-core machine: 30 runs parsed
def test_the_shipped_transfer_specs_pair_each_fine_tuning_run_with_its_layouts_and_seeds_pre_training(tmp_path,
                                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # the fine-tuning spec names runs/transfer_pretrain, under the working directory
    pretrain = SweepSpec.load(ROOT / "ablations/sweeps/transfer_pretrain.yaml")
    write_manifest(pretrain, pretrain.expand(), tmp_path / "runs" / pretrain.name)
    finetune = SweepSpec.load(ROOT / "ablations/sweeps/transfer_finetune.yaml")
    runs = finetune.expand()  # every override checked with `ablate train`'s parser
    by_point = {(r.axes["layout"], r.axes["seed_everything"]): r.id for r in pretrain.expand()}
    assert len(runs) == len(by_point) == 15
    assert {(r.axes["layout"], r.axes["seed_everything"]): Path(r.source).name for r in runs} == by_point
