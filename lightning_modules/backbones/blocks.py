"""Stage block types. Each letter of a layout is one class here and one ``@register_block`` line.

A block maps a (B, C_in, H, W) tensor to (B, C_out, H/stride, W/stride); downsampling and widening happen in
the first block of a segment. Blocks are pre-norm residuals, ``x <- shortcut(x) + f(norm(x))``, as in the paper.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from .attention import RelativeAttention
from .config import StagedNetConfig

BLOCKS: dict[str, type[nn.Module]] = {}
BLOCK_DESCRIPTIONS: dict[str, str] = {}


def register_block(letter: str, description: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if letter in BLOCKS or len(letter) != 1 or not letter.isalpha() or not letter.isupper():
            raise ValueError(f"stage letter {letter!r} must be one new upper-case letter; taken: {sorted(BLOCKS)}")
        BLOCKS[letter] = cls
        BLOCK_DESCRIPTIONS[letter] = description
        return cls

    return add


class Shortcut(nn.Module):
    """``Proj(Pool(x))``: stride-s max-pool, then a 1x1 conv when the width changes; identity otherwise."""

    def __init__(self, dim_in: int, dim_out: int, stride: int):
        super().__init__()
        self.pool = nn.MaxPool2d(stride, stride) if stride > 1 else nn.Identity()
        self.proj = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.expand(F.gelu(self.reduce(scale))).sigmoid()


def conv_bn_gelu(dim_in: int, dim_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim_in, dim_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(dim_out),
        nn.GELU(),
    )


@register_block("C", "MBConv with squeeze-excite")
class MBConv(nn.Module):
    """Inverted bottleneck: BN -> 1x1 expand (4x the output width) -> 3x3 depthwise -> SE -> 1x1 project.

    ``downsample="conv"`` strides the expanding 1x1 conv (the paper's default), ``"dw"`` the depthwise conv
    (Table 9). The SE bottleneck is ``se_ratio`` times the block's input width.
    """

    def __init__(self, dim_in: int, dim_out: int, *, stride: int, size: tuple[int, int], drop_path: float,
                 cfg: StagedNetConfig):
        super().__init__()
        if cfg.downsample not in ("conv", "dw"):
            raise ValueError(f"downsample={cfg.downsample!r} is not valid; choose 'conv' (strided 1x1) or 'dw'")
        hidden = dim_out * cfg.expand_ratio
        expand_stride, dw_stride = (stride, 1) if cfg.downsample == "conv" else (1, stride)
        self.shortcut = Shortcut(dim_in, dim_out, stride)
        self.norm = nn.BatchNorm2d(dim_in)
        self.expand = conv_bn_gelu(dim_in, hidden, 1, expand_stride)
        self.depthwise = conv_bn_gelu(hidden, hidden, 3, dw_stride, groups=hidden)
        self.se = SqueezeExcite(hidden, max(1, int(dim_in * cfg.se_ratio)))
        self.project = nn.Conv2d(hidden, dim_out, 1)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.project(self.se(self.depthwise(self.expand(self.norm(x)))))
        return self.shortcut(x) + self.drop_path(residual)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


@register_block("T", "Transformer with 2-D relative attention")
class TransformerBlock(nn.Module):
    """``x <- Proj(Pool(x)) + Attention(Pool(LN(x)))``, then ``x <- x + FFN(LN(x))``; heads of ``head_dim``."""

    def __init__(self, dim_in: int, dim_out: int, *, stride: int, size: tuple[int, int], drop_path: float,
                 cfg: StagedNetConfig):
        super().__init__()
        self.stride = stride
        self.shortcut = Shortcut(dim_in, dim_out, stride)
        self.norm1 = nn.LayerNorm(dim_in)
        self.attn = RelativeAttention(dim_in, dim_out, cfg.head_dim, size, cfg.rel_pos)
        self.norm2 = nn.LayerNorm(dim_out)
        self.mlp = Mlp(dim_out, dim_out * cfg.expand_ratio)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        batch, channels, height, width = shortcut.shape
        y = self.norm1(x.permute(0, 2, 3, 1))  # (B, H, W, C): LayerNorm over channels
        if self.stride > 1:
            y = F.max_pool2d(y.permute(0, 3, 1, 2), self.stride).permute(0, 2, 3, 1)
        y = self.attn(y.reshape(batch, height * width, -1))
        x = shortcut.permute(0, 2, 3, 1).reshape(batch, height * width, channels) + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.view(batch, height, width, channels).permute(0, 3, 1, 2)
