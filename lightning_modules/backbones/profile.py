"""Parameters and multiply-accumulates, the paper's "FLOPs" (Table 3 counts MACs)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: tuple[int, int] | None = None, in_chans: int | None = None) -> int:
    """MACs of one image's forward pass, counted by ``torch.utils.flop_counter`` (FLOPs / 2).

    Works on models built on the meta device, so large models are counted without allocating them.
    """
    height, width = image_size or model.image_size
    channels = in_chans or getattr(model.cfg, "in_chans", 3)
    param = next(model.parameters())
    x = torch.zeros(1, channels, height, width, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
