"""DataModules through their real loading code, on small data written in the real on-disk formats."""

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import (
    CIFAR10DataModule, CIFAR100DataModule, DigitsDataModule, ImageFolderDataModule, SyntheticDataModule,
    balanced_subset,
)


def write_cifar(root: Path, num_classes: int = 10, per_batch: int = 40) -> None:
    """CIFAR's python pickles: five training batches and a test batch of 3072-byte rows (str keys, as the
    original Python 2 pickles read with ``encoding="latin1"``)."""
    rng = np.random.default_rng(0)
    if num_classes == 10:
        folder, label_key = root / "cifar-10-batches-py", "labels"
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    else:
        folder, label_key = root / "cifar-100-python", "fine_labels"
        names = ["train", "test"]
    folder.mkdir(parents=True)
    for name in names:
        n = per_batch * (5 if num_classes == 100 and name == "train" else 1)
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: [i % num_classes for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    meta = "batches.meta" if num_classes == 10 else "meta"
    key = "label_names" if num_classes == 10 else "fine_label_names"
    with open(folder / meta, "wb") as f:
        pickle.dump({key: [f"c{i}" for i in range(num_classes)]}, f)


def write_image_folder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 6, size=(20, 24)) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_balanced_subset_is_proportional_and_seeded():
    targets = [0] * 60 + [1] * 30 + [2] * 10
    subset = balanced_subset(targets, 50, seed=3)
    assert Counter(np.asarray(targets)[subset]) == {0: 30, 1: 15, 2: 5}
    assert np.array_equal(subset, balanced_subset(targets, 50, seed=3))
    assert not np.array_equal(subset, balanced_subset(targets, 50, seed=4))
    assert len(set(subset)) == 50


def test_fraction_comes_before_the_validation_split_and_test_stays_whole():
    data = SyntheticDataModule(train_size=400, test_size=80, train_fraction=0.5, val_fraction=0.2, train_eval_samples=100)
    data.setup()
    assert data.split_sizes == {"train": 160, "val": 40, "train_eval": 100, "test": 80}
    parts = data.split_indices(data.load_train().targets)
    assert not set(parts["train"]) & set(parts["val"])
    assert set(parts["train_eval"]) <= set(parts["train"])
    # the same seed gives the same subset; data sizes nest under one seed is not promised, determinism is
    again = SyntheticDataModule(train_size=400, train_fraction=0.5, val_fraction=0.2).split_indices(data.load_train().targets)
    assert np.array_equal(parts["train"], again["train"])


def test_train_samples_is_a_sample_count():
    data = SyntheticDataModule(train_size=300, train_samples=100, val_fraction=0.1)
    data.setup()
    assert data.split_sizes["train"] + data.split_sizes["val"] == 100


@pytest.mark.parametrize("cls,num_classes", [(CIFAR10DataModule, 10), (CIFAR100DataModule, 100)])
def test_cifar_from_python_pickles(tmp_path, cls, num_classes):
    write_cifar(tmp_path, num_classes)
    data = cls(data_dir=str(tmp_path), batch_size=16, val_fraction=0.1)
    data.setup()
    assert data.num_classes == num_classes and data.image_size == (32, 32)
    assert data.split_sizes["test"] == 40 and data.split_sizes["train"] + data.split_sizes["val"] == 200
    images, targets = next(iter(data.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32 and targets.max() < num_classes
    loaders = data.val_dataloader()
    assert len(loaders) == 3 and sum(len(t) for _, t in loaders[2]) == 40


def test_missing_cifar_names_the_path_and_the_fix(tmp_path):
    data = CIFAR10DataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"CIFAR data not found at .*nowhere/cifar-10-batches-py; pass --data.init_args.download true"):
        data.setup()


def test_image_folder_tree(tmp_path):
    write_image_folder(tmp_path)
    data = ImageFolderDataModule(data_dir=str(tmp_path), image_size=16, batch_size=4, val_fraction=0.0)
    data.setup()
    assert data.num_classes == 3 and data.split_sizes["train"] == 18 and data.split_sizes["test"] == 6
    images, _ = next(iter(data.test_dataloader()))
    assert images.shape == (4, 3, 16, 16)


def test_missing_image_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image folder .*/train does not exist; expected"):
        ImageFolderDataModule(data_dir=str(tmp_path))


def test_digits_need_no_download_and_keep_one_test_split():
    a, b = DigitsDataModule(seed=0, train_fraction=0.5), DigitsDataModule(seed=1)
    a.setup(), b.setup()
    assert a.num_classes == 10 and a.in_chans == 1 and a.image_size == (32, 32)
    assert a.split_sizes["test"] == b.split_sizes["test"] == 359
    ta, tb = a.load_test(), b.load_test()
    assert np.array_equal(ta.data, tb.data)  # the test split does not move with the seed
    images, _ = next(iter(a.train_dataloader()))
    assert images.shape == (128, 1, 32, 32)


def test_augmentation_presets_change_training_images_only():
    plain = SyntheticDataModule(augmentation="none", train_size=64, device_data=False)
    augmented = SyntheticDataModule(augmentation="randaugment", train_size=64)
    plain.setup(), augmented.setup()
    torch.manual_seed(0)
    x_plain = plain._sets["train"][0][0]
    assert not torch.equal(x_plain, augmented._sets["train"][0][0])
    assert torch.equal(plain._sets["test"][0][0], augmented._sets["test"][0][0])


def test_tiny_imagenet_layout_and_aligned_labels(tmp_path):
    """train/<wnid>/images/*.JPEG and val/images + val_annotations.txt, as Tiny-ImageNet ships."""
    rng = np.random.default_rng(0)
    wnids = ["n01", "n02", "n03"]
    for w in wnids:
        (tmp_path / "train" / w / "images").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "train" / w / "images" / f"{w}_{i}.JPEG")
    (tmp_path / "val" / "images").mkdir(parents=True)
    rows = []
    for i, w in enumerate(["n03", "n01", "n03"]):  # n02 absent from val: labels must still follow train/
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "val" / "images" / f"val_{i}.JPEG")
        rows.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    data = ImageFolderDataModule(data_dir=str(tmp_path), image_size=32, batch_size=3, val_fraction=0.0)
    data.setup()
    assert data.num_classes == 3 and data.split_sizes["train"] == 12
    assert data.load_test().targets == [2, 0, 2]
    images, targets = next(iter(data.test_dataloader()))
    assert images.shape == (3, 3, 32, 32) and targets.tolist() == [2, 0, 2]


def test_class_folder_missing_from_val_keeps_train_labels(tmp_path):
    write_image_folder(tmp_path, classes=("ant", "bee", "cow"))
    import shutil

    shutil.rmtree(tmp_path / "val" / "ant")
    data = ImageFolderDataModule(data_dir=str(tmp_path), image_size=16)
    data.load_train()
    assert sorted(set(data.load_test().targets)) == [1, 2]  # bee, cow keep their train/ labels


def test_normalisation_is_configurable():
    default = SyntheticDataModule(augmentation="none", train_size=8, device_data=False)
    raw = SyntheticDataModule(augmentation="none", train_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                              device_data=False)
    default.setup(), raw.setup()
    x_raw = raw._sets["test"][0][0]
    assert 0 <= x_raw.min() and x_raw.max() <= 1
    torch.testing.assert_close(default._sets["test"][0][0], (x_raw - 0.5) / 0.5)
    with pytest.raises(ValueError, match="one value per channel"):
        SyntheticDataModule(mean=(0.5,), std=(0.2, 0.2, 0.2))


# --- the device path ------------------------------------------------------------------------------------------
def batches(loader):
    images, targets = zip(*list(loader))
    return torch.cat(images), torch.cat(targets)


@pytest.mark.parametrize("make", [
    lambda **kw: DigitsDataModule(train_fraction=0.3, batch_size=32, **kw),  # 8x8 resized to 32x32 on the way
    lambda **kw: SyntheticDataModule(train_size=96, test_size=40, batch_size=16, **kw),
], ids=["digits", "synthetic"])
def test_device_path_gives_the_regular_paths_tensors(make):
    """Without augmentation the two paths must agree exactly: same order, same resize, same normalisation."""
    fast, regular = make(augmentation="none"), make(augmentation="none", device_data=False)
    fast.setup(), regular.setup()
    assert fast.on_device and not regular.on_device and fast.split_sizes == regular.split_sizes
    for a, b in zip([fast.train_dataloader(), *fast.val_dataloader()], [regular.train_dataloader(), *regular.val_dataloader()]):
        (xa, ya), (xb, yb) = batches(a), batches(b)
        assert len(a) == len(b) and torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, atol=1e-6, rtol=0)


def test_device_crop_flip_is_a_reflect_padded_crop_and_flip_of_each_image():
    from datamodules.device import crop_flip

    images = torch.randn(32, 3, 8, 8)
    out = crop_flip(images, pad=2, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    seen = set()
    for x, y in zip(padded, out):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                   if torch.equal(y, (lambda c: c.flip(-1) if f else c)(x[:, dy:dy + 8, dx:dx + 8]))]
        assert matches, "an output image is not a crop of its padded input"
        seen.add(matches[0])
    assert len({m[:2] for m in seen}) > 5 and {m[2] for m in seen} == {0, 1}  # offsets and flips vary


def test_device_batches_are_a_function_of_seed_and_epoch():
    """What exact resume needs: an epoch's augmented batches replay identically, and the next epoch differs."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    data = SyntheticDataModule(train_size=64, batch_size=16, val_fraction=0.0, seed=3)
    data.setup()
    loader = data.train_dataloader()
    _set_sampler_epoch(loader, 1)  # what Lightning calls before each epoch
    first, again = batches(loader), batches(loader)
    _set_sampler_epoch(loader, 2)
    other = batches(loader)
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])
    assert sorted(first[1].tolist()) == sorted(other[1].tolist())  # every sample once per epoch


def test_device_batches_shard_across_ranks_without_repeats():
    from datamodules.device import DeviceBatches
    from datamodules.base import SeededShuffle

    images, targets = torch.zeros(37, 1, 2, 2, dtype=torch.uint8), torch.arange(37)
    evals = [DeviceBatches(images, targets, 5, (0.5,), (0.5,), rank=r, world=2) for r in (0, 1)]
    assert sorted(torch.cat([batches(l)[1] for l in evals]).tolist()) == list(range(37))  # each sample once
    trains = [DeviceBatches(images, targets, 5, (0.5,), (0.5,), sampler=SeededShuffle(37, 0), drop_last=True,
                            rank=r, world=2) for r in (0, 1)]
    assert len(trains[0]) == len(trains[1]) == 3 and [len(batches(l)[1]) for l in trains] == [15, 15]
    assert not set(batches(trains[0])[1].tolist()) & set(batches(trains[1])[1].tolist())


def test_device_path_applies_where_data_fit_in_memory(tmp_path):
    randaugment = SyntheticDataModule(augmentation="randaugment", train_size=8)
    randaugment.setup()
    assert not randaugment.on_device  # RandAugment runs in DataLoader workers
    write_image_folder(tmp_path)
    folder = ImageFolderDataModule(data_dir=str(tmp_path), image_size=16, val_fraction=0.0)
    folder.setup()
    assert not folder.on_device  # files decoded per image


def test_device_batches_resumed_mid_epoch_continue_where_the_epoch_stopped():
    """A mid-epoch resume sets ``sampler.skip``: the remaining batches, augmentation included, are those an
    uninterrupted epoch would have produced."""
    data = SyntheticDataModule(train_size=80, batch_size=16, val_fraction=0.0, augmentation="crop_flip")
    data.setup()
    loader = data.train_dataloader()
    loader.sampler.set_epoch(3)
    full = list(loader)
    loader.sampler.skip = 2 * 16
    resumed = list(loader)
    assert len(resumed) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(resumed, full[2:]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(list(loader)) == len(full)  # the skip applies to one pass only


# --- the data set contract (ImageDataModule.load_train) ---------------------------------------------------------
class _Arrays(torch.utils.data.Dataset):
    def __init__(self, data, targets):
        self.data, self.targets = data, targets

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i], self.targets[i]


def _module(data, targets, **kwargs):
    from datamodules import ImageDataModule

    class Custom(ImageDataModule):
        num_classes, native_size = 3, (4, 4)

        def load_train(self):
            return _Arrays(data, targets)

        load_test = load_train

    return Custom(val_fraction=0.0, train_eval_samples=2, **kwargs)


GOOD = np.zeros((6, 4, 4, 3), dtype=np.uint8)


@pytest.mark.parametrize("data,targets,line", [
    (GOOD, [0, 1, 2, 0, 1, 3], "Custom.load_train(): _Arrays.targets holds 3 (int64); valid: int class indices in 0..2"),
    (GOOD, [0, 1, -1, 0, 1, 2], "_Arrays.targets holds -1 (int64)"),
    (GOOD, [0.0, 1.0, 2.0, 0.0, 1.0, 2.0], "_Arrays.targets holds 0.0 (float64); valid: int class indices"),
    (GOOD, [0, 1, 2], "_Arrays.targets has shape (3,) for 6 images; valid: one int class index per image"),
    (GOOD.astype(np.float32), [0, 1, 2] * 2, "_Arrays.data is float32 of shape (6, 4, 4, 3): the device path needs "
                                             "uint8 images (N, H, W, C) = (6, 4, 4, 3)"),
    (np.zeros((6, 3, 4, 4), np.uint8), [0, 1, 2] * 2, "_Arrays.data is uint8 of shape (6, 3, 4, 4)"),
    (np.zeros((6, 4, 4), np.uint8), [0, 1, 2] * 2, "_Arrays.data is uint8 of shape (6, 4, 4)"),  # 1 channel, 3 wanted
], ids=["target too large", "negative target", "float targets", "targets short", "float images", "channels first",
        "one channel"])
def test_a_data_set_breaking_the_contract_is_named_at_set_up(data, targets, line):
    with pytest.raises(ValueError) as err:
        _module(data, targets).setup()
    assert line in str(err.value) and "\n" not in str(err.value)
