"""Parameters and multiply-accumulates, the paper's "FLOPs" (Table 3 counts MACs).

Every MAC count of the project (the model table, the budget matcher, ``ablate bench``, the classifier's ``macs``)
goes through ``macs_by_op``, which runs the forward pass on the meta device. There no kernel runs, so the count
is the same whatever kernels a torch build would pick for the real device: on CPU some builds dispatch attention
to a fused kernel that ``torch.utils.flop_counter`` has no formula for, and the attention products would read 0.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


ATTENTION_OPS = ("scaled_dot_product", "bmm")  # token mixing: the part quadratic in the number of tokens


def attention_macs(by_op: dict[str, int]) -> int:
    """MACs of the attention products (QK^T and attention x V) in a ``macs_by_op`` count: the part that grows
    with the square of the tokens."""
    return sum(m for op, m in by_op.items() if any(a in op for a in ATTENTION_OPS))


def on_meta(module: nn.Module) -> bool:
    tensors = [*module.parameters(), *module.buffers()]
    return bool(tensors) and all(t.device.type == "meta" for t in tensors)


def macs_by_op(module: nn.Module, image_size: tuple[int, int] | None = None, in_chans: int | None = None, *,
               input_shape: tuple[int, ...] | None = None) -> dict[str, int]:
    """MACs of one forward pass per operator (FLOPs / 2), counted on the meta device.

    A model built under ``torch.device("meta")`` is counted as it is (no memory, any size); a real one is
    counted through a meta copy. The input is one image of ``image_size`` (default: the model's) with
    ``in_chans`` channels (default: its config's), or any ``input_shape`` (a block's input).
    """
    if input_shape is None:
        height, width = image_size or module.image_size
        channels = in_chans or getattr(getattr(module, "cfg", None), "in_chans", 3)
        input_shape = (1, channels, height, width)
    meta = module if on_meta(module) else copy.deepcopy(module).to("meta")
    was_training = meta.training
    meta.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            meta(torch.zeros(input_shape, device="meta"))
    finally:
        meta.train(was_training)
    return {str(op): flops // 2 for op, flops in counter.get_flop_counts()["Global"].items()}


def count_macs(model: nn.Module, image_size: tuple[int, int] | None = None, in_chans: int | None = None) -> int:
    """MACs of one image's forward pass (see ``macs_by_op``)."""
    return sum(macs_by_op(model, image_size, in_chans).values())
