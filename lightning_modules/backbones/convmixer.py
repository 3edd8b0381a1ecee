"""ConvMixer ("Patches Are All You Need?", Trockman & Kolter, ICLR 2022)."""

from __future__ import annotations

import torch
from torch import nn

from .config import ConvMixerConfig, as_hw

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class Residual(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class ConvMixer(nn.Module):
    """Patch embedding -> act -> BN, then ``depth`` x [Residual(depthwise k x k -> act -> BN), 1x1 -> act -> BN]."""

    def __init__(self, cfg: ConvMixerConfig):
        super().__init__()
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"activation={cfg.activation!r} is not valid; choose one of {sorted(ACTIVATIONS)}")
        self.cfg = cfg
        self.image_size = as_hw(cfg.image_size)
        act, dim = ACTIVATIONS[cfg.activation], cfg.dim
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, dim, cfg.patch_size, cfg.patch_size), act(), nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*[
            nn.Sequential(
                Residual(nn.Conv2d(dim, dim, cfg.kernel_size, groups=dim, padding="same"), act(), nn.BatchNorm2d(dim)),
                nn.Conv2d(dim, dim, 1), act(), nn.BatchNorm2d(dim),
            )
            for _ in range(cfg.depth)
        ])
        self.num_features = dim
        self.head = nn.Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features.mean((2, 3))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
