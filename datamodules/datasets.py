"""The data sets of the study, each a thin subclass of ``ImageDataModule`` that loads the official splits."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets

from lightning_modules.ranges import NonNegativeInt, PositiveInt

from .base import ImageDataModule


class ArrayDataset(Dataset):
    """Images held in memory as uint8 (N, H, W, C) with integer targets; ``data`` as torchvision's CIFAR has it."""

    def __init__(self, images: np.ndarray, targets: np.ndarray):
        self.data, self.targets = images, [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i], self.targets[i]


def _presence_checked(cls: type) -> type:
    """torchvision's CIFAR reader, checking the unpacked files for presence rather than md5 (the downloaded
    archive's md5 is still checked), so data written in the same format by tests loads through the same code."""
    return type(cls.__name__, (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 through torchvision (python pickles under ``data_dir/cifar-10-batches-py``)."""

    num_classes = 10
    native_size = (32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    dataset_cls = _presence_checked(datasets.CIFAR10)
    folder = "cifar-10-batches-py"

    def __init__(self, *args, download: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.download = download

    def prepare_data(self) -> None:
        if self.download:
            try:
                self.dataset_cls(self.data_dir, train=True, download=True)
                self.dataset_cls(self.data_dir, train=False, download=True)
            except OSError as err:  # no network: say so in one line
                raise FileNotFoundError(f"could not download {self.folder} to {self.data_dir}: {err}") from None

    def _load(self, train: bool) -> Dataset:
        path = Path(self.data_dir) / self.folder
        expected = self.dataset_cls.train_list + self.dataset_cls.test_list + [[self.dataset_cls.meta["filename"], None]]
        if not all((path / name).is_file() for name, _ in expected):
            raise FileNotFoundError(
                f"CIFAR data not found at {path}; pass --data.init_args.download true to fetch it, or unpack the "
                "python version of the data set there"
            )
        return self.dataset_cls(self.data_dir, train=train, download=False)

    def load_train(self) -> Dataset:
        return self._load(True)

    def load_test(self) -> Dataset:
        return self._load(False)


class CIFAR100DataModule(CIFAR10DataModule):
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    dataset_cls = _presence_checked(datasets.CIFAR100)
    folder = "cifar-100-python"


def load_image(path: str):
    """PIL's loader, with a damaged or non-image file named in one line instead of a decoder traceback."""
    from PIL import UnidentifiedImageError

    try:
        image = datasets.folder.default_loader(path)
        image.load()
        return image
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"corrupt image file {path} ({err}); remove or replace it") from None


class LabelledFiles(Dataset):
    """Image files with integer labels, decoded on access (PIL), as ``ImageFolder`` does."""

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples
        self.targets = [t for _, t in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        return load_image(path), target


class ImageFolderDataModule(ImageDataModule):
    """ImageNet-style ``train/<class>/...`` and ``val/<class>/...``; Tiny-ImageNet's ``val/images`` with
    ``val/val_annotations.txt`` is read as it comes.

    The ``val`` folder is the official held-out split and serves as the test set; validation is carved from train.
    Labels follow the sorted class folders of ``train/``, also for ``val/``.
    """

    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(self, *args, image_size: PositiveInt = 224, **kwargs):
        super().__init__(*args, image_size=image_size, **kwargs)
        root = Path(self.data_dir)
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise FileNotFoundError(
                    f"image folder {root / split} does not exist; expected {root}/train/<class>/*.jpg and "
                    f"{root}/val/<class>/*.jpg (ImageNet or Tiny-ImageNet layout)"
                )
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if not classes:
            raise FileNotFoundError(f"{root / 'train'} has no class folders")
        extensions = datasets.folder.IMG_EXTENSIONS
        class_folders = [root / "train" / name for name in classes]
        tiny_imagenet = (root / "val" / "val_annotations.txt").exists()  # val/images, labels in a file
        val_classes = [] if tiny_imagenet else sorted(p.name for p in (root / "val").iterdir() if p.is_dir())
        class_folders += [root / "val" / name for name in val_classes]
        for folder in class_folders:  # each split's, before the splits are compared: an empty folder is named as
            # such; stops at each folder's first image (subfolders too): cheap even for ImageNet's 1000
            if not any(f.lower().endswith(extensions) for _, _, files in os.walk(folder) for f in files):
                raise FileNotFoundError(f"class folder {folder} has no images ({', '.join(extensions)}); "
                                        "add images or remove the folder")
        if not tiny_imagenet:
            # val/<class>/: a class train/ lacks would have its images dropped from the test set without a word.
            # (A train/ class missing from val/ drops nothing: the test set just has none of it.)
            if set(val_classes) - set(classes):
                only_train = sorted(set(classes) - set(val_classes)) or "none"
                only_val = sorted(set(val_classes) - set(classes)) or "none"
                raise ValueError(f"--data.init_args.data_dir {root}: train/ and val/ hold different classes (only in "
                                 f"train/: {only_train}; only in val/: {only_val}); valid: every val/ class folder also in train/")
        self.num_classes = len(classes)
        self.class_to_idx = {c: i for i, c in enumerate(classes)}  # ImageFolder's own order: sorted folder names
        self.native_size = None  # photos of any size, cropped to image_size

    def load_train(self) -> Dataset:
        return datasets.ImageFolder(Path(self.data_dir) / "train", loader=load_image)

    def load_test(self) -> Dataset:
        val = Path(self.data_dir) / "val"
        class_to_idx = self.class_to_idx
        annotations = val / "val_annotations.txt"
        if annotations.exists():  # Tiny-ImageNet: val/images/*.JPEG, labels in a tab-separated file
            rows = [line.split("\t")[:2] for line in annotations.read_text().splitlines() if line.strip()]
            unknown = sorted({wnid for _, wnid in rows} - class_to_idx.keys())
            if unknown:
                raise ValueError(f"{annotations} names classes missing from train/: {unknown[:5]}")
            return LabelledFiles([(str(val / "images" / name), class_to_idx[wnid]) for name, wnid in rows])
        extensions = datasets.folder.IMG_EXTENSIONS
        samples = datasets.DatasetFolder.make_dataset(str(val), class_to_idx, extensions, allow_empty=True)
        return LabelledFiles(samples)


class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), resized; the embedded default.

    A fixed 20% of the images, the same for every seed, is the test split. ``classes`` keeps only those digits, in
    both splits, labelled 0.. in the order given: a transfer study pre-trains on some digits and fine-tunes on the
    others.
    """

    num_classes = 10
    native_size = (8, 8)
    in_chans = 1
    mean = (0.3,)
    std = (0.35,)
    test_seed = 1234

    def __init__(self, *args, image_size: PositiveInt = 32, classes: list[NonNegativeInt] | None = None, **kwargs):
        super().__init__(*args, image_size=image_size, **kwargs)
        if classes is not None and (not classes or len(set(classes)) != len(classes)
                                    or not all(isinstance(c, int) and 0 <= c <= 9 for c in classes)):
            raise ValueError(f"--data.init_args.classes {classes} is not valid; expected distinct digits 0-9, "
                             "e.g. [0, 1, 2, 3, 4]")
        self.classes = classes
        self.num_classes = len(classes) if classes is not None else 10

    @cached_property
    def _arrays(self) -> tuple[ArrayDataset, ArrayDataset]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]  # 0..16 -> 0..255, (N, 8, 8, 1)
        order = np.random.default_rng(self.test_seed).permutation(len(images))
        n_test = len(images) // 5
        test, train = order[:n_test], order[n_test:]
        targets = digits.target
        if self.classes is not None:  # the same test images as without the option, those of the kept digits
            keep = np.isin(targets, self.classes)
            test, train = test[keep[test]], train[keep[train]]
            label = np.full(10, -1)
            label[self.classes] = np.arange(len(self.classes))
            targets = label[targets]
        return ArrayDataset(images[train], targets[train]), ArrayDataset(images[test], targets[test])

    def load_train(self) -> Dataset:
        return self._arrays[0]

    def load_test(self) -> Dataset:
        return self._arrays[1]


class SyntheticDataModule(ImageDataModule):
    """Random but learnable images (a fixed pattern per class plus noise) for smoke tests and benchmarks."""

    def __init__(self, *args, num_classes: PositiveInt = 10, image_size: PositiveInt = 32, train_size: PositiveInt = 512,
                 test_size: PositiveInt = 128,
                 **kwargs):
        super().__init__(*args, image_size=image_size, **kwargs)
        self.num_classes = num_classes
        self.native_size = self.image_size
        self.train_size, self.test_size = train_size, test_size

    def _make(self, n: int, seed: int) -> ArrayDataset:
        height, width = self.image_size
        patterns = torch.Generator().manual_seed(0)
        means = torch.rand(self.num_classes, height, width, 3, generator=patterns) * 255
        gen = torch.Generator().manual_seed(seed)
        targets = torch.arange(n) % self.num_classes
        noise = torch.randn(n, height, width, 3, generator=gen) * 40
        images = (means[targets] + noise).clamp(0, 255).to(torch.uint8).numpy()
        return ArrayDataset(images, targets.numpy())

    def load_train(self) -> Dataset:
        return self._make(self.train_size, 1)

    def load_test(self) -> Dataset:
        return self._make(self.test_size, 2)
