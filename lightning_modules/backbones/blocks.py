"""Stage block types. Each letter of a layout is one ``Block`` subclass here (or in a user's module) and one
``@register_block`` line; the block declares its own settings beside it.

A block maps a (B, C_in, H, W) tensor to (B, C_out, H/stride, W/stride); downsampling and widening happen in
the first block of a segment. Blocks are pre-norm residuals, ``x <- shortcut(x) + f(norm(x))``, as in the paper.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from .attention import (
    LinearAttention, RelativeAttention, grid_merge, grid_partition, window_merge, window_partition,
)
from .config import StagedNetConfig

BLOCKS: dict[str, type["Block"]] = {}
BLOCK_DESCRIPTIONS: dict[str, str] = {}
REGISTERING: list[str] = []  # the modules of every stage letter or model registered, in order (``imports``)


def registered(module: str) -> None:
    """Note that ``module`` registered a stage letter or a model: a module named in ``imports`` must."""
    REGISTERING.append(module)


def register_block(letter: str, description: str) -> Callable[[type["Block"]], type["Block"]]:
    def add(cls: type[Block]) -> type[Block]:
        if not (isinstance(cls, type) and issubclass(cls, Block)):
            raise TypeError(f"stage letter {letter!r}: {cls!r} must subclass lightning_modules.backbones.Block")
        old = BLOCKS.get(letter)
        if old is not None and _source(old) == _source(cls):
            pass  # the same file imported again, maybe under another module name (a test file named in a config)
        elif old is not None or len(letter) != 1 or not letter.isalpha() or not letter.isupper():
            raise ValueError(f"stage letter {letter!r} must be one new upper-case letter; taken: {sorted(BLOCKS)}")
        BLOCKS[letter] = cls
        BLOCK_DESCRIPTIONS[letter] = description
        registered(cls.__module__)
        return cls

    return add


def _source(cls: type) -> tuple[str, str | None]:
    return cls.__qualname__, getattr(sys.modules.get(cls.__module__), "__file__", None)


class Block(nn.Module):
    """A stage block: ``__init__(dim_in, dim_out, *, stride, size, drop_path, cfg)`` plus the questions the planner
    and the budget matcher ask before anything is built. ``Settings`` holds the block type's own options; a
    subclass declares its own dataclass and reads it with ``self.settings(cfg)``."""

    @dataclass(frozen=True)
    class Settings:
        pass

    @classmethod
    def settings(cls, cfg: StagedNetConfig) -> Any:
        names = {f.name for f in fields(cls.Settings)}
        return cls.Settings(**{k: v for k, v in cfg.block_options if k in names})

    @classmethod
    def width_multiple(cls, cfg: StagedNetConfig) -> int:
        """Widths the matcher may give this block are multiples of this (8: what accelerators like)."""
        return 8

    @classmethod
    def min_width(cls, cfg: StagedNetConfig) -> int:
        return cls.width_multiple(cfg)

    @classmethod
    def check_size(cls, size: tuple[int, int], cfg: StagedNetConfig) -> str | None:
        """Why this block cannot run on a (height, width) feature map, or None when it can."""
        return None


def import_block_modules(names: list[str] | None) -> None:
    """Import the modules that register a user's block types (``imports: [my_blocks]`` in a config or sweep)."""
    for name in names or []:
        before = len(REGISTERING)
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            raise ValueError(f"imports: module {name!r} cannot be imported ({err}); give a dotted module name "
                             "importable from the working directory") from None
        if len(REGISTERING) == before and not any(m == name or m.startswith(name + ".") for m in REGISTERING):
            raise ValueError(f"imports: module {name!r} registers no stage letter or model; valid: a module that "
                             "registers one with @register_block or register_model (letters known: "
                             f"{', '.join(sorted(BLOCKS))})")


def block_setting_names() -> dict[str, list[str]]:
    """Every declared block setting -> the letters that declare it."""
    names: dict[str, list[str]] = {}
    for letter, cls in BLOCKS.items():
        for f in fields(cls.Settings):
            names.setdefault(f.name, []).append(letter)
    return names


def check_block_options(cfg: StagedNetConfig) -> None:
    known = block_setting_names()
    unknown = [k for k, _ in cfg.block_options if k not in known]
    if unknown:
        config_fields = [f.name for f in fields(cfg) if f.name != "block_options"]
        settings = ", ".join(f"{k} ({'/'.join(v)})" for k, v in known.items())
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(config_fields)}; block settings: "
                         f"{settings}")


def pool(stride: int, cfg: StagedNetConfig) -> nn.Module:
    """Stride-s max-pool (the paper) or average pool (timm)."""
    if stride == 1:
        return nn.Identity()
    return nn.MaxPool2d(stride, stride) if cfg.style == "paper" else nn.AvgPool2d(stride, stride)


def layer_norm(dim: int, cfg: StagedNetConfig) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-5 if cfg.style == "paper" else 1e-6)


class Shortcut(nn.Module):
    """``Proj(Pool(x))``: stride-s pool, then a 1x1 conv when the width changes; identity otherwise."""

    def __init__(self, dim_in: int, dim_out: int, stride: int, cfg: StagedNetConfig):
        super().__init__()
        self.pool = pool(stride, cfg)
        self.proj = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, act: type[nn.Module] = nn.GELU):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = act()
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.expand(self.act(self.reduce(scale))).sigmoid()


def conv_bn_gelu(dim_in: int, dim_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim_in, dim_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(dim_out),
        nn.GELU(),
    )


@register_block("C", "MBConv with squeeze-excite")
class MBConv(Block):
    """Inverted bottleneck: BN -> 1x1 expand (4x the output width) -> 3x3 depthwise -> SE -> 1x1 project.

    ``downsample="conv"`` strides the expanding 1x1 conv (the paper's default), ``"dw"`` the depthwise conv
    (Table 9). The SE bottleneck is ``se_ratio`` times the block's input width (timm style: output width, SiLU).
    """

    @dataclass(frozen=True)
    class Settings:
        downsample: str = "conv"  # "conv": strided first 1x1 conv (paper); "dw": strided depthwise conv (Table 9)
        se_ratio: float = 0.25

        def __post_init__(self):
            if self.downsample not in ("conv", "dw"):
                raise ValueError(f"downsample={self.downsample!r} is not valid; choose 'conv' (strided 1x1) or 'dw'")

    def __init__(self, dim_in: int, dim_out: int, *, stride: int, size: tuple[int, int], drop_path: float,
                 cfg: StagedNetConfig):
        super().__init__()
        settings = self.settings(cfg)
        hidden = dim_out * cfg.expand_ratio
        expand_stride, dw_stride = (stride, 1) if settings.downsample == "conv" else (1, stride)
        se_base, se_act = (dim_in, nn.GELU) if cfg.style == "paper" else (dim_out, nn.SiLU)
        self.shortcut = Shortcut(dim_in, dim_out, stride, cfg)
        self.norm = nn.BatchNorm2d(dim_in)
        self.expand = conv_bn_gelu(dim_in, hidden, 1, expand_stride)
        self.depthwise = conv_bn_gelu(hidden, hidden, 3, dw_stride, groups=hidden)
        self.se = SqueezeExcite(hidden, max(1, int(se_base * settings.se_ratio)), se_act)
        self.project = nn.Conv2d(hidden, dim_out, 1)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.project(self.se(self.depthwise(self.expand(self.norm(x)))))
        return self.shortcut(x) + self.drop_path(residual)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


@register_block("T", "Transformer with 2-D relative attention")
class TransformerBlock(Block):
    """``x <- Proj(Pool(x)) + Attention(Pool(LN(x)))``, then ``x <- x + FFN(LN(x))``; heads of ``head_dim``.

    Subclasses change only how tokens are mixed (``mix``): W within windows, G over a dilated grid, L linearly.
    """

    @dataclass(frozen=True)
    class Settings:
        rel_pos: str = "pre"  # "pre" | "post" | "none": relative bias before or after the softmax, or none

    def __init__(self, dim_in: int, dim_out: int, *, stride: int, size: tuple[int, int], drop_path: float,
                 cfg: StagedNetConfig):
        super().__init__()
        self.stride = stride
        self.shortcut = Shortcut(dim_in, dim_out, stride, cfg)
        self.norm1 = layer_norm(dim_in, cfg)
        self.pool = pool(stride, cfg)
        self.attn = self.attention(dim_in, dim_out, size, cfg)
        self.norm2 = layer_norm(dim_out, cfg)
        self.mlp = Mlp(dim_out, dim_out * cfg.expand_ratio)
        self.drop_path = StochasticDepth(drop_path, "row")

    def attention(self, dim_in: int, dim_out: int, size: tuple[int, int], cfg: StagedNetConfig) -> nn.Module:
        return RelativeAttention(dim_in, dim_out, cfg.head_dim, size, self.settings(cfg).rel_pos)

    def mix(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C_in) tokens -> (B, H, W, C_out): global attention over all H x W tokens."""
        batch, height, width, channels = y.shape
        return self.attn(y.reshape(batch, height * width, channels)).view(batch, height, width, -1)

    @classmethod
    def width_multiple(cls, cfg: StagedNetConfig) -> int:
        return cfg.head_dim

    @classmethod
    def min_width(cls, cfg: StagedNetConfig) -> int:
        return 2 * cfg.head_dim  # at least two heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x).permute(0, 2, 3, 1)  # (B, H, W, C): LayerNorm and attention over channels
        y = self.norm1(x.permute(0, 2, 3, 1))
        if self.stride > 1:
            y = self.pool(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = shortcut + self.drop_path(self.mix(y))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


def _divides(name: str, value: int, size: tuple[int, int]) -> str | None:
    if size[0] % value or size[1] % value:
        return (f"{name} {value} does not divide the {size[0]}x{size[1]} feature map; set {name}= to a divisor of "
                f"both sides")
    return None


@register_block("W", "window attention: relative attention within non-overlapping windows")
class WindowBlock(TransformerBlock):
    """Local attention in ``window x window`` tiles with a relative bias inside the tile (CoAtNet Section 2.3
    option B; MaxViT's block attention). Cost linear in the tokens for a fixed window."""

    @dataclass(frozen=True)
    class Settings:
        window: int = 7  # MaxViT's P at 224
        rel_pos: str = "pre"

    def attention(self, dim_in, dim_out, size, cfg):
        self.window = self.settings(cfg).window
        return RelativeAttention(dim_in, dim_out, cfg.head_dim, (self.window, self.window), self.settings(cfg).rel_pos)

    def mix(self, y: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = y.shape
        return window_merge(self.attn(window_partition(y, self.window)), self.window, height, width)

    @classmethod
    def check_size(cls, size, cfg):
        return _divides("window", cls.settings(cfg).window, size)


@register_block("G", "grid attention: MaxViT's dilated global mixing over a grid")
class GridBlock(TransformerBlock):
    """MaxViT's grid attention (Tu et al., ECCV 2022): a ``grid x grid`` lattice of tokens, spread over the whole
    map, attends within itself with a relative bias over lattice offsets: sparse global mixing."""

    @dataclass(frozen=True)
    class Settings:
        grid: int = 7  # MaxViT's G at 224
        rel_pos: str = "pre"

    def attention(self, dim_in, dim_out, size, cfg):
        self.grid = self.settings(cfg).grid
        return RelativeAttention(dim_in, dim_out, cfg.head_dim, (self.grid, self.grid), self.settings(cfg).rel_pos)

    def mix(self, y: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = y.shape
        return grid_merge(self.attn(grid_partition(y, self.grid)), self.grid, height, width)

    @classmethod
    def check_size(cls, size, cfg):
        return _divides("grid", cls.settings(cfg).grid, size)


@register_block("L", "linear attention (Katharopoulos et al. 2020, elu+1 feature map)")
class LinearBlock(TransformerBlock):
    """Global attention at linear cost (CoAtNet Section 2.3 option C), ``LinearAttention``; no relative bias."""

    @dataclass(frozen=True)
    class Settings:
        pass

    def attention(self, dim_in, dim_out, size, cfg):
        return LinearAttention(dim_in, dim_out, cfg.head_dim)
