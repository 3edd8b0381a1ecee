"""A catalogue of the bad inputs a researcher hits. Each ends with one line that names the value and what would be
valid, exit code 2, and no run marked completed."""

import json
from pathlib import Path

import numpy as np
import pytest

import ablations.training.cli
import ablations.training.run_setup
from ablations.cli import main as cli_main
from ablations.training.trainer_options import check_devices
from tests.test_train import SMALL_RUN

MODEL_ARGS = "--model.init_args.model_args={depths: [1, 1], dims: [16, 32], stem_dim: 16, head_dim: 16"
NO_DATA = [a for a in SMALL_RUN if not a.startswith("--data")]
DIGITS = Path(__file__).resolve().parents[1] / "ablations" / "configs" / "digits_tiny.yaml"


def image_folder(root: Path, corrupt: bool = False, empty_class: bool = False, val_classes=("cat", "dog"),
                 empty_val_class: bool = False) -> Path:
    """train/ and val/ with two classes of 16x16 PNGs; optionally one damaged file, one class without images (in
    train/, or only in val/), or other classes in val/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog") if split == "train" else val_classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(6 if split == "train" else 2):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    for split, empty in (("train", empty_class), ("val", empty_val_class)):
        if empty:
            (root / split / "bird").mkdir()
            (root / split / "bird" / "notes.txt").write_text("no images here")
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
    ("window vs feature map", ["--model.init_args.model=C-W", MODEL_ARGS + ", window: 3}"],
     "stage S2 (W) of layout 'C-W': window 3 does not divide the 2x2 feature map"),
    ("unknown budget", ["--model.init_args.model=C-T-C-T", "--model.init_args.budget=huge"],
     "unknown budget 'huge'; valid budgets: paper, cifar, tiny"),
    ("budget at another resolution", ["--model.init_args.model=C-C-T-T", "--model.init_args.budget=tiny"],
     "--model.init_args.budget tiny is sized for 32x32 images but the data are 16x16; no budget is sized for 16x16"),
    ("budget on a registry model", ["--model.init_args.model=cctt_tiny", "--model.init_args.budget=paper"],
     "--model.init_args.budget paper sizes a layout such as C-C-T-T; 'cctt_tiny' is a registry model with its own size"),
    ("block module", ["--model.init_args.imports=[my_blocks]"], "imports: module 'my_blocks' cannot be imported"),
    ("block module that registers nothing", ["--model.init_args.imports=[os]"],
     "imports: module 'os' registers no stage letter or model; valid: a module that registers one with @register_block"),
    ("fraction above 1", ["--data.init_args.train_fraction=1.5"],
     "--data.init_args.train_fraction 1.5 is not valid; expected a number in (0, 1]"),
    ("fraction 0", ["--data.init_args.train_fraction=0"], "--data.init_args.train_fraction 0 is not valid"),
    ("validation fraction 1", ["--data.init_args.val_fraction=1.0"],
     "--data.init_args.val_fraction 1.0 is not valid; expected a number in [0, 1)"),
    ("no training samples", ["--data.init_args.train_samples=0"],
     "--data.init_args.train_samples 0 is not valid; expected an integer > 0"),
    ("more samples than exist", ["--data.init_args.train_samples=5000"],
     "--data.init_args.train_samples 5000 is more than the 96 training images; valid: 1..96"),
    ("unknown data set", ["--data=FooDataModule"], "unknown data set 'FooDataModule'; valid data sets:"),
    ("unknown augmentation preset", ["--data.init_args.augmentation=autoaugment"],
     "--data.init_args.augmentation autoaugment is not valid; expected one of none, crop_flip, randaugment"),
    ("mean/std lengths", ["--data.init_args.mean=[0.5]", "--data.init_args.std=[0.5, 0.5]"],
     "need one value per channel"),
    ("option typo", ["--data.init_args.batchsize=3"],
     "Option 'batchsize' is not accepted; the closest option is --data.init_args.batch_size"),
    ("model option typo", ["--model.init_args.learning_rate=0.1"], "the closest option is --model.init_args.lr"),
    ("wrong type", ["--trainer.max_epochs=many"], "--trainer.max_epochs many is not valid; expected an integer"),
    ("EMA decay", ["--trainer.callbacks+=lightning_modules.callbacks.EMA", "--trainer.callbacks.decay=1.5"],
     "EMA decay=1.5 must be in (0, 1), e.g. 0.9999"),
    ("GPU asked, none present", ["--trainer.accelerator=gpu"],
     "--trainer.accelerator=gpu asks for GPUs but 0 GPU(s) are visible; use --trainer.accelerator=cpu"),
    ("YAML unknown key", lambda t: [config_file(t, "trainr:\n  max_epochs: 1\n"), *SMALL_RUN], "trainr"),
    ("YAML syntax", lambda t: [config_file(t, "model: [unclosed\n"), *SMALL_RUN],
     "config.yaml: while parsing a flow sequence at line 1, column 8 did not find expected ',' or ']'"),
    ("YAML syntax, --config PATH", lambda t: ["--config", config_file(t, "model: [unclosed\n").split("=", 1)[1], *SMALL_RUN],
     "config.yaml: while parsing a flow sequence at line 1"),
    ("YAML syntax in one of two configs",  # only the file at fault is named (the line once listed both)
     lambda t: [config_file(t, "model: [unclosed\n"), f"--config={_a_file(t, 'good.yaml', 'seed_everything: 0')}",
                *SMALL_RUN], "/config.yaml: while parsing a flow sequence"),
    ("config file missing", lambda t: [f"--config={t / 'nope.yaml'}", *SMALL_RUN], "nope.yaml"),
    ("CIFAR missing, download off", lambda t: [*NO_DATA, "--data=datamodules.CIFAR10DataModule",
                                               f"--data.init_args.data_dir={t / 'data'}"],
     "pass --data.init_args.download true to fetch it"),
    ("image folder missing", lambda t: [*NO_DATA, "--data=datamodules.ImageFolderDataModule",
                                        f"--data.init_args.data_dir={t / 'imagenet'}"], "imagenet/train does not exist"),
    ("empty class folder", lambda t: folder_args(t, empty_class=True), "images/train/bird has no images"),
    ("empty class folder only in val/", lambda t: folder_args(t, empty_val_class=True),
     "images/val/bird has no images"),
    ("corrupt image file", lambda t: folder_args(t, corrupt=True), "corrupt image file "),
    ("image folders with different classes", lambda t: folder_args(t, val_classes=("cat", "owl")),
     "train/ and val/ hold different classes (only in train/: ['dog']; only in val/: ['owl'])"),
    # every numeric option at 0, negative, NaN, inf, a wrong type; every enumerated option with a bogus value
    ("learning rate NaN", ["--model.init_args.lr=nan"], "--model.init_args.lr nan is not valid; expected a finite number > 0"),
    ("learning rate negative", ["--model.init_args.lr=-1"], "--model.init_args.lr -1 is not valid"),
    ("learning rate inf", ["--model.init_args.lr=inf"], "--model.init_args.lr inf is not valid"),
    ("learning rate 0", ["--model.init_args.lr=0"], "--model.init_args.lr 0 is not valid"),
    ("min_lr above lr", ["--model.init_args.min_lr=0.1"], "--model.init_args.min_lr 0.1 is above --model.init_args.lr 0.003"),
    ("min_lr not a number", ["--model.init_args.min_lr=abc"], "--model.init_args.min_lr abc is not valid; expected a finite number >= 0"),
    ("weight decay negative", ["--model.init_args.weight_decay=-0.1"], "--model.init_args.weight_decay -0.1 is not valid"),
    ("warm-up inf", ["--model.init_args.warmup_epochs=inf"], "--model.init_args.warmup_epochs inf is not valid"),
    ("label smoothing 1.5", ["--model.init_args.label_smoothing=1.5"],
     "--model.init_args.label_smoothing 1.5 is not valid; expected a number in [0, 1)"),
    ("MixUp alpha negative", ["--model.init_args.mixup_alpha=-1"],
     "--model.init_args.mixup_alpha -1 is not valid; expected a finite number >= 0"),
    ("CutMix alpha NaN", ["--model.init_args.cutmix_alpha=nan"], "--model.init_args.cutmix_alpha nan is not valid"),
    ("drop path 1.5", ["--model.init_args.drop_path=1.5"], "--model.init_args.drop_path 1.5 is not valid; expected a number in [0, 1)"),
    ("compile not a bool", ["--model.init_args.compile=maybe"], "--model.init_args.compile maybe is not valid; expected true or false"),
    ("model image size 0", ["--model.init_args.image_size=0"], "--model.init_args.image_size 0 is not valid"),
    ("batch size 0", ["--data.init_args.batch_size=0"], "--data.init_args.batch_size 0 is not valid; expected an integer > 0"),
    ("batch size negative", ["--data.init_args.batch_size=-1"], "--data.init_args.batch_size -1 is not valid"),
    ("batch size not an integer", ["--data.init_args.batch_size=1.5"], "--data.init_args.batch_size 1.5 is not valid"),
    ("eval batch size 0", ["--data.init_args.eval_batch_size=0"], "--data.init_args.eval_batch_size 0 is not valid"),
    ("fraction not a number", ["--data.init_args.train_fraction=abc"],
     "--data.init_args.train_fraction abc is not valid; expected a number in (0, 1]"),
    ("fraction NaN", ["--data.init_args.train_fraction=nan"], "--data.init_args.train_fraction nan is not valid"),
    ("validation fraction negative", ["--data.init_args.val_fraction=-0.1"], "--data.init_args.val_fraction -0.1 is not valid"),
    ("clean-subset size 0", ["--data.init_args.train_eval_samples=0"], "--data.init_args.train_eval_samples 0 is not valid"),
    ("loader workers negative", ["--data.init_args.num_workers=-1"],
     "--data.init_args.num_workers -1 is not valid; expected an integer >= 0"),
    ("std 0", ["--data.init_args.std=[0.0]"], "--data.init_args.std [0.0] is not valid; expected a finite number > 0"),
    ("synthetic classes 0", ["--data.init_args.num_classes=0"], "--data.init_args.num_classes 0 is not valid"),
    ("synthetic train size negative", ["--data.init_args.train_size=-5"], "--data.init_args.train_size -5 is not valid"),
    ("data image size inf", ["--data.init_args.image_size=inf"], "--data.init_args.image_size inf is not valid"),
    ("device data not a bool", ["--data.init_args.device_data=perhaps"], "--data.init_args.device_data perhaps is not valid"),
    ("validation split of no images", ["--data.init_args.train_samples=5"],
     "--data.init_args.val_fraction 0.1 of 5 training images leaves 0 for validation and 5 for training; valid: "
     "val_fraction 0 (no validation split) or --data.init_args.train_samples >= 6"),
    ("fraction of too few images to split", ["--data.init_args.train_fraction=0.001"],
     "--data.init_args.train_fraction 0.001 of 96 training images keeps 1, and val_fraction 0.1 of 1 leaves 0 for "
     "validation and 1 for training; valid: train_fraction >= 0.0625 (6 images) or val_fraction 0"),
    ("seed negative", ["--seed_everything=-3"], "--seed_everything -3 is not valid; expected an integer >= 0"),
    ("seed beyond numpy's range", ["--seed_everything=99999999999"],
     "--seed_everything 99999999999 is not valid; expected an integer >= 0 and <= 4294967295"),
    ("epochs 0", ["--trainer.max_epochs=0"], "--trainer.max_epochs 0 is not valid; expected an integer > 0"),
    ("epochs -1", ["--trainer.max_epochs=-1"], "--trainer.max_epochs -1 is not valid; expected an integer > 0"),
    ("gradient clip NaN", ["--trainer.gradient_clip_val=nan"], "--trainer.gradient_clip_val nan is not valid"),
    ("gradient accumulation 0", ["--trainer.accumulate_grad_batches=0"], "--trainer.accumulate_grad_batches 0 is not valid"),
    ("precision bogus", ["--trainer.precision=bogus"], "--trainer.precision bogus is not valid; expected an integer or one of"),
    ("accelerator bogus", ["--trainer.accelerator=tpu9"], "--trainer.accelerator tpu9 is not valid; expected one of auto, gpu, cpu"),
    ("strategy bogus", ["--trainer.strategy=dpp"], "--trainer.strategy dpp is not valid; expected one of auto, ddp, "),
    ("checkpoint interval 0", ["--checkpoint_every_n_steps=0"], "--checkpoint_every_n_steps 0 is not valid"),
    ("evaluation interval 0", ["--eval_every_n_steps=0"], "--eval_every_n_steps 0 is not valid; expected an integer > 0"),
    ("target loss negative", ["--target_loss=-1"], "--target_loss -1 is not valid; expected a finite number > 0"),
    ("target loss NaN", ["--target_loss=nan"], "--target_loss nan is not valid; expected a finite number > 0"),
    ("non-finite loss", ["--model.init_args.lr=1e30", "--model.init_args.warmup_epochs=0"],
     "training loss became nan at epoch 0"),
    ("batch too large for memory", ["--trainer.callbacks+=tests.helpers.OutOfMemoryAt"],
     "batch_size=16 does not fit in memory; try --data.init_args.batch_size=8"),
    ("disk full while training", ["--trainer.callbacks+=tests.helpers.DiskFullOnSave"],
     "ran out of space (No space left on device); free space and run the same command again"),
    ("run folder not writable", lambda t: [*SMALL_RUN, f"--run_dir={_a_file(t)}/run"], "is not writable"),
    # the optimizer (lightning_modules.optim) and the starting weights (lightning_modules.init_from)
    ("optimizer unknown", ["--model.init_args.optimizer=lion"],
     "--model.init_args.optimizer lion is not valid; expected one of adamw, sgd, rmsprop"),
    ("optimizer argument unknown", ["--model.init_args.optimizer_args={betas_x: 1}"],
     "--model.init_args.optimizer_args: unknown option(s) betas_x for adamw (torch.optim.AdamW); valid: betas,"),
    ("starting weights missing", lambda t: [*SMALL_RUN, f"--model.init_args.init_from={t / 'no-run'}"],
     "no such run folder or checkpoint file; valid: a completed run folder, a checkpoint file, or timm:NAME[@FILE]"),
    ("starting weights no checkpoint", lambda t: [*SMALL_RUN, f"--model.init_args.init_from={_a_file(t, 'w.ckpt', 'x')}"],
     "w.ckpt is not a readable training checkpoint"),
    ("starting weights not a CoAtNet", ["--model.init_args.init_from=timm:resnet50"],
     "'resnet50' is not one of timm's paper-style CoAtNets that from_timm converts; valid: timm:NAME[@FILE]"),
    ("new head without starting weights", ["--model.init_args.new_head=true"],
     "--model.init_args.new_head true starts a source's classifier fresh but no --model.init_args.init_from is given"),
]


def _a_file(tmp_path: Path, name: str = "a-file", text: str = "") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("args,needle", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_one_line_exit_2_and_nothing_completed(tmp_path, capsys, args, needle):
    argv = args(tmp_path) if callable(args) else [*SMALL_RUN, *args]
    if not any(a.startswith("--run_dir") for a in argv):
        argv.append(f"--run_dir={tmp_path / 'run'}")
    assert ablations.training.cli.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert errors and errors[-1].startswith("ablate train: error: "), errors[-5:]
    assert sum(line.startswith("ablate train: error:") for line in errors) == 1
    assert not any("Traceback" in line for line in errors)
    assert needle in errors[-1], errors[-1]
    for summary in tmp_path.rglob("summary.json"):
        assert json.loads(summary.read_text())["status"] != "completed"


@pytest.mark.parametrize("args", [
    lambda t: [*NO_DATA, "--data=datamodules.CIFAR10DataModule", f"--data.init_args.data_dir={t / 'data'}"],
    lambda t: [*SMALL_RUN, "--data.init_args.train_samples=5000"],
    lambda t: [*SMALL_RUN, "--data.init_args.train_fraction=0.001"],
], ids=["CIFAR missing", "more samples than exist", "fraction of too few images to split"])
def test_data_refused_at_set_up_has_no_lightning_line_before_its_error(tmp_path, capsys, args):
    """Data found missing, or too few to split, when the DataModule sets up, after the Trainer is built: Lightning's
    device lines ("GPU available: ...") wait for the data, so the one error line is all a user sees."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    lightning_log = logging.getLogger("lightning.pytorch")
    lightning_log.addHandler(handler)
    try:
        assert ablations.training.cli.main([*args(tmp_path), f"--run_dir={tmp_path / 'run'}"]) == 2
    finally:
        lightning_log.removeHandler(handler)
    assert [record.getMessage() for record in records] == []
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_disk_full_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ablations.training.run_setup, "free_bytes", lambda folder: 5 * 2**20)
    run_dir = tmp_path / "run"
    assert ablations.training.cli.main([*SMALL_RUN, f"--run_dir={run_dir}"]) == 2
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


@pytest.mark.parametrize("trainer", [
    {"accelerator": "cpu", "devices": 8}, {"accelerator": "auto", "devices": 8}, {"accelerator": "auto", "devices": "auto"},
    {"accelerator": "gpu", "devices": 1}, {"accelerator": "cuda", "devices": [0, 3]},
])
def test_the_device_check_refuses_what_lightning_would_and_nothing_else(trainer):
    """Lightning's own reading of the request on this machine is the reference: 8 CPU processes are not 8 GPUs, and a
    request Lightning would refuse once set-up is done is refused here before it."""
    import lightning
    import torch
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    try:
        lightning.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, **trainer)
        lightning_accepts = True
    except MisconfigurationException:
        lightning_accepts = False
    try:
        check_devices(trainer, torch.cuda.device_count())
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == lightning_accepts


@pytest.mark.parametrize("spec,needle", [
    ("name: x\nconfig: c.yaml\ngird: {}\n", "unknown key(s) gird in sweep spec"),
    ("name: x\nconfig: c.yaml\nbudget: huge\ngrid: {layout: [C-C-T-T]}\n", "the layout axis needs a budget; budget='huge'"),
    ("name: x\nconfig: missing.yaml\ngrid: {seed_everything: [0]}\n", "base config missing.yaml of sweep spec"),
    # every spec key with a wrong type, an empty axis, a negative retry count
    (f"name: x\nconfig: {DIGITS}\ngrid: {{seed_everything: []}}\n", "grid axis seed_everything is empty, so the sweep would have no runs"),
    (f"name: x\nconfig: {DIGITS}\ngrid: {{}}\n", "grid is empty; expected at least one axis"),
    (f"name: x\nconfig: {DIGITS}\ngrid: [seed_everything, 0]\n", "grid ['seed_everything', 0] is not valid; expected a mapping"),
    (f"name: x\nconfig: {DIGITS}\nmax_retries: -1\ngrid: {{seed_everything: [0]}}\n", "max_retries -1 is not valid; expected an integer >= 0"),
    (f"name: x\nconfig: {DIGITS}\nmax_retries: two\ngrid: {{seed_everything: [0]}}\n", "max_retries 'two' is not valid; expected an integer >= 0"),
    (f"name: x\nconfig: {DIGITS}\nmax_retries: true\ngrid: {{seed_everything: [0]}}\n", "max_retries True is not valid"),
    (f"name: [x]\nconfig: {DIGITS}\ngrid: {{seed_everything: [0]}}\n", "name ['x'] is not valid; expected a string"),
    (f"name: x\nconfig: 3\ngrid: {{seed_everything: [0]}}\n", "config 3 is not valid; expected a path"),
    (f"name: ../elsewhere\nconfig: {DIGITS}\ngrid: {{seed_everything: [0]}}\n",
     "name '../elsewhere' is not valid; expected a folder name without '/'"),
    (f"name: x\nconfig: {DIGITS}\nset: [a, b]\ngrid: {{seed_everything: [0]}}\n", "set ['a', 'b'] is not valid; expected a mapping"),
    (f"name: x\nconfig: {DIGITS}\nbudget: 5\ngrid: {{seed_everything: [0]}}\n", "budget 5 is not valid; expected a budget name"),
    ("- a list\n", "must be a mapping of budget, config, grid, init_from, margins, max_retries, name, set, slurm"),
    # a chained sweep's starting weights (ablations.sweep.chain)
    (f"name: x\nconfig: {DIGITS}\ninit_from: {{sweep: /nonexistent/pretrain}}\ngrid: {{seed_everything: [0]}}\n",
     "init_from sweep /nonexistent/pretrain does not exist; launch the source sweep first"),
    (f"name: x\nconfig: {DIGITS}\ninit_from: {{sweep: /nonexistent/pretrain, checkpoint: middle}}\n"
     "grid: {seed_everything: [0]}\n", "init_from checkpoint 'middle' is not valid; expected last"),
    # the report's equivalence margins and linked axes, checked as the spec loads
    (f"name: x\nconfig: {DIGITS}\nmargins: {{acc: 1}}\ngrid: {{seed_everything: [0]}}\n",
     "margin 'acc' is not a metric kind; valid: accuracy, log_loss"),
    (f"name: x\nconfig: {DIGITS}\nmargins: {{accuracy: 0}}\ngrid: {{seed_everything: [0]}}\n",
     "margin accuracy=0 is not valid; expected a positive number (points, default 1)"),
    (f"name: x\nconfig: {DIGITS}\ngrid: {{'data.init_args.train_fraction,target_loss': [[0.5, 0.2], [1.0]]}}\n",
     "linked axis data.init_args.train_fraction,target_loss value [1.0] is not valid; expected a list of 2 values"),
    # overrides checked by `ablate train`'s parser before any run: a typo named with the closest option, bad values
    (f"name: x\nconfig: {DIGITS}\ngrid: {{data.init_args.train_fraktion: [0.2, 0.3]}}\n",
     "sweep x: grid key data.init_args.train_fraktion is not an `ablate train` option; the closest option is "
     "data.init_args.train_fraction"),
    (f"name: x\nconfig: {DIGITS}\nset: {{data.init_args.batchsize: 8}}\ngrid: {{seed_everything: [0]}}\n",
     "sweep x: set key data.init_args.batchsize is not an `ablate train` option; the closest option is "
     "data.init_args.batch_size"),
    (f"name: x\nconfig: {DIGITS}\nset: {{trainer.max_epochs: 2, trainer.max_epochz: 1}}\ngrid: {{seed_everything: [0]}}\n",
     "sweep x: set key trainer.max_epochz is not an `ablate train` option; the closest option is trainer.max_epochs"),
    # the known keys fail on their own: their error, not a class option beside them (num_classes) named as a typo
    (f"name: x\nconfig: {DIGITS}\nset: {{data: datamodules.SyntheticDataModule, data.init_args.num_classes: 4, "
     "trainer.callbacks: [{class_path: no.such.Callback}]}\ngrid: {seed_everything: [0]}\n",
     "sweep x: set: --trainer.callbacks"),
    (f"name: x\nconfig: {DIGITS}\ngrid: {{model.init_args.learning_rate: [0.1]}}\n",
     "sweep x: grid key model.init_args.learning_rate is not an `ablate train` option; the closest option is "
     "model.init_args.lr"),  # an abbreviation is closer than a name spelled alike (min_lr)
    (f"name: x\nconfig: {DIGITS}\ngrid: {{model.init_args.lr: [0.001, -1]}}\n",
     "sweep x: grid: --model.init_args.lr -1 is not valid; expected a finite number > 0"),
    (f"name: x\nconfig: {DIGITS}\ngrid: {{seed_everything: [1, true]}}\n",
     "sweep x: grid: --seed_everything True is not valid; expected an integer >= 0"),
    (f"name: x\nconfig: {DIGITS}\ngrid: {{seed_everything: [99999999999]}}\n",
     "sweep x: grid: --seed_everything 99999999999 is not valid; expected an integer >= 0 and <= 4294967295"),
    (f"name: x\nconfig: {DIGITS}\nset: {{model.init_args.imports: [os]}}\ngrid: {{seed_everything: [0]}}\n",
     "imports: module 'os' registers no stage letter or model"),
    # one key in set and grid: refused as on the command line (`--set` of a grid axis), never the grid winning
    (f"name: x\nconfig: {DIGITS}\nset: {{seed_everything: 3}}\ngrid: {{seed_everything: [0, 1]}}\n",
     "set key seed_everything is also a grid axis, whose values would override it; give seed_everything in set or "
     "in grid, not both"),
    (f"name: x\nconfig: {DIGITS}\nset: {{trainer.max_epochs: 3}}\n"
     "grid:\n  data.init_args.train_fraction,trainer.max_epochs: [[0.5, 2], [1.0, 1]]\n",
     "set key trainer.max_epochs is also set by the grid axis data.init_args.train_fraction,trainer.max_epochs"),
    (f"name: x\nconfig: {DIGITS}\nset: {{trainer.max_epochs: 0}}\ngrid: {{seed_everything: [0]}}\n",
     "sweep x: set: --trainer.max_epochs 0 is not valid; expected an integer > 0"),
    # two spellings of one configuration: refused before any run, never trained twice
    (f"name: x\nconfig: {DIGITS}\ngrid: {{data.init_args.train_fraction: [1, 1.0]}}\n",
     "sweep x: grid points {data.init_args.train_fraction: 1} and {data.init_args.train_fraction: 1.0} are the same "
     "run once parsed"),
    (f"name: x\nconfig: {DIGITS}\ngrid: {{model.init_args.lr: [0.002, '2e-3'], seed_everything: [0]}}\n",
     "sweep x: grid points {model.init_args.lr: 0.002, seed_everything: 0} and {model.init_args.lr: '2e-3', "
     "seed_everything: 0} are the same run"),
])
def test_bad_sweep_spec_is_one_line(tmp_path, capsys, spec, needle):
    path = tmp_path / "spec.yaml"
    path.write_text(spec)
    assert cli_main(["sweep", str(path), "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ablate sweep: error: ") and needle in err and "\n" not in err, err
    assert not (tmp_path / "runs").exists()  # refused before any run folder, manifest or training


def test_yaml_cannot_execute_code(tmp_path, capsys):
    """Configs and sweep specs are read with YAML's safe loader: a python tag is an error, never a call."""
    marker = tmp_path / "pwned"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    config = tmp_path / "config.yaml"
    config.write_text(f"seed_everything: {tag}\n")
    assert ablations.training.cli.main([f"--config={config}", *SMALL_RUN, f"--run_dir={tmp_path / 'run'}"]) == 2
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: x\nconfig: {config}\ngrid: {{seed_everything: [{tag}]}}\n")
    assert cli_main(["sweep", str(spec), "--root", str(tmp_path / "runs")]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert "could not determine a constructor for the tag" in err[-1] and f"sweep spec {spec}" in err[-1]


def test_a_refused_command_prints_only_its_error():
    """As a user sees it, in a fresh process: no "Seed set to", no GPU lines, no tip before the one error line."""
    from tests.test_train import run_cli

    proc = run_cli("--config=ablations/configs/digits_tiny.yaml", "--trainer.max_epochs=0", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "ablate train: error: --trainer.max_epochs 0 is not valid; expected an integer > 0\n"


def _numeric_parameters():
    """(option, type) for every numeric parameter of the LightningModule and the DataModules, from their signatures."""
    import inspect
    import typing

    from datamodules import CIFAR10DataModule, DigitsDataModule, ImageDataModule, ImageFolderDataModule, SyntheticDataModule
    from lightning_modules.classifier import ImageClassifier

    classes = [("model", ImageClassifier), *(("data", c) for c in (ImageDataModule, SyntheticDataModule, DigitsDataModule,
                                                                   ImageFolderDataModule, CIFAR10DataModule))]
    for prefix, cls in classes:
        hints = typing.get_type_hints(cls.__init__)
        for name in inspect.signature(cls.__init__).parameters:
            if name in hints and _numbers_in(hints[name]):
                yield f"{prefix}.init_args.{name}", hints[name], cls


def _numbers_in(hint) -> list:
    import typing

    args = typing.get_args(hint)
    if args:
        return [t for a in args if a is not Ellipsis for t in _numbers_in(a)]
    return [hint] if isinstance(hint, type) and issubclass(hint, (int, float)) and hint is not bool else []


def test_every_numeric_option_declares_a_range():
    """A new numeric option typed plain `int` or `float` fails here: its range belongs in its annotation."""
    plain = [option for option, hint, _ in _numeric_parameters() if {int, float} & set(_numbers_in(hint))]
    assert not plain, f"numeric options without a declared range: {plain}"


LINK_TARGETS = {"model.init_args.num_classes", "model.init_args.in_chans", "data.init_args.seed"}  # set through links


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "abc"])
def test_every_numeric_option_refuses_negative_nan_inf_and_text_while_parsing(value):
    """Every scalar numeric option of the model and data modules, through `ablate train`'s parser (nothing built):
    one line naming the option, the value and what is valid."""
    from jsonargparse import ArgumentError

    from ablations.training.cli import training_parser
    from ablations.training.messages import one_line

    parser = training_parser()
    checked = set()
    for option, hint, cls in _numeric_parameters():
        if option in LINK_TARGETS or option in checked or "tuple" in str(hint).split("|")[0]:
            continue
        checked.add(option)
        data = f"--data={cls.__module__}.{cls.__name__}" if option.startswith("data") and cls.__name__ != "ImageDataModule" else ""
        args = [a for a in SMALL_RUN if not (data and a.startswith("--data"))] + ([data] if data else [])
        with pytest.raises(ArgumentError) as err:
            parser.parse_args([*args, f"--{option}={value}"])
        line = one_line(err.value)
        assert line.startswith(f"--{option} {value} is not valid; expected ") and "\n" not in line, line
    assert len(checked) >= 20, sorted(checked)


def _loopback(listen: bool):
    """A W&B server address on this machine: one that accepts connections (and never answers), or a closed port."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    if listen:
        server.listen(8)
    else:
        server.close()
    return server, url


@pytest.mark.parametrize("key,listen,needle", [
    (None, True, "W&B has no API key on this machine (No API key configured. Use `wandb login` to log in.); run "
                 "`wandb login` or set WANDB_API_KEY"),
    ("abc", True, "W&B refused the credentials (WANDB_API_KEY invalid: API key must have 40+ characters, has 3.); "
                  "run `wandb login --relogin` or set WANDB_API_KEY to a valid key"),
    ("a" * 40, False, "could not be reached (no connection within 5 s); check the network and WANDB_BASE_URL"),
], ids=["no credentials", "bad credentials", "W&B unreachable"])
def test_a_report_from_wandb_that_wandb_cannot_serve_is_one_line(fresh_wandb, tmp_path, monkeypatch, capsys, key, listen, needle):
    """The real wandb.Api on this machine only: no key (an empty HOME), a key W&B refuses, a server that is not
    there (a closed loopback port); one line saying what to do, exit code 2, in seconds."""
    import time

    server, url = _loopback(listen)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_BASE_URL", url)
    if key is None:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    else:
        monkeypatch.setenv("WANDB_API_KEY", key)
    start = time.monotonic()
    try:
        assert cli_main(["report", "wandb:someone/nothing", "--out", str(tmp_path / "out")]) == 2
    finally:
        server.close()
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip()
    assert err.startswith("ablate report: error: ") and needle in err and "\n" not in err, err
    assert not (tmp_path / "out" / "report.md").exists()
