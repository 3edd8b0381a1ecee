"""The generic staged backbone: stem S0, then stages of registered block types, then a pooled linear head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .blocks import BLOCK_DESCRIPTIONS, BLOCKS, check_block_options, layer_norm
from .config import StagedNetConfig, as_hw
from .layout import Layout, parse_layout


class ConvStem(nn.Sequential):
    """S0 of the paper: two 3x3 convs, the first strided."""

    def __init__(self, in_chans: int, dim: int, stride: int, bias: bool = True):
        super().__init__(
            nn.Conv2d(in_chans, dim, 3, stride, padding=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, 1, padding=1, bias=bias),
        )


class PatchStem(nn.Conv2d):
    """ViT's stem: non-overlapping ``patch x patch`` patches, linearly embedded."""

    def __init__(self, in_chans: int, dim: int, patch: int, bias: bool = True):
        super().__init__(in_chans, dim, patch, patch, bias=bias)


def _check_lengths(cfg: StagedNetConfig, layout: Layout) -> None:
    segments, stages = len(layout.segments), len(layout.stages)
    for name, values, expected, unit in (
        ("depths", cfg.depths, segments, "segment letter"),
        ("dims", cfg.dims, segments, "segment letter"),
        ("strides", cfg.strides, stages, "stage"),
    ):
        if values is not None and len(values) != expected:
            raise ValueError(
                f"layout {cfg.layout!r} needs one {name} entry per {unit} ({expected}), got {len(values)}: {tuple(values)}"
            )
    for name, values in (("depths", cfg.depths), ("dims", cfg.dims)):
        if any(v < 1 for v in values):
            raise ValueError(f"{name} must be positive integers, got {tuple(values)}")


@dataclass(frozen=True)
class BlockSpec:
    """One block of the network: what ``StagedNet`` builds and what the budget matcher prices."""

    letter: str
    dim_in: int
    dim_out: int
    stride: int
    size: tuple[int, int]  # output feature map (height, width)
    stage: int


def stage_strides(cfg: StagedNetConfig, layout: Layout) -> tuple[int, ...]:
    return cfg.strides or ((1,) if layout.patch_stem else (2,) * len(layout.stages))


def plan_blocks(cfg: StagedNetConfig) -> tuple[Layout, tuple[int, int], list[BlockSpec]]:
    """Validate ``cfg`` and lay out every block: the single source of the network's shape."""
    layout = parse_layout(cfg.layout, BLOCK_DESCRIPTIONS)
    _check_lengths(cfg, layout)
    check_block_options(cfg)
    strides = stage_strides(cfg, layout)
    image_size = as_hw(cfg.image_size)
    total_stride = cfg.stem_stride * math.prod(strides)

    def downsample(size: tuple[int, int], stride: int, where: str) -> tuple[int, int]:
        height, width = size
        if height % stride or width % stride:
            raise ValueError(
                f"image_size {image_size[0]}x{image_size[1]} does not fit the network: stage {where} downsamples a "
                f"{height}x{width} feature map by {stride}; use sides divisible by the total stride {total_stride}"
            )
        return height // stride, width // stride

    size = downsample(image_size, cfg.stem_stride, "S0 (stem)")
    segments = iter(zip(layout.segments, cfg.depths, cfg.dims))
    specs, dim_in = [], cfg.stem_dim or cfg.dims[0]
    for stage_idx, (letters, stride) in enumerate(zip(layout.stages, strides), start=1):
        size = downsample(size, stride, f"S{stage_idx} ({''.join(letters)})")
        for seg_idx in range(len(letters)):
            letter, depth, dim = next(segments)
            problem = BLOCKS[letter].check_size(size, cfg)
            if problem:
                raise ValueError(f"stage S{stage_idx} ({''.join(letters)}) of layout {cfg.layout!r}: {problem}")
            for i in range(depth):
                block_stride = stride if i == 0 and seg_idx == 0 else 1
                specs.append(BlockSpec(letter, dim_in, dim, block_stride, size, stage_idx))
                dim_in = dim
    return layout, size, specs


def build_block(spec: BlockSpec, cfg: StagedNetConfig, drop_path: float = 0.0) -> nn.Module:
    return BLOCKS[spec.letter](spec.dim_in, spec.dim_out, stride=spec.stride, size=spec.size, drop_path=drop_path, cfg=cfg)


def build_stem(cfg: StagedNetConfig, patch_stem: bool) -> nn.Module:
    stem_cls = PatchStem if patch_stem else ConvStem
    return stem_cls(cfg.in_chans, cfg.stem_dim or cfg.dims[0], cfg.stem_stride, bias=cfg.style == "paper")


class ClassifierHead(nn.Module):
    """Global average pooling (no class token), LayerNorm, (timm's optional ``Linear + tanh``), linear classifier."""

    def __init__(self, dim: int, num_classes: int, cfg: StagedNetConfig | None = None):
        super().__init__()
        cfg = cfg or StagedNetConfig()
        self.norm = layer_norm(dim, cfg)
        self.pre_logits = nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) if cfg.pre_logits else nn.Identity()
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pre_logits(self.norm(features.mean((2, 3))))
        return pooled if pre_logits else self.fc(pooled)


class StagedNet(nn.Module):
    """Any layout of the grammar in ``layout.py`` (CoAtNet's C-C-T-T, ViT_REL, C-C-C-C, CoAtNet-7's C-C-CT-T, ...)."""

    def __init__(self, cfg: StagedNetConfig):
        super().__init__()
        self.layout, self.feature_size, specs = plan_blocks(cfg)
        self.cfg = cfg
        self.image_size = as_hw(cfg.image_size)
        self.stem = build_stem(cfg, self.layout.patch_stem)
        rates = [cfg.drop_path * i / max(len(specs) - 1, 1) for i in range(len(specs))]
        self.stages = nn.Sequential(*[
            nn.Sequential(*[build_block(spec, cfg, rate) for spec, rate in zip(specs, rates) if spec.stage == stage])
            for stage in range(1, len(self.layout.stages) + 1)
        ])
        self.num_features = specs[-1].dim_out
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"this model was built for {self.image_size[0]}x{self.image_size[1]} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}; build it with image_size={tuple(x.shape[-2:])} and load this state dict "
                "(relative-bias tables are interpolated)"
            )
        return self.stages(self.stem(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(features, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
