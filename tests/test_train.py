"""`ablate train` as a researcher runs it: run folders, resume after SIGKILL, failures, DDP on CPU."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ablations.training.cli import main as train_main
from lightning_modules import compat
from lightning_modules.classifier import ImageClassifier
from lightning_modules.optim import no_decay

ROOT = Path(__file__).resolve().parents[1]
SMALL_RUN = [
    "--model.class_path=lightning_modules.classifier.ImageClassifier",
    "--model.init_args.model=C-T", "--model.init_args.model_args={depths: [1, 1], dims: [16, 32], stem_dim: 16, head_dim: 16}",
    "--model.init_args.mixup_alpha=0.0", "--model.init_args.lr=0.003",
    "--data=datamodules.SyntheticDataModule", "--data.init_args.image_size=16", "--data.init_args.num_classes=4",
    "--data.init_args.train_size=96", "--data.init_args.test_size=32", "--data.init_args.batch_size=16",
    "--data.init_args.augmentation=crop_flip",
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.logger=false", "--trainer.max_epochs=3",
]


def run_cli(*args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "ablations.cli", "train", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "WANDB_MODE": "disabled", **(env or {})}, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_run_folder_records_everything(tmp_path):
    run_dir = tmp_path / "run"
    assert train_main([*SMALL_RUN, f"--run_dir={run_dir}"]) == 0
    rows = read_metrics(run_dir)
    # an evaluation after steps 1, 2, 4, 8 and at each epoch's end (5 steps an epoch), a row each
    assert [int(r["step"]) for r in rows] == [1, 2, 4, 5, 8, 10, 15]
    epoch_ends = [r for r in rows if r["train/loss"] != ""]
    assert [(int(r["epoch"]), int(r["step"])) for r in epoch_ends] == [(0, 5), (1, 10), (2, 15)]
    for column in ("train_eval/loss", "train_eval/acc", "val/loss", "val/acc", "test/loss", "test/acc", "gap/acc"):
        assert all(r[column] != "" for r in rows), column
    for column in ("lr", "epoch_time", "images_per_s"):
        assert all(r[column] != "" for r in epoch_ends), column
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["params"] > 0 and summary["flops"] > 0
    assert summary["final"]["test/acc"] == pytest.approx(float(rows[-1]["test/acc"]))
    assert summary["best"]["val/acc"] == max(float(r["val/acc"]) for r in rows)
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and (run_dir / "checkpoints" / "best.ckpt").exists()
    assert "class_path: datamodules.SyntheticDataModule" in (run_dir / "config.yaml").read_text()
    # the learning rate warms up then decays to the floor
    assert float(rows[-1]["lr"]) == pytest.approx(1e-5)
    # running the same command again finds the run completed and leaves it alone
    before = (run_dir / "summary.json").read_text()
    assert train_main([*SMALL_RUN, f"--run_dir={run_dir}"]) == 0
    assert (run_dir / "summary.json").read_text() == before


def test_printed_config_runs_again_unchanged(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main([*SMALL_RUN, "--print_config"])
    printed = capsys.readouterr().out
    (tmp_path / "config.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        train_main([f"--config={tmp_path / 'config.yaml'}", "--print_config"])
    assert capsys.readouterr().out == printed


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli(*SMALL_RUN, f"--run_dir={straight}")
    killer = [f"--trainer.callbacks+=tests.helpers.KillOnce", "--trainer.callbacks.epoch=1",
              "--trainer.callbacks.batch=2", f"--trainer.callbacks.marker={tmp_path / 'killed'}"]
    first = run_cli(*SMALL_RUN, *killer, f"--run_dir={resumed}", check=False)
    assert first.returncode == -9 and (tmp_path / "killed").exists()
    assert json.loads((resumed / "summary.json").read_text())["status"] == "running"  # never marked completed
    run_cli(*SMALL_RUN, *killer, f"--run_dir={resumed}")  # the same command resumes from last.ckpt
    a, b = read_metrics(straight), read_metrics(resumed)
    columns = ("train/loss", "train_eval/loss", "val/acc", "test/loss", "test/acc")
    assert [[r[c] for c in columns] for r in a] == [[r[c] for c in columns] for r in b]
    sa = json.loads((straight / "summary.json").read_text())["final"]
    sb = json.loads((resumed / "summary.json").read_text())["final"]
    assert sa["test/loss"] == sb["test/loss"] and sa["test/acc"] == sb["test/acc"]


def test_non_finite_loss_fails_the_run_with_the_reason(tmp_path, capsys):
    run_dir = tmp_path / "nan"
    code = train_main([*SMALL_RUN, "--model.init_args.lr=1e30", "--model.init_args.warmup_epochs=0",
                       f"--run_dir={run_dir}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ablate train: error: training loss became")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "training loss became" in summary["reason"]


@pytest.mark.parametrize("args,needle", [
    (["--model.init_args.model=coatnet_99"], "unknown model 'coatnet_99'; valid names:"),
    (["--model.init_args.model=C-Q-T"], "unknown stage type 'Q'"),
    (["--data.init_args.train_fraction=1.5"], "--data.init_args.train_fraction 1.5 is not valid; expected a number in (0, 1]"),
    (["--data=FooDataModule"], "unknown data set 'FooDataModule'; valid data sets: CIFAR100DataModule, CIFAR10DataModule"),
    (["--data.init_args.batchsize=3"], "data: Option 'batchsize' is not accepted"),
])
def test_bad_input_is_one_line_and_nothing_is_completed(tmp_path, capsys, args, needle):
    run_dir = tmp_path / "bad"
    assert train_main([*SMALL_RUN, *args, f"--run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.strip().count("\n") == 0
    assert not (run_dir / "summary.json").exists()


def test_missing_data_folder_names_the_path(tmp_path, capsys):
    args = [a for a in SMALL_RUN if not a.startswith("--data")]
    code = train_main([*args, "--data=datamodules.ImageFolderDataModule", f"--data.init_args.data_dir={tmp_path / 'imagenet'}",
                       f"--run_dir={tmp_path / 'run'}"])
    assert code == 2 and f"image folder {tmp_path / 'imagenet' / 'train'} does not exist" in capsys.readouterr().err


def test_weight_decay_skips_norms_biases_and_bias_tables():
    model = ImageClassifier("C-T", model_args=dict(depths=(1, 1), dims=(16, 32), stem_dim=16, head_dim=16),
                            num_classes=3, image_size=16)
    names = {n for n, p in model.backbone.named_parameters() if no_decay(n, p)}
    assert any(n.endswith("rel_bias.table") for n in names)
    assert all(not n.endswith("weight") or "norm" in n or model.backbone.get_parameter(n).ndim == 1 for n in names)
    assert not any(n.endswith("qkv.weight") for n in names)


@pytest.mark.slow
def test_ddp_on_cpu_two_ranks_synchronised_metrics(tmp_path):
    run_dir, reports = tmp_path / "ddp", tmp_path / "ranks"
    run_cli(*[a for a in SMALL_RUN if not a.startswith("--trainer.devices") and "max_epochs" not in a],
            "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_epochs=1",
            "--data.init_args.train_size=100", "--data.init_args.val_fraction=0.25", "--data.init_args.test_size=33",
            "--trainer.callbacks+=tests.helpers.RankReport", f"--trainer.callbacks.out_dir={reports}",
            f"--run_dir={run_dir}")
    ranks = [json.loads((reports / f"rank{r}-epoch0.json").read_text()) for r in (0, 1)]
    assert all(r["train_batches"] > 0 for r in ranks)  # both ranks trained
    val_size = 25  # odd: a padding sampler would count one sample twice
    assert sum(r["val_seen"] for r in ranks) == val_size  # no sample counted twice, none left out
    logged = float(read_metrics(run_dir)[-1]["val/acc"])
    assert logged == pytest.approx(sum(r["val_correct"] for r in ranks) / val_size)
    # the test's predictions gathered from both ranks (17 and 16 images) into the test set's order, written once
    from datamodules import SyntheticDataModule
    from lightning_modules.run_folder import read_predictions

    predictions = read_predictions(run_dir)
    test_set = SyntheticDataModule(image_size=16, num_classes=4, test_size=33).load_test()
    assert predictions["target"].tolist() == list(test_set.targets)
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    assert (predictions["pred"] == predictions["target"]).mean() == pytest.approx(final["test/acc"], abs=1e-6)
    assert predictions["loss"].mean() == pytest.approx(final["test/loss"], rel=1e-5)


@pytest.mark.slow
def test_a_compiled_models_checkpoint_loads_uncompiled_and_predicts_the_same(tmp_path):
    """Runs on GPUs compile by default; their checkpoints load where nothing compiles (an analysis on a laptop,
    init_from): the Trainer's checkpoint of a compiled model, loaded with compile=False, is a plain model that
    predicts what the compiled model's weights predict."""
    import lightning as L

    args = dict(model="C-T", model_args=dict(depths=(1, 1), dims=(16, 32), stem_dim=16, head_dim=16), num_classes=3,
                image_size=16)
    torch.manual_seed(0)
    compiled = ImageClassifier(**args, compile=True)
    torch.manual_seed(0)
    reference = ImageClassifier(**args).eval()  # the same weights, never compiled
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.strategy.connect(compiled)
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "compiled.ckpt", compile=False).eval()
    assert compat.is_compiled(compiled.backbone) and not compat.is_compiled(loaded.backbone)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), rtol=0, atol=0)
        assert not torch.allclose(ImageClassifier(**args).eval()(x), reference(x))  # other weights predict otherwise


def test_wandb_records_the_nested_config_summaries_and_every_logged_metric(tmp_path, monkeypatch):
    """Read back from what an offline W&B run recorded (its .wandb log): the nested config once, never overwritten
    by the module's flat hyperparameters; summaries by define_metric; lr and images/s in the history; one run per
    run folder, continued by a resume. A metric the module logs reaches metrics.csv, the table and W&B."""
    from ablations.analysis import load_runs
    from tests.wandb_records import OfflineRun

    monkeypatch.setenv("WANDB_MODE", "offline")  # respected: a local copy, nothing sent
    run_dir = tmp_path / "ema"
    args = [a for a in SMALL_RUN if "logger" not in a and "class_path" not in a]
    stop = ["--trainer.callbacks+=tests.helpers.KillOnce", "--trainer.callbacks.epoch=1", "--trainer.callbacks.batch=2",
            "--trainer.callbacks.signal=SIGTERM", f"--trainer.callbacks.marker={tmp_path / 'stopped'}"]
    command = [*args, "--model.class_path=tests.helpers.WithErrorRate", "--trainer.callbacks+=lightning_modules.callbacks.EMA",
               "--trainer.callbacks.decay=0.9", *stop, "--wandb.enabled=true", "--wandb.group=test-sweep",
               f"--run_dir={run_dir}"]
    assert train_main(command) == 3  # preempted in epoch 1
    assert train_main(command) == 0  # resumed
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    run = OfflineRun(run_dir)
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 2 and run.id == (run_dir / "wandb_id").read_text()
    assert run.group == "test-sweep" and run.job_type == "C-T"
    model = run.config["model"]
    assert isinstance(model, dict) and model["init_args"]["model"] == "C-T"
    assert model["init_args"]["num_classes"] == 4 and run.config["trainer"]["max_epochs"] == 3
    assert all("lr" not in update and "model" not in update or isinstance(update["model"], dict)
               for update in run.config_records)  # no flat hyperparameter ever written over the nested config
    rows = read_metrics(run_dir)
    best = max(float(r["val/acc"]) for r in rows if r["val/acc"])
    assert run.summary["val/acc"] == {"max": pytest.approx(best)}
    assert run.summary["train_eval/loss"] == {"min": pytest.approx(min(float(r["train_eval/loss"]) for r in rows))}
    assert run.summary["test/acc"] == {"last": pytest.approx(float(rows[-1]["test/acc"]))}
    history = [row for row in run.rows if "lr" in row]
    assert len(history) >= 3 and all(row["images_per_s"] > 0 for row in history)
    assert "val/err" in rows[0] and any("val/err" in row for row in run.rows)
    assert load_runs(run_dir)["val_err"].notna().all()
    assert "predictions.npz" in run.files  # the final test's per-image predictions, uploaded as the W&B run ends


def test_wandb_run_ids_are_per_run_folder_and_online_mode_follows_wandb(tmp_path, monkeypatch):
    import psutil

    from lightning_modules.wandb_run import run_id, wandb_mode

    assert run_id(tmp_path / "a") == run_id(tmp_path / "a") != run_id(tmp_path / "b")  # same config, two folders
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))

    assert wandb_mode() == "offline"  # no credentials anywhere
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text("machine wandb.example.org\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == "offline"  # a key for another host is not one for W&B's default server
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode() == "online"  # a self-hosted server, by W&B's own rules
    # Deciding started no W&B service here: one that cannot reach the server once kept a run from exiting.
    assert not [c.name() for c in psutil.Process().children(recursive=True) if c.pid not in before and "wandb" in c.name()]
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() is None  # W&B reads WANDB_MODE itself


@pytest.mark.parametrize("config", sorted((ROOT / "ablations" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_parse(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main([f"--config={config}", "--print_config"])
    assert exit_info.value.code in (0, None) and "class_path: lightning_modules.classifier.ImageClassifier" in capsys.readouterr().out


@pytest.mark.parametrize("trainer,cuda,gpus,expected", [
    ({"accelerator": "auto", "devices": "auto", "precision": None}, True, 4, {"precision": "bf16-mixed", "sync_batchnorm": True}),
    ({"accelerator": "gpu", "devices": 1, "precision": None}, True, 4, {"precision": "bf16-mixed"}),
    ({"accelerator": "gpu", "devices": 1, "num_nodes": 2, "precision": "32-true"}, True, 8, {"sync_batchnorm": True}),
    ({"accelerator": "cpu", "devices": 2, "precision": None}, True, 4, {"precision": "32-true"}),
    ({"accelerator": "auto", "devices": 2, "precision": None}, False, 0, {"precision": "32-true"}),
])
def test_device_defaults(trainer, cuda, gpus, expected):
    from ablations.training.trainer_options import device_defaults

    assert device_defaults(trainer, cuda, gpus) == expected


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_and_cutmix_train_on_soft_targets(mixup, cutmix):
    model = ImageClassifier("C-T", model_args=dict(depths=(1, 1), dims=(16, 32), stem_dim=16, head_dim=16),
                            num_classes=4, image_size=16, mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.1)
    images, targets = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    mixed, soft = model.mix(images, targets)
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
    assert not torch.equal(mixed, images)
    loss = model.training_step((images, targets), 0)
    assert torch.isfinite(loss) and loss.requires_grad


@pytest.mark.slow
def test_device_path_trains_as_well_as_the_dataloader_path(tmp_path):
    """Same study, same augmentation (crop + flip): the device path's accuracy matches the workers' within noise."""
    args = ["--config=ablations/configs/digits_tiny.yaml", "--model.init_args.model=C-T",
            "--model.init_args.model_args={depths: [1, 1], dims: [32, 64], stem_dim: 32, head_dim: 32}",
            "--data.init_args.train_fraction=0.5", "--data.init_args.augmentation=crop_flip",
            "--data.init_args.batch_size=16", "--model.init_args.lr=0.004", "--trainer.max_epochs=5",
            "--trainer.logger=false"]
    accs = {}
    for device_data in (True, False):
        run_dir = tmp_path / str(device_data)
        assert train_main([*args, f"--data.init_args.device_data={device_data}", f"--run_dir={run_dir}"]) == 0
        accs[device_data] = json.loads((run_dir / "summary.json").read_text())["final"]["test/acc"]
    assert min(accs.values()) > 0.6 and abs(accs[True] - accs[False]) < 0.08, accs


def test_training_steps_do_not_read_values_back_from_the_device(tmp_path, monkeypatch):
    """A `.item()` per step stalls a GPU every step. Reads may happen per evaluation and per epoch (metrics, the
    loss check at the epoch's end), so with as many evaluations their count must not grow with the steps."""
    calls = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or original(self))
    counts = {}
    for train_size in (192, 240):  # 12 and 15 steps, evaluated after steps 1, 2, 4, 8 and the last
        calls.clear()
        args = [arg for arg in SMALL_RUN if not arg.startswith("--data.init_args.train_size")]
        assert train_main([*args, f"--data.init_args.train_size={train_size}", "--data.init_args.val_fraction=0.25",
                           "--trainer.max_epochs=1", f"--run_dir={tmp_path / str(train_size)}"]) == 0
        counts[train_size] = len(calls)
        assert len(read_metrics(tmp_path / str(train_size))) == 5
    assert counts[192] == counts[240], counts


def test_compile_by_default_on_gpus_only():
    from types import SimpleNamespace

    def placed(device, **kwargs):
        module = ImageClassifier(model="C-T", model_args={"depths": [1, 1], "dims": [16, 32]}, image_size=16, **kwargs)
        module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        module.setup("fit")
        return compat.is_compiled(module.backbone)

    assert placed("cuda") and not placed("cpu") and placed("cpu", compile=True) and not placed("cuda", compile=False)


def test_a_run_without_a_validation_split_completes(tmp_path):
    run_dir = tmp_path / "run"
    assert train_main([*SMALL_RUN, "--data.init_args.val_fraction=0.0", "--trainer.max_epochs=1", f"--run_dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and "test/acc" in summary["final"]
    assert (run_dir / "checkpoints" / "best.ckpt").exists()


def test_an_option_added_later_with_a_default_changes_no_run_folder_run_id_or_resume(tmp_path, monkeypatch, capsys):
    """A run trained before ImageClassifier had an option: once the option exists (with a default), the same
    command finds the same default run folder (its config.yaml lacks the option: it had the default), passes the
    resume check and finds it completed; a sweep's run ids stay as they were."""
    import lightning_modules.classifier as classifier
    from ablations import identity
    from ablations.sweep import SweepSpec
    from ablations.sweep import overrides as sweep_overrides
    from ablations.training.cli import training_parser
    from tests.specs import tiny_spec

    argv = [*SMALL_RUN, "--trainer.max_epochs=1", f"--runs_root={tmp_path / 'runs'}"]
    assert train_main(argv) == 0
    [run_dir] = (tmp_path / "runs").iterdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_spec("later", "  model.init_args.model: [C-T, T-C]\n  seed_everything: [0, 1]\n"))
    ids = [r.id for r in SweepSpec.load(spec).expand()]

    class ImageClassifier(classifier.ImageClassifier):  # the same class path, one option more
        def __init__(self, *args, later_option: bool = False, **kwargs):
            super().__init__(*args, **kwargs)

    ImageClassifier.__module__, ImageClassifier.__qualname__ = classifier.__name__, "ImageClassifier"
    monkeypatch.setattr(classifier, "ImageClassifier", ImageClassifier)
    for cache in (training_parser.cache_clear, identity._signature_default.cache_clear, sweep_overrides._RESOLVED.clear):
        cache()
    try:
        parser = training_parser()  # rebuilt: it sees the new option, and config.yaml would record it
        assert "later_option: false" in parser.dump(parser.parse_args(SMALL_RUN))
        capsys.readouterr()
        assert train_main(argv) == 0
        assert capsys.readouterr().err.strip().endswith(f"{run_dir} is already completed; delete its summary.json to "
                                                        "run it again")
        assert [p.name for p in (tmp_path / "runs").iterdir()] == [run_dir.name]
        assert [r.id for r in SweepSpec.load(spec).expand()] == ids
    finally:
        for cache in (training_parser.cache_clear, identity._signature_default.cache_clear,
                      sweep_overrides._RESOLVED.clear):
            cache()


def _wandb_env(tmp_path, monkeypatch, url: str) -> None:
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", url)


def test_a_run_whose_wandb_server_cannot_be_reached_trains_offline_and_wandb_dir_is_respected(fresh_wandb, tmp_path, monkeypatch,
                                                                                               capsys):
    """W&B on, credentials present, the server not there (a closed loopback port): the run says so in one line,
    logs offline (under WANDB_DIR, not the run folder) and completes, without waiting on W&B's timeout."""
    import socket
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    _wandb_env(tmp_path, monkeypatch, url)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-files"))
    run_dir = tmp_path / "run"
    start = time.monotonic()
    assert train_main([*SMALL_RUN, "--trainer.max_epochs=1", "--wandb.enabled=true", f"--run_dir={run_dir}"]) == 0
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err
    assert f"W&B at {url} could not be reached; logging offline to {tmp_path / 'wandb-files'} instead" in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert list((tmp_path / "wandb-files" / "wandb").glob("offline-run-*")) and not (run_dir / "wandb").exists()


def test_a_wandb_server_that_refuses_the_credentials_does_not_fail_the_run(fresh_wandb, tmp_path, monkeypatch, capsys):
    """wandb.init raising W&B's own AuthenticationError (the message the library gives for a refused key): the run
    goes on offline with one line, and completes; nothing a sweep would retry as a crash."""
    import wandb

    import lightning_modules.wandb_run as wandb_run

    _wandb_env(tmp_path, monkeypatch, "http://127.0.0.1:9")
    monkeypatch.setattr(wandb_run, "wandb_mode", lambda: "online")
    monkeypatch.setattr(wandb_run, "reachable", lambda timeout=5.0: True)
    real_init = wandb.init

    def init(*args, mode=None, **kwargs):
        if mode == "online":
            raise wandb.errors.AuthenticationError("WANDB_API_KEY invalid: API key must have 40+ characters, has 3.")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    run_dir = tmp_path / "run"
    assert train_main([*SMALL_RUN, "--trainer.max_epochs=1", "--wandb.enabled=true", f"--run_dir={run_dir}"]) == 0
    err = capsys.readouterr().err
    assert ("W&B could not start this run online (WANDB_API_KEY invalid: API key must have 40+ characters, has 3.); "
            f"logging offline to {run_dir} instead") in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["failure"] is None
    assert list(run_dir.glob("wandb/offline-run-*"))
