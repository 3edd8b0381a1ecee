"""Budget matching: pick depths and widths so that layouts compared in the study have the same size and compute.

The paper compares its five stacking orders "at comparable size and compute". ``match_budget`` searches the
depths (and a width multiplier) of a layout for the configuration closest to a target parameter count and MAC
count at a given resolution. Each block is priced once (on the meta device) and totals are sums, so a search over
thousands of candidates takes a second. The registry freezes the matcher's choices so model names stay stable.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from .config import StagedNetConfig
from .profile import count_params, macs_by_op
from .blocks import BLOCK_DESCRIPTIONS
from .layout import parse_layout
from .staged import BlockSpec, ClassifierHead, build_block, build_stem, plan_blocks


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.params + other.params, self.macs + other.macs)

    def error(self, params: float, macs: float) -> float:
        """Worst relative miss of the two targets."""
        return max(abs(self.params / params - 1), abs(self.macs / macs - 1))


def _measure(module: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    return Cost(count_params(module), sum(macs_by_op(module, input_shape=input_shape).values()))


def _arch_free(cfg: StagedNetConfig) -> StagedNetConfig:
    """The settings a block's cost depends on beyond its own widths and sizes (a hashable cache key)."""
    return cfg.replace(layout="C", depths=(1,), dims=(cfg.dims[0],), strides=None, stem_dim=None, drop_path=0.0,
                       num_classes=0, image_size=(1, 1))


@lru_cache(maxsize=None)
def _block_cost(spec: BlockSpec, settings: StagedNetConfig) -> Cost:
    with torch.device("meta"):
        block = build_block(spec, settings)
    height, width = spec.size
    return _measure(block, (1, spec.dim_in, height * spec.stride, width * spec.stride))


@lru_cache(maxsize=None)
def _stem_cost(in_chans: int, dim: int, stride: int, image_size: tuple[int, int], patch_stem: bool) -> Cost:
    cfg = StagedNetConfig(in_chans=in_chans, stem_dim=dim, stem_stride=stride)
    with torch.device("meta"):
        stem = build_stem(cfg, patch_stem)
    return _measure(stem, (1, in_chans, *image_size))


def _head_cost(dim: int, num_classes: int) -> Cost:
    with torch.device("meta"):
        head = ClassifierHead(dim, num_classes)
    return Cost(count_params(head), dim * num_classes)


def estimate_cost(cfg: StagedNetConfig) -> Cost:
    """Parameters and MACs of ``StagedNet(cfg)`` without building it (sum of cached per-block costs)."""
    layout, _, specs = plan_blocks(cfg)
    settings = _arch_free(cfg)
    total = _stem_cost(cfg.in_chans, cfg.stem_dim or cfg.dims[0], cfg.stem_stride, cfg.image_size, layout.patch_stem)
    total = total + _head_cost(specs[-1].dim_out, cfg.num_classes)
    for spec in specs:
        total = total + _block_cost(spec, settings)
    return total


@dataclass(frozen=True)
class Budget:
    """A size/compute target for the five-layout comparison, and the template the variants share."""

    name: str
    params: float
    macs: float
    template: StagedNetConfig  # stem, strides, image size, classes, head size, base widths and depths
    vit_patch: int  # the ViT_REL patch size: the stride at which the multi-stage nets enter S3
    tolerance: float = 0.05


WIDTH_MULTIPLIERS = (0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.375, 1.5)
SLACK = 0.02  # candidates this close to both targets count as exact; the shape preference decides among them


def _round_width(width: float, multiple: int) -> int:
    return max(multiple, int(round(width / multiple)) * multiple)


def _segment_costs(cfg: StagedNetConfig) -> tuple[Cost, list[tuple[Cost, Cost]]]:
    """Fixed cost (stem, head) and, per segment, the cost of its first block and of each further block."""
    two = cfg.replace(depths=(2,) * len(cfg.depths))
    layout, _, specs = plan_blocks(two)
    settings = _arch_free(cfg)
    fixed = _stem_cost(cfg.in_chans, cfg.stem_dim or cfg.dims[0], cfg.stem_stride, cfg.image_size, layout.patch_stem)
    fixed = fixed + _head_cost(specs[-1].dim_out, cfg.num_classes)
    per_segment = [(_block_cost(specs[i], settings), _block_cost(specs[i + 1], settings)) for i in range(0, len(specs), 2)]
    return fixed, per_segment


def _candidates(template: StagedNetConfig, layout: str, budget: "Budget"):
    """(config, cost, shape penalty) for every candidate the matcher considers."""
    if layout.strip().upper().replace("-", "_") == "VIT_REL":
        for width in range(2 * template.head_dim, 2048 + 1, template.head_dim):
            cfg = template.replace(layout="VIT_REL", depths=(1,), dims=(width,), stem_dim=None,
                                   stem_stride=budget.vit_patch, strides=None)
            fixed, [(first, rest)] = _segment_costs(cfg)
            for depth in range(1, 25):
                cost = fixed + first + Cost(rest.params * (depth - 1), rest.macs * (depth - 1))
                # ViT-like proportions (width ~ 64 x depth, as ViT-B's 768 / 12) among equally good fits
                yield cfg.replace(depths=(depth,)), cost, abs(math.log(width / (64 * depth)))
        return
    max_depths = tuple(max(4, 3 * d) for d in template.depths)
    for mult in WIDTH_MULTIPLIERS:
        # Attention widths stay multiples of the head size; convolution widths multiples of 16.
        letters = parse_layout(layout, BLOCK_DESCRIPTIONS).segments
        dims = tuple(_round_width(d * mult, template.head_dim if letter == "T" else 16)
                     for d, letter in zip(template.dims, letters))
        cfg = template.replace(layout=layout, dims=dims)
        fixed, per_segment = _segment_costs(cfg)
        for depths in itertools.product(*(range(1, m + 1) for m in max_depths)):
            cost = fixed
            for depth, (first, rest) in zip(depths, per_segment):
                cost = cost + first + Cost(rest.params * (depth - 1), rest.macs * (depth - 1))
            penalty = abs(math.log(mult)) + 0.1 * sum(abs(d - b) for d, b in zip(depths, template.depths))
            yield cfg.replace(depths=depths), cost, penalty


def match_budget(layout: str, budget: Budget) -> tuple[StagedNetConfig, Cost]:
    """Depths and widths for ``layout`` closest to ``budget``.

    Among candidates within ``SLACK`` of both targets the matcher prefers the template's widths and depths
    (multi-stage) or ViT-like proportions (``VIT_REL``), so matched variants stay recognisable.
    """
    best = min(
        _candidates(budget.template, layout, budget),
        key=lambda c: (max(c[1].error(budget.params, budget.macs), SLACK), c[2]),
    )
    return best[0], best[1]
