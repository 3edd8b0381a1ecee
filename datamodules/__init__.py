"""LightningDataModules for the study: CIFAR-10/100, ImageNet-style folders, embedded digits, synthetic data."""
