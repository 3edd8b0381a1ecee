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
from .blocks import BLOCK_DESCRIPTIONS, BLOCKS
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
def _stem_cost(cfg: StagedNetConfig, patch_stem: bool) -> Cost:
    with torch.device("meta"):
        stem = build_stem(cfg, patch_stem)
    return _measure(stem, (1, cfg.in_chans, *cfg.image_size))


def _fixed_cost(cfg: StagedNetConfig, patch_stem: bool, dim_out: int) -> Cost:
    """Stem and head."""
    stem = cfg.replace(layout="C", depths=(1,), dims=(cfg.stem_dim or cfg.dims[0],), strides=None, block_options=(),
                       num_classes=0, drop_path=0.0)
    with torch.device("meta"):
        head = ClassifierHead(dim_out, cfg.num_classes, cfg)
    return _stem_cost(stem, patch_stem) + _measure(head, (1, dim_out, 1, 1))


def estimate_cost(cfg: StagedNetConfig) -> Cost:
    """Parameters and MACs of ``StagedNet(cfg)`` without building it (sum of cached per-block costs)."""
    layout, _, specs = plan_blocks(cfg)
    settings = _arch_free(cfg)
    total = _fixed_cost(cfg, layout.patch_stem, specs[-1].dim_out)
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


# One multiplier scales the stem and every stage; candidates step by 1/32 (widths then round to the blocks' multiple).
WIDTH_MULTIPLIERS = tuple(m / 32 for m in range(16, 65))
DEPTH_FACTOR = 1.5  # a stage's depth stays within this factor of the template's (rounded outward, +-1 at least)
ROUNDING = 0.1  # a width may sit this far from the template's times the multiplier after rounding
SLACK = 0.02  # candidates this close to both targets count as exact; the shape preference decides among them


def _round_width(width: float, multiple: int) -> int:
    return max(multiple, int(round(width / multiple)) * multiple)


def depth_ranges(template_depths: tuple[int, ...]) -> list[range]:
    """The depths each stage may take: within ``DEPTH_FACTOR`` of the template's, at least one block either way.
    (Keeping S1 and S4 at the template's depth, as the CoAtNet family does, leaves C-C-C-T 5-9% off budget.)"""
    return [depth_range(d) for d in template_depths]


def depth_range(template_depth: int) -> range:
    low = max(1, min(template_depth - 1, math.floor(template_depth / DEPTH_FACTOR)))
    high = max(template_depth + 1, math.ceil(template_depth * DEPTH_FACTOR))
    return range(low, high + 1)


def _segment_costs(cfg: StagedNetConfig) -> tuple[Cost, list[tuple[Cost, Cost]]]:
    """Fixed cost (stem, head) and, per segment, the cost of its first block and of each further block."""
    two = cfg.replace(depths=(2,) * len(cfg.depths))
    layout, _, specs = plan_blocks(two)
    settings = _arch_free(cfg)
    fixed = _fixed_cost(cfg, layout.patch_stem, specs[-1].dim_out)
    per_segment = [(_block_cost(specs[i], settings), _block_cost(specs[i + 1], settings)) for i in range(0, len(specs), 2)]
    return fixed, per_segment


def shaped_widths(template: StagedNetConfig, letters: tuple[str, ...], mult: float) -> tuple[int, tuple[int, ...]] | None:
    """(stem width, stage widths) at width multiplier ``mult``, or None where the constraints rule it out.

    Every width is the template's times ``mult``, rounded to one multiple that every block of the layout accepts
    (each block says which: ``Block.width_multiple``; the stem to 8) and off by at most ``ROUNDING``; widths never
    decrease from the stem; every block gets at least its ``Block.min_width`` (two heads for attention)."""
    blocks = [BLOCKS[letter] for letter in letters]
    exact = ((template.stem_dim or template.dims[0]) * mult, *(d * mult for d in template.dims))
    multiple = math.lcm(*(b.width_multiple(template) for b in blocks))  # one rounding for the whole network
    widths = (_round_width(exact[0], 8), *(_round_width(w, multiple) for w in exact[1:]))
    if any(abs(w / e - 1) > ROUNDING for w, e in zip(widths, exact)):
        return None
    if any(w < b.min_width(template) for w, b in zip(widths[1:], blocks)):
        return None
    if any(a > b for a, b in zip(widths, widths[1:])):
        return None
    return widths[0], widths[1:]


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
    letters = parse_layout(layout, BLOCK_DESCRIPTIONS).segments
    if len(letters) != len(template.dims):
        raise ValueError(f"layout {layout!r} has {len(letters)} segments; the budget's template has {len(template.dims)} "
                         "stages, so only layouts of one letter per stage are matched")
    seen = set()
    for mult in WIDTH_MULTIPLIERS:
        widths = shaped_widths(template, letters, mult)
        if widths is None or widths in seen:
            continue
        seen.add(widths)
        stem, dims = widths
        cfg = template.replace(layout=layout, dims=dims, stem_dim=stem)
        fixed, per_segment = _segment_costs(cfg)
        for depths in itertools.product(*depth_ranges(template.depths)):
            cost = fixed
            for depth, (first, rest) in zip(depths, per_segment):
                cost = cost + first + Cost(rest.params * (depth - 1), rest.macs * (depth - 1))
            penalty = abs(math.log(mult)) + 0.1 * sum(abs(d - b) for d, b in zip(depths, template.depths))
            yield cfg.replace(depths=depths), cost, penalty


@lru_cache(maxsize=None)
def match_budget(layout: str, budget: Budget, options: tuple[tuple[str, object], ...] = ()) -> tuple[StagedNetConfig, Cost]:
    """Depths and widths for ``layout`` closest to ``budget`` (``options``: overrides of the template, such as a
    block setting, as sorted pairs).

    Among candidates within ``SLACK`` of both targets the matcher prefers the template's widths and depths
    (multi-stage) or ViT-like proportions (``VIT_REL``), so matched variants stay recognisable.
    """
    template = budget.template.replace(**dict(options)) if options else budget.template
    best = min(
        _candidates(template, layout, budget),
        key=lambda c: (max(c[1].error(budget.params, budget.macs), SLACK), c[2]),
    )
    return best[0], best[1]
