"""A data set defined in this file, outside the package: a DataModule subclass meeting the contract written at
``ImageDataModule.load_train`` trains through the Python API and `ablate train`. One laid out as torchvision's SVHN
(``.labels``, channels first) is refused in one line on both paths; wrapped in ``ArrayDataset`` it gives the
images a plain reference does."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from ablations.cli import main as cli_main
from datamodules import ArrayDataset, ImageDataModule
from lightning_modules.classifier import ImageClassifier
from lightning_modules.ranges import PositiveInt
from lightning_modules.run_folder import read_predictions
from tests.test_data import batches
from tests.test_train import SMALL_RUN


class StripesDataModule(ImageDataModule):
    """Three classes of 16x16 RGB images, with noise: horizontal stripes, vertical stripes, a checkerboard."""

    num_classes = 3
    native_size = (16, 16)

    def __init__(self, *args, train_size: PositiveInt = 120, test_size: PositiveInt = 30, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_size, self.test_size = train_size, test_size

    def _make(self, n: int, seed: int) -> ArrayDataset:
        rows, cols = np.indices(self.native_size) // 2
        patterns = np.stack([rows % 2, cols % 2, (rows + cols) % 2]) * 160 + 40  # (class, H, W)
        targets = np.arange(n) % self.num_classes
        noise = np.random.default_rng(seed).normal(0, 30, (n, *self.native_size, 3))
        return ArrayDataset(np.clip(patterns[targets][..., None] + noise, 0, 255).astype(np.uint8), targets)

    def load_train(self) -> ArrayDataset:
        return self._make(self.train_size, 1)

    def load_test(self) -> ArrayDataset:
        return self._make(self.test_size, 2)


TINY_MODEL = dict(model="C-T", model_args=dict(depths=(1, 1), dims=(16, 32), stem_dim=16, head_dim=16))
CLI_MODEL = [a for a in SMALL_RUN if not a.startswith("--data")]


def test_a_new_data_set_trains_through_the_python_api():
    """Stripes are told apart from a few epochs: the data reach the model as they were made."""
    L.seed_everything(0)
    data = StripesDataModule(batch_size=20, train_eval_samples=30)
    model = ImageClassifier(**TINY_MODEL, num_classes=data.num_classes, image_size=16, mixup_alpha=0.0, lr=3e-3)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    [result] = trainer.test(model, datamodule=data, verbose=False)
    assert data.on_device and data.split_sizes == {"train": 108, "val": 12, "train_eval": 30, "test": 30}
    assert result["test/acc"] > 0.8  # chance: 1/3; 0.97 when written


@pytest.mark.slow
def test_a_new_data_set_trains_through_ablate_train(tmp_path):
    run_dir = tmp_path / "run"
    assert cli_main(["train", *CLI_MODEL, "--trainer.max_epochs=1", f"--data={__name__}.StripesDataModule",
                     "--data.init_args.batch_size=20", f"--run_dir={run_dir}"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert read_predictions(run_dir)["target"].tolist() == StripesDataModule().load_test().targets


# --- a set laid out otherwise: torchvision's SVHN -------------------------------------------------------------
class SVHN(torch.utils.data.Dataset):
    """What torchvision's SVHN holds: ``data`` uint8 (N, 3, H, W), ``labels``; items are PIL images."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8)
        self.labels = np.arange(n) % 3

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return Image.fromarray(np.transpose(self.data[i], (1, 2, 0))), int(self.labels[i])


class SVHNWithTargets(SVHN):
    """Half adapted: ``targets`` given, the array still channels first."""

    @property
    def targets(self):
        return self.labels


class SVHNDataModule(StripesDataModule):
    base = SVHN

    def load_train(self):
        return self.base(self.train_size, 1)

    def load_test(self):
        return self.base(self.test_size, 2)


class HalfAdaptedDataModule(SVHNDataModule):
    base = SVHNWithTargets


class WrappedDataModule(SVHNDataModule):
    """The fix the error names: the arrays wrapped in ArrayDataset, channels last."""

    def load_train(self):
        svhn = super().load_train()
        return ArrayDataset(svhn.data.transpose(0, 2, 3, 1), svhn.labels)

    def load_test(self):
        svhn = super().load_test()
        return ArrayDataset(svhn.data.transpose(0, 2, 3, 1), svhn.labels)


@pytest.mark.parametrize("module,device_data,line", [
    ("SVHNDataModule", True, "SVHNDataModule.load_train(): SVHN has no .targets; valid: one int class index in 0..2 "
                             "per image (a set that names them otherwise, such as torchvision's SVHN with .labels, is "
                             "wrapped: ArrayDataset(images_nhwc, labels))"),
    ("SVHNDataModule", False, "SVHNDataModule.load_train(): SVHN has no .targets"),
    ("HalfAdaptedDataModule", True,
     "HalfAdaptedDataModule.load_train(): SVHNWithTargets.data is uint8 of shape (120, 3, 16, 16): the device path "
     "needs uint8 images (N, H, W, C) = (120, 16, 16, 3) (H x W the native_size, C in_chans); valid: return "
     "ArrayDataset(images_nhwc, labels) from load_train (channels-first arrays transposed by .transpose(0, 2, 3, 1)), "
     "or --data.init_args.device_data false"),
], ids=["labels, device path", "labels, loader path", "channels first, device path"])
def test_an_svhn_shaped_set_is_one_line_exit_2(tmp_path, capsys, module, device_data, line):
    assert cli_main(["train", *CLI_MODEL, f"--data={__name__}.{module}", f"--data.init_args.device_data={device_data}",
                     f"--run_dir={tmp_path / 'run'}"]) == 2
    [error] = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"ablate train: error: {line}")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_channels_first_arrays_give_the_reference_images_on_either_path_once_wrapped():
    """The loader path reads SVHN's items (PIL, channels last), which need no wrapping; the wrapped arrays on the
    device path give the same tensors, and both are the plain reference: the image (C, H, W) / 255, normalised."""
    options = dict(augmentation="none", batch_size=40, train_eval_samples=30)
    loader, device = HalfAdaptedDataModule(device_data=False, **options), WrappedDataModule(**options)
    loader.setup(), device.setup()
    assert not loader.on_device and device.on_device
    (x_loader, y_loader), (x_device, y_device) = batches(loader.test_dataloader()), batches(device.test_dataloader())
    svhn = SVHN(30, 2)
    mean, std = torch.tensor(loader.mean).view(3, 1, 1), torch.tensor(loader.std).view(3, 1, 1)
    reference = (torch.from_numpy(svhn.data).float() / 255 - mean) / std
    assert torch.equal(y_loader, torch.as_tensor(svhn.labels)) and torch.equal(y_device, y_loader)
    torch.testing.assert_close(x_loader, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(x_device, reference, atol=1e-6, rtol=0)
