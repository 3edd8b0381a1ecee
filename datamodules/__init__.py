"""LightningDataModules for the study: CIFAR-10/100, ImageNet-style folders, embedded digits, synthetic data."""

from .base import AUGMENTATIONS, ImageDataModule, balanced_subset
from .datasets import (
    ArrayDataset, CIFAR10DataModule, CIFAR100DataModule, DigitsDataModule, ImageFolderDataModule, SyntheticDataModule,
)

__all__ = [
    "AUGMENTATIONS", "ArrayDataset", "CIFAR100DataModule", "CIFAR10DataModule", "DigitsDataModule", "ImageDataModule",
    "ImageFolderDataModule", "SyntheticDataModule", "balanced_subset",
]
