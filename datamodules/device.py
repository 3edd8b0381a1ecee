"""The small-data fast path: a whole data set held on the accelerator as uint8, batches sliced, augmented and
normalised there.

CIFAR's 50,000 training images are 150 MB as uint8, a rounding error in GPU memory. Keeping them there removes
the DataLoader workers, the per-image PIL work and the host-to-device copy from the training loop; a random
crop with reflect padding and a flip are a handful of batched tensor operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1], then per-channel standardised: what ``ToDtype(scale) +
    Normalize`` does to one image."""
    return (images.float() / 255 - mean) / std


def crop_flip_draws(batch: int, pad: int, device: torch.device, generator: torch.Generator | None = None):
    """The random numbers of one ``crop_flip`` batch: vertical and horizontal offsets and the flips."""
    dy = torch.randint(0, 2 * pad + 1, (batch, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (batch, 1), device=device, generator=generator)
    return dy, dx, torch.rand(batch, device=device, generator=generator) < 0.5


def crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random ``pad``-reflect-padded crop of the original size and a random horizontal flip, per image."""
    batch, _, height, width = images.shape
    device = images.device
    dy, dx, flip = crop_flip_draws(batch, pad, device, generator)
    if pad:
        padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
        rows = (dy + torch.arange(height, device=device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx + torch.arange(width, device=device))[:, None, None, :]  # (B, 1, 1, W)
        images = padded[torch.arange(batch, device=device)[:, None, None, None],
                        torch.arange(images.shape[1], device=device)[None, :, None, None], rows, cols]
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class DeviceBatches:
    """A DataLoader stand-in over tensors already on the device.

    Training order comes from ``sampler`` (the same ``SeededShuffle`` the regular path uses, whose ``set_epoch``
    Lightning calls), and augmentation draws from a generator seeded by (seed, epoch): a resumed run sees
    exactly the batches an uninterrupted one does. Under DDP each rank takes every ``world``-th sample: in
    training the remainder is dropped so that every rank runs the same number of steps; in evaluation nothing
    is padded or dropped, so each sample counts once.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, mean, std, *,
                 sampler=None, pad: int | None = None, drop_last: bool = False, rank: int = 0, world: int = 1):
        self.images, self.targets = images, targets
        self.batch_size, self.sampler, self.pad, self.drop_last = batch_size, sampler, pad, drop_last
        self.rank, self.world = rank, world
        self.batch_sampler = None  # Lightning inspects DataLoader-like objects for these two
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(mean, device=images.device).view(shape)
        self.std = torch.tensor(std, device=images.device).view(shape)

    def _indices(self) -> torch.Tensor:
        if self.sampler is None:
            order = torch.arange(len(self.images))
        else:
            order = self.sampler.order()
            order = order[: len(order) - len(order) % self.world]
        return order[self.rank::self.world].to(self.images.device)

    def __len__(self) -> int:
        n = len(self.images) // self.world if self.sampler is not None else len(range(self.rank, len(self.images), self.world))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        indices = self._indices()
        generator = None
        if self.pad is not None:
            generator = torch.Generator(self.images.device).manual_seed(self.sampler.epoch_seed() + 7919 * self.rank)
        skip = 0
        if self.sampler is not None:  # resumed mid-epoch: the batches already trained are passed over
            skip, self.sampler.skip = getattr(self.sampler, "skip", 0) // self.batch_size, 0
        for b in range(len(self)):
            idx = indices[b * self.batch_size:(b + 1) * self.batch_size]
            if b < skip:
                if generator is not None:  # draw its random numbers all the same, so later batches match
                    crop_flip_draws(len(idx), self.pad, self.images.device, generator)
                continue
            images = normalise(self.images[idx], self.mean, self.std)
            if self.pad is not None:
                images = crop_flip(images, self.pad, generator)
            yield images, self.targets[idx]
