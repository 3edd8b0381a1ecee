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
    return sum(macs_by_op(model, image_size, in_chans).values())


ATTENTION_OPS = ("scaled_dot_product", "bmm")  # token mixing: the part quadratic in the number of tokens


def attention_macs(by_op: dict[str, int]) -> int:
    """MACs of the attention products (QK^T and attention x V) in a ``macs_by_op`` count: the part that grows
    with the square of the tokens."""
    return sum(m for op, m in by_op.items() if any(a in op for a in ATTENTION_OPS))


def macs_by_op(model: nn.Module, image_size: tuple[int, int] | None = None, in_chans: int | None = None) -> dict[str, int]:
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
    return {str(op): flops // 2 for op, flops in counter.get_flop_counts()["Global"].items()}
