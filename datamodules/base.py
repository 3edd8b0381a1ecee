"""What every data set of the study shares: the data-size axis, the validation split, the clean training subset.

Order of operations, all deterministic given ``seed``:
1. the official training set is cut to ``train_fraction`` (or ``train_samples``), class-balanced;
2. the validation split (``val_fraction``, class-balanced) is carved out of that subset;
3. ``train_eval`` is a fixed subset of what remains (``train_eval_samples``), evaluated without augmentation,
   so that the clean training loss can be compared with the test loss at every epoch.
The official test split is never cut. With ``track_test`` (default) it is evaluated every epoch too.

Data sets held in memory as uint8 arrays (CIFAR, digits, synthetic) go to the accelerator whole and are
augmented there (``device_data``, see ``datamodules.device``); image folders and RandAugment use DataLoader
workers and torchvision transforms.

A new data set is a subclass of ``ImageDataModule`` whose ``load_train``/``load_test`` return data sets that meet
the contract written at ``load_train`` (checked at set-up by ``check_base``); ``docs/extending.md`` shows one.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence, get_args

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from lightning_modules.ranges import Finite, Fraction, NonNegativeInt, PositiveFinite, PositiveInt, Probability, Seed

from .device import DeviceBatches

Augmentation = Literal["none", "crop_flip", "randaugment"]
AUGMENTATIONS = get_args(Augmentation)


def balanced_subset(targets: Sequence[int], size: int, seed: int) -> np.ndarray:
    """``size`` indices spread over the classes in proportion to their frequency (largest remainder), seeded."""
    targets = np.asarray(targets)
    classes, counts = np.unique(targets, return_counts=True)
    if size >= len(targets):
        return np.arange(len(targets))
    quota = counts * size / len(targets)
    take = np.floor(quota).astype(int)
    remainder_order = np.argsort(-(quota - take), kind="stable")
    take[remainder_order[: size - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(targets == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


class SeededShuffle(Sampler):
    """Epoch k's order, and a seed for each sample's augmentation, as functions of (seed, k) alone.

    Yields ``(index, sample_seed)``; Lightning calls ``set_epoch`` before every epoch. Nothing depends on what the
    process ran before, so a resumed run sees exactly the batches an uninterrupted one does, with any number of
    workers.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0
        self.skip = 0  # positions already trained when resuming mid-epoch; applies to the next pass only

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def epoch_seed(self) -> int:
        return self.seed * 1_000_003 + self.epoch

    def order(self) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.epoch_seed()))

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.epoch_seed())
        order = torch.randperm(self.size, generator=gen).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=gen).tolist()
        skip, self.skip = self.skip, 0
        yield from zip(order[skip:], seeds[skip:])


class TransformedSubset(Dataset):
    """``base[indices[i]]`` with ``transform`` applied; a key ``(i, seed)`` seeds the augmentation first."""

    def __init__(self, base: Dataset, indices: Sequence[int], transform):
        self.base, self.indices, self.transform = base, np.asarray(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            torch.manual_seed(seed)
        image, target = self.base[int(self.indices[i])]
        return self.transform(image), target


class ImageDataModule(L.LightningDataModule):
    """Base of all data modules. Subclasses set ``num_classes``, ``native_size``, ``mean``/``std`` and load sets.

    ``device_data`` (default on) holds data sets that come as in-memory uint8 arrays on the training device and
    augments them there; it is off by itself for image folders and RandAugment, and ``False`` forces the
    DataLoader path everywhere.
    """

    num_classes: int
    native_size: tuple[int, int] | None  # None: images of varying size
    in_chans: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt | None = None,
        train_fraction: Fraction = 1.0,
        train_samples: PositiveInt | None = None,
        val_fraction: Probability = 0.1,
        train_eval_samples: PositiveInt = 10_000,
        image_size: PositiveInt | None = None,
        augmentation: Augmentation = "crop_flip",
        seed: Seed = 0,
        track_test: bool = True,
        mean: tuple[Finite, ...] | None = None,
        std: tuple[PositiveFinite, ...] | None = None,
        num_workers: NonNegativeInt = 0,
        pin_memory: bool = False,
        device_data: bool = True,
    ):
        super().__init__()  # the ranges are the annotations' (lightning_modules.ranges), checked while parsing
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.train_fraction = train_fraction
        self.train_samples = train_samples
        self.val_fraction = val_fraction
        self.train_eval_samples = train_eval_samples
        self.augmentation = augmentation
        self.seed = seed
        self.track_test = track_test
        if mean is not None or std is not None:  # default: the data set's own channel statistics
            self.mean, self.std = tuple(mean or self.mean), tuple(std or self.std)
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel each")
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.device_data = device_data
        self._image_size = image_size

    # --- what subclasses provide -----------------------------------------------------------------------------
    def load_train(self) -> Dataset:
        """The official training set, untransformed. It, and ``load_test``'s set, meet one contract, which set-up
        checks (``check_base``) so that a set laid out otherwise is a one-line error rather than wrong images:

        - ``ds[i]`` is ``(image, target)``, the image what ``v2.ToImage`` reads (a PIL image, a uint8 (H, W, C)
          array, a (C, H, W) tensor); ``len(ds)`` images;
        - ``ds.targets``: one int class index in ``0 .. num_classes - 1`` per image (the balanced splits read them);
        - optional, for the device path (``device_data``): ``ds.data``, every image in one uint8 numpy array of
          shape (N, H, W, C), or (N, H, W) for one channel, H x W the ``native_size`` and C ``in_chans``.

        ``datamodules.datasets.ArrayDataset`` is the reference; arrays laid out otherwise are wrapped in it, e.g.
        torchvision's SVHN (``.labels``, (N, C, H, W)): ``ArrayDataset(svhn.data.transpose(0, 2, 3, 1), svhn.labels)``.
        """
        raise NotImplementedError

    def load_test(self) -> Dataset:
        """The official test (or held-out validation) set, untransformed."""
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        size = self._image_size or self.native_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def split_indices(self, targets: Sequence[int]) -> dict[str, np.ndarray]:
        n = len(targets)
        size = self.train_samples if self.train_samples is not None else max(1, round(self.train_fraction * n))
        if size > n:
            raise ValueError(f"--data.init_args.train_samples {size} is more than the {n} training images; valid: 1..{n}")
        subset = balanced_subset(targets, size, self.seed)
        sub_targets = np.asarray(targets)[subset]
        n_val = round(self.val_fraction * len(subset))
        if self.val_fraction and not 0 < n_val < len(subset):  # an empty split would silently drop validation
            raise ValueError(self._split_error(n, len(subset), n_val))
        val_pos = balanced_subset(sub_targets, n_val, self.seed + 1) if n_val else np.array([], dtype=int)
        train = np.setdiff1d(subset, subset[val_pos])
        eval_pos = balanced_subset(np.asarray(targets)[train], min(self.train_eval_samples, len(train)), self.seed + 2)
        return {"train": train, "val": subset[val_pos], "train_eval": train[eval_pos]}

    def _split_error(self, n: int, size: int, n_val: int) -> str:
        """The line for a subset too small to split: it names the option that set the subset's size (a fraction
        of a few images, or a sample count) and the values of it that would split, or val_fraction 0."""
        least = next((s for s in range(1, n + 1) if 0 < round(self.val_fraction * s) < s), None)
        split = (f"--data.init_args.val_fraction {self.val_fraction} of {size} leaves {n_val} for validation and "
                 f"{size - n_val} for training")
        if self.train_samples is None and self.train_fraction < 1:  # the fraction set the size: it is named first
            fraction = (f"--data.init_args.train_fraction {self.train_fraction} of {n} training images keeps {size}, "
                        f"and {split.removeprefix('--data.init_args.')}")
            if least is None:
                return f"{fraction}; valid: val_fraction 0 (no validation split)"
            digits = 3 - math.floor(math.log10(least / n))  # 4 significant digits, rounded up: it keeps them
            return (f"{fraction}; valid: train_fraction >= {math.ceil(least / n * 10**digits) / 10**digits:g} "
                    f"({least} images) or val_fraction 0 (no validation split)")
        size_option = (f"--data.init_args.train_samples >= {least}" if self.train_samples is not None and least
                       else "more training images")
        return (f"--data.init_args.val_fraction {self.val_fraction} of {size} training images leaves {n_val} for "
                f"validation and {size - n_val} for training; valid: val_fraction 0 (no validation split) or "
                f"{size_option}")

    def transforms(self, train: bool) -> v2.Compose:
        height, width = self.image_size
        augment = train and self.augmentation != "none"
        steps: list[Any] = [v2.ToImage(), v2.ToDtype(torch.uint8, scale=True)]
        if self.native_size is None:  # photos of any size: ImageNet-style crops
            if augment:
                steps += [v2.RandomResizedCrop((height, width), antialias=True), v2.RandomHorizontalFlip()]
            else:
                steps += [v2.Resize(round(min(height, width) / 0.875), antialias=True), v2.CenterCrop((height, width))]
        else:
            if self.native_size != self.image_size:
                steps.append(v2.Resize((height, width), antialias=True))
            if augment:
                steps += [v2.RandomCrop((height, width), padding=max(height, width) // 8, padding_mode="reflect"),
                          v2.RandomHorizontalFlip()]
        if train and self.augmentation == "randaugment":
            steps.append(v2.RandAugment(num_ops=2, magnitude=15))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose(steps)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "_sets", None) is not None:
            return
        train_base, test_base = self.load_train(), self.load_test()
        self.on_device = self.device_data and self.augmentation != "randaugment" and all(
            isinstance(getattr(base, "data", None), np.ndarray) for base in (train_base, test_base))
        for loader, base in (("load_train", train_base), ("load_test", test_base)):
            self.check_base(base, loader)
        parts = self.split_indices(train_base.targets)
        if self.on_device:
            self._sets = {name: self._to_device(train_base, idx) for name, idx in parts.items()}
            self._sets["test"] = self._to_device(test_base, np.arange(len(test_base)))
        else:
            clean = self.transforms(train=False)
            self._sets = {
                "train": TransformedSubset(train_base, parts["train"], self.transforms(train=True)),
                "val": TransformedSubset(train_base, parts["val"], clean),
                "train_eval": TransformedSubset(train_base, parts["train_eval"], clean),
                "test": TransformedSubset(test_base, np.arange(len(test_base)), clean),
            }
        self.split_sizes = {name: len(ds[0] if self.on_device else ds) for name, ds in self._sets.items()}

    def check_base(self, base: Dataset, loader: str) -> None:
        """``base`` (what ``loader`` returned) meets the contract at ``load_train``; ``ValueError`` naming what does
        not, and what would. The arrays of the device path are checked when it is taken."""
        name = f"{type(self).__name__}.{loader}(): {type(base).__name__}"
        wrap = "ArrayDataset(images_nhwc, labels)"
        if getattr(base, "targets", None) is None:
            raise ValueError(f"{name} has no .targets; valid: one int class index in 0..{self.num_classes - 1} per "
                             f"image (a set that names them otherwise, such as torchvision's SVHN with .labels, is "
                             f"wrapped: {wrap})")
        targets = np.asarray(base.targets)
        if targets.shape != (len(base),):
            raise ValueError(f"{name}.targets has shape {targets.shape} for {len(base)} images; valid: one int class "
                             "index per image")
        integers = targets.dtype.kind in "iu"
        outside = targets[(targets < 0) | (targets >= self.num_classes)] if integers else targets
        if len(outside):
            raise ValueError(f"{name}.targets holds {outside[0].item()!r} ({targets.dtype}); valid: int class indices "
                             f"in 0..{self.num_classes - 1} (num_classes {self.num_classes})")
        if not self.on_device:
            return
        data = base.data
        want = (len(base), *(self.native_size or data.shape[1:3]), self.in_chans)
        if data.dtype != np.uint8 or data.shape not in (want, want[:3] if self.in_chans == 1 else want):
            raise ValueError(f"{name}.data is {data.dtype} of shape {data.shape}: the device path needs uint8 images "
                             f"(N, H, W, C) = {want} (H x W the native_size, C in_chans"
                             f"{', or (N, H, W)' if self.in_chans == 1 else ''}); valid: return {wrap} from {loader} "
                             "(channels-first arrays transposed by "
                             ".transpose(0, 2, 3, 1)), or --data.init_args.device_data false")

    def _placement(self) -> tuple[torch.device, int, int]:
        """The accelerator, this process's rank and the world size (CPU, 0, 1 outside a Trainer)."""
        if self.trainer is None:
            return torch.device("cpu"), 0, 1
        return self.trainer.strategy.root_device, self.trainer.global_rank, self.trainer.world_size

    def _to_device(self, base: Dataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, C, H, W) images resized once to ``image_size`` (the regular path's resize, batched) and
        their targets, on the accelerator."""
        images = torch.from_numpy(np.ascontiguousarray(base.data[indices]))
        if images.ndim == 3:  # grayscale stored without a channel axis
            images = images[..., None]
        images = images.permute(0, 3, 1, 2)
        if tuple(images.shape[-2:]) != self.image_size:
            images = v2.functional.resize(images, list(self.image_size), antialias=True)
        targets = torch.as_tensor(np.asarray(base.targets)[indices], dtype=torch.long)
        device = self._placement()[0]
        return images.contiguous().to(device), targets.to(device)

    def _device_loader(self, name: str, train: bool) -> DeviceBatches:
        images, targets = self._sets[name]
        _, rank, world = self._placement()
        augment = train and self.augmentation == "crop_flip"
        return DeviceBatches(
            images, targets, self.batch_size if train else self.eval_batch_size, self.mean, self.std,
            sampler=SeededShuffle(len(images), self.seed) if train else None,
            pad=max(self.image_size) // 8 if augment else None,
            drop_last=train and len(images) // world > self.batch_size, rank=rank, world=world,
        )

    def _loader(self, name: str, train: bool = False) -> DataLoader | DeviceBatches:
        if self.on_device:
            return self._device_loader(name, train)
        dataset = self._sets[name]
        sampler = SeededShuffle(len(dataset), self.seed) if train else None
        if not train and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning's default DistributedSampler pads with repeated samples; evaluation must count each once.
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset, batch_size=self.batch_size if train else self.eval_batch_size, sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("train", train=True)

    def val_dataloader(self) -> list[DataLoader | DeviceBatches]:
        """Validation, the clean training subset, and (``track_test``) the test split: the paper's curves need
        test accuracy at every epoch, not only at the end. The order is ``ImageClassifier.EVAL_SPLITS``."""
        return [self._loader(name) for name in ("val", "train_eval", "test")[: 3 if self.track_test else 2]]

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("test")
