"""A catalogue of the bad inputs a researcher hits. Each ends with one line that names the value and what would be
valid, exit code 2, and no run marked completed."""

import json
from pathlib import Path

import numpy as np
import pytest

import ablations.train
from ablations.cli import main as cli_main
from ablations.train import check_devices
from tests.test_train import SMALL_RUN

MODEL_ARGS = "--model.init_args.model_args={depths: [1, 1], dims: [16, 32], stem_dim: 16, head_dim: 16"
NO_DATA = [a for a in SMALL_RUN if not a.startswith("--data")]


def image_folder(root: Path, corrupt: bool = False, empty_class: bool = False) -> Path:
    """train/ and val/ with two classes of 16x16 PNGs; optionally one damaged file, or one class without images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(6 if split == "train" else 2):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    if empty_class:
        (root / "train" / "bird").mkdir()
        (root / "train" / "bird" / "notes.txt").write_text("no images here")
    return root


def folder_args(tmp_path, **kwargs) -> list[str]:
    root = image_folder(tmp_path / "images", **kwargs)
    return [*NO_DATA, "--data=datamodules.ImageFolderDataModule", f"--data.init_args.data_dir={root}",
            "--data.init_args.image_size=16", "--data.init_args.batch_size=4", "--data.init_args.val_fraction=0.25"]


def config_file(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return f"--config={path}"


# (id, arguments after SMALL_RUN or a function of tmp_path giving the whole argv, what the line must say)
CATALOGUE = [
    ("unknown model", ["--model.init_args.model=coatnet_99"], "unknown model 'coatnet_99'; valid names:"),
    ("layout letter", ["--model.init_args.model=C-Q-T"], "unknown stage type 'Q'"),
    ("malformed layout", ["--model.init_args.model=C--T"], "unknown model 'C--T'; valid names:"),
    ("depths/dims lengths", [MODEL_ARGS.replace("depths: [1, 1]", "depths: [1]") + "}"],
     "layout 'C-T' needs one depths entry per segment letter (2), got 1"),
    ("zero depth", [MODEL_ARGS.replace("depths: [1, 1]", "depths: [1, 0]") + "}"], "depths must be positive integers"),
    ("image size vs stride", ["--data.init_args.image_size=18"], "image_size 18x18 does not fit the network"),
    ("width vs head size", [MODEL_ARGS.replace("dims: [16, 32]", "dims: [16, 40]") + "}"],
     "attention width 40 is not a multiple of head_dim=16"),
    ("unknown model option", [MODEL_ARGS + ", depht: 3}"], "unknown option(s) depht"),
    ("relative-bias mode", [MODEL_ARGS + ", rel_pos: pre_softmax}"], "rel_pos='pre_softmax' is not valid"),
    ("downsample mode", [MODEL_ARGS + ", downsample: maxpool}"], "downsample='maxpool' is not valid"),
    ("fraction above 1", ["--data.init_args.train_fraction=1.5"], "train_fraction=1.5 is outside (0, 1]"),
    ("fraction 0", ["--data.init_args.train_fraction=0"], "train_fraction=0.0 is outside (0, 1]"),
    ("validation fraction 1", ["--data.init_args.val_fraction=1.0"], "val_fraction=1.0 is outside [0, 1)"),
    ("no training samples", ["--data.init_args.train_samples=0"], "train_samples=0 must be a positive number"),
    ("more samples than exist", ["--data.init_args.train_samples=5000"], "train_samples=5000 is more than the 96"),
    ("unknown data set", ["--data=FooDataModule"], "unknown data set 'FooDataModule'; valid data sets:"),
    ("unknown augmentation preset", ["--data.init_args.augmentation=autoaugment"],
     "augmentation='autoaugment' is not valid; choose one of none, crop_flip, randaugment"),
    ("mean/std lengths", ["--data.init_args.mean=[0.5]", "--data.init_args.std=[0.5, 0.5]"],
     "need one value per channel"),
    ("option typo", ["--data.init_args.batchsize=3"], "Option 'batchsize' is not accepted"),
    ("wrong type", ["--trainer.max_epochs=many"], "max_epochs"),
    ("EMA decay", ["--trainer.callbacks+=lightning_modules.callbacks.EMA", "--trainer.callbacks.decay=1.5"],
     "EMA decay=1.5 must be in (0, 1), e.g. 0.9999"),
    ("GPU asked, none present", ["--trainer.accelerator=gpu"],
     "--trainer.accelerator=gpu asks for GPUs but 0 GPU(s) are visible; use --trainer.accelerator=cpu"),
    ("YAML unknown key", lambda t: [config_file(t, "trainr:\n  max_epochs: 1\n"), *SMALL_RUN], "trainr"),
    ("YAML syntax", lambda t: [config_file(t, "model: [unclosed\n"), *SMALL_RUN],
     "config.yaml: while parsing a flow sequence at line 1, column 8 did not find expected ',' or ']'"),
    ("config file missing", lambda t: [f"--config={t / 'nope.yaml'}", *SMALL_RUN], "nope.yaml"),
    ("CIFAR missing, download off", lambda t: [*NO_DATA, "--data=datamodules.CIFAR10DataModule",
                                               f"--data.init_args.data_dir={t / 'data'}"],
     "pass --data.init_args.download true to fetch it"),
    ("image folder missing", lambda t: [*NO_DATA, "--data=datamodules.ImageFolderDataModule",
                                        f"--data.init_args.data_dir={t / 'imagenet'}"], "imagenet/train does not exist"),
    ("empty class folder", lambda t: folder_args(t, empty_class=True), "images/train/bird has no images"),
    ("corrupt image file", lambda t: folder_args(t, corrupt=True), "corrupt image file "),
    ("non-finite loss", ["--model.init_args.lr=1e30", "--model.init_args.warmup_epochs=0"],
     "training loss became nan at epoch 0"),
    ("batch too large for memory", ["--trainer.callbacks+=tests.helpers.OutOfMemoryAt"],
     "batch_size=16 does not fit in memory; try --data.init_args.batch_size=8"),
    ("disk full while training", ["--trainer.callbacks+=tests.helpers.DiskFullOnSave"],
     "ran out of space (No space left on device); free space and run the same command again"),
    ("run folder not writable", lambda t: [*SMALL_RUN, f"--run_dir={_a_file(t)}/run"], "is not writable"),
]


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("")
    return path


@pytest.mark.parametrize("args,needle", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_one_line_exit_2_and_nothing_completed(tmp_path, capsys, args, needle):
    argv = args(tmp_path) if callable(args) else [*SMALL_RUN, *args]
    if not any(a.startswith("--run_dir") for a in argv):
        argv.append(f"--run_dir={tmp_path / 'run'}")
    assert ablations.train.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert errors and errors[-1].startswith("ablate train: error: "), errors[-5:]
    assert sum(line.startswith("ablate train: error:") for line in errors) == 1
    assert not any("Traceback" in line for line in errors)
    assert needle in errors[-1], errors[-1]
    for summary in tmp_path.rglob("summary.json"):
        assert json.loads(summary.read_text())["status"] != "completed"


def test_disk_full_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ablations.train, "free_bytes", lambda folder: 5 * 2**20)
    run_dir = tmp_path / "run"
    assert ablations.train.main([*SMALL_RUN, f"--run_dir={run_dir}"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"ablate train: error: run folder {run_dir} has 5 MiB free, a run needs at least 100 MiB for its "
                    "checkpoints; free space or choose another --run_dir")
    assert not (run_dir / "checkpoints").exists()  # nothing trained
    summary = json.loads((run_dir / "summary.json").read_text())  # the run says why, for a sweep to read
    assert summary["status"] == "failed" and summary["failure"] == "disk" and summary["reason"] == line.removeprefix("ablate train: error: ")


@pytest.mark.parametrize("trainer,gpus,needle", [
    ({"accelerator": "gpu", "devices": 8}, 2, "--trainer.devices=8 asks for 8 GPUs but 2 GPU(s) are visible; use at most 2"),
    ({"accelerator": "cuda", "devices": [0, 3]}, 2, "--trainer.devices=[0, 3] names GPU(s) [3] but 2 GPU(s)"),
    ({"accelerator": "auto", "devices": 4}, 1, "asks for 4 GPUs but 1 GPU(s) are visible"),
])
def test_more_gpus_than_exist(trainer, gpus, needle):
    with pytest.raises(ValueError) as err:
        check_devices(trainer, gpus)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cpu_processes_are_not_gpus():
    check_devices({"accelerator": "cpu", "devices": 8}, 0)  # 8 CPU processes are fine


@pytest.mark.parametrize("spec,needle", [
    ("name: x\nconfig: c.yaml\ngird: {}\n", "unknown key(s) gird in sweep spec"),
    ("name: x\nconfig: c.yaml\nbudget: huge\ngrid: {layout: [C-C-T-T]}\n", "the layout axis needs a budget; budget='huge'"),
    ("name: x\nconfig: missing.yaml\ngrid: {seed_everything: [0]}\n", "base config missing.yaml of sweep spec"),
])
def test_bad_sweep_spec_is_one_line(tmp_path, capsys, spec, needle):
    path = tmp_path / "spec.yaml"
    path.write_text(spec)
    assert cli_main(["sweep", str(path), "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ablate sweep: error: ") and needle in err and "\n" not in err


def test_yaml_cannot_execute_code(tmp_path, capsys):
    """Configs and sweep specs are read with YAML's safe loader: a python tag is an error, never a call."""
    marker = tmp_path / "pwned"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    config = tmp_path / "config.yaml"
    config.write_text(f"seed_everything: {tag}\n")
    assert ablations.train.main([f"--config={config}", *SMALL_RUN, f"--run_dir={tmp_path / 'run'}"]) == 2
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: x\nconfig: {config}\ngrid: {{seed_everything: [{tag}]}}\n")
    assert cli_main(["sweep", str(spec), "--root", str(tmp_path / "runs")]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert "could not determine a constructor for the tag" in err[-1] and f"sweep spec {spec}" in err[-1]
