"""One registry of named models: the CoAtNet family, the budget-matched stacking-order variants, ConvMixers.

Every entry is plain configuration data; ``create_model`` builds an entry by name, or any layout string, with
keyword overrides of the config fields.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from .blocks import BLOCK_DESCRIPTIONS, registered
from .budget import Budget
from .config import ConvMixerConfig, StagedNetConfig
from .convmixer import ConvMixer
from .layout import VIT_REL, parse_layout
from .staged import StagedNet


@dataclass(frozen=True)
class ModelEntry:
    config: StagedNetConfig | ConvMixerConfig
    description: str
    paper_params: float | None = None  # reference figures for the README table and the tests
    paper_macs: float | None = None

    def build(self, **overrides: Any) -> nn.Module:
        cfg = _apply_overrides(self.config, overrides)
        return StagedNet(cfg) if isinstance(cfg, StagedNetConfig) else ConvMixer(cfg)


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, entry: ModelEntry) -> None:
    if name in MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    MODELS[name] = entry
    registered(sys._getframe(1).f_globals.get("__name__", ""))  # the caller's module: `imports` may name it


# --- CoAtNet (Table 3, Table 11, Table 12) ------------------------------------------------------------------
def _coatnet(stem: int, depths: tuple[int, ...], dims: tuple[int, ...], head_dim: int = 32,
             layout: str = "C-C-T-T") -> StagedNetConfig:
    return StagedNetConfig(layout=layout, stem_dim=stem, depths=depths, dims=dims, head_dim=head_dim)


for _name, _cfg, _params, _macs in (
    ("coatnet_0", _coatnet(64, (2, 3, 5, 2), (96, 192, 384, 768)), 25e6, 4.2e9),
    ("coatnet_1", _coatnet(64, (2, 6, 14, 2), (96, 192, 384, 768)), 42e6, 8.4e9),
    ("coatnet_2", _coatnet(128, (2, 6, 14, 2), (128, 256, 512, 1024)), 75e6, 15.7e9),
    ("coatnet_3", _coatnet(192, (2, 6, 14, 2), (192, 384, 768, 1536)), 168e6, 34.7e9),
    ("coatnet_4", _coatnet(192, (2, 12, 28, 2), (192, 384, 768, 1536)), 275e6, None),
    ("coatnet_5", _coatnet(192, (2, 12, 28, 2), (256, 512, 1280, 2048), head_dim=64), 688e6, None),
    # CoAtNet-6/7: S3 holds MBConv blocks then Transformer blocks at double width, one stage in the grammar.
    ("coatnet_6", _coatnet(192, (2, 4, 8, 42, 2), (192, 384, 768, 1536, 2048), 128, "C-C-CT-T"), 1.47e9, None),
    ("coatnet_7", _coatnet(192, (2, 4, 8, 42, 2), (256, 512, 1024, 2048, 3072), 128, "C-C-CT-T"), 2.44e9, None),
):
    register_model(_name, ModelEntry(_cfg, f"CoAtNet-{_name[-1]} (Dai et al. 2021)", _params, _macs))


# --- Stacking-order variants at matched budgets (Section 2.2) --------------------------------------------------
# A stride-16 ViT spends ~200 MACs per parameter at 224 (each weight sees all 196 tokens), against CoAtNet-0's
# 170, so no ViT_REL of more than 3 blocks has CoAtNet-0's parameters and MACs at once. The paper budget keeps
# CoAtNet-0's 25M parameters at 5.0 GMACs, the cost of a 6 x 576 ViT_REL; the others sit at the same ratio.
BUDGETS: dict[str, Budget] = {
    "paper": Budget("paper", 25.0e6, 5.0e9, StagedNetConfig(), vit_patch=16),
    "cifar": Budget("cifar", 10.7e6, 0.70e9, StagedNetConfig(
        stem_dim=64, stem_stride=1, strides=(1, 2, 2, 2), dims=(64, 128, 256, 512), depths=(2, 3, 5, 2),
        image_size=(32, 32), num_classes=100).replace(window=4, grid=4), vit_patch=4),
    "tiny": Budget("tiny", 1.27e6, 20.5e6, StagedNetConfig(
        stem_dim=32, stem_stride=2, strides=(1, 2, 2, 2), dims=(32, 64, 128, 256), depths=(1, 2, 2, 1),
        image_size=(32, 32), num_classes=10).replace(window=2, grid=2), vit_patch=8),
}
STUDY_LAYOUTS = ("VIT_REL", "C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T")
ATTENTION_LAYOUTS = ("C-C-W-W", "C-C-G-G", "C-C-L-L")  # the paper's C-C-T-T with the other attention letters

# The constrained matcher's choices (``ablate match`` prints them), frozen so that names stay stable:
# (stem width, depths, widths). See ``budget.py`` for the constraints.
MATCHED: dict[tuple[str, str], tuple[int | None, tuple[int, ...], tuple[int, ...]]] = {
    ("paper", "VIT_REL"): (None, (6,), (576,)),
    ("paper", "C-C-C-C"): (88, (1, 3, 5, 1), (128, 264, 528, 1056)),
    ("paper", "C-C-C-T"): (80, (2, 3, 5, 1), (128, 256, 480, 992)),
    ("paper", "C-C-T-T"): (64, (3, 3, 8, 2), (96, 192, 352, 704)),
    ("paper", "C-T-T-T"): (64, (1, 3, 5, 2), (96, 192, 384, 768)),
    ("paper", "C-C-W-W"): (64, (2, 4, 7, 1), (96, 192, 416, 832)),
    ("paper", "C-C-G-G"): (64, (2, 4, 7, 1), (96, 192, 416, 832)),
    ("paper", "C-C-L-L"): (80, (1, 3, 4, 1), (128, 256, 480, 992)),
    ("cifar", "VIT_REL"): (None, (6,), (384,)),
    ("cifar", "C-C-C-C"): (80, (2, 3, 6, 1), (80, 160, 328, 656)),
    ("cifar", "C-C-C-T"): (88, (1, 4, 3, 1), (96, 192, 352, 704)),
    ("cifar", "C-C-T-T"): (64, (1, 5, 8, 1), (64, 128, 256, 544)),
    ("cifar", "C-T-T-T"): (64, (3, 3, 5, 2), (64, 128, 256, 512)),
    ("cifar", "C-C-W-W"): (64, (1, 5, 8, 1), (64, 128, 256, 544)),
    ("cifar", "C-C-G-G"): (64, (1, 5, 8, 1), (64, 128, 256, 544)),
    ("cifar", "C-C-L-L"): (64, (1, 5, 8, 1), (64, 128, 256, 544)),
    ("tiny", "VIT_REL"): (None, (4,), (160,)),
    ("tiny", "C-C-C-C"): (32, (1, 3, 3, 1), (32, 64, 136, 272)),
    ("tiny", "C-C-C-T"): (32, (2, 2, 3, 1), (32, 64, 128, 256)),
    ("tiny", "C-C-T-T"): (32, (1, 3, 2, 1), (32, 64, 128, 256)),
    ("tiny", "C-T-T-T"): (32, (1, 2, 2, 1), (32, 64, 128, 256)),
    ("tiny", "C-C-W-W"): (32, (1, 3, 2, 1), (32, 64, 128, 256)),
    ("tiny", "C-C-G-G"): (32, (1, 3, 2, 1), (32, 64, 128, 256)),
    ("tiny", "C-C-L-L"): (32, (1, 3, 2, 1), (32, 64, 128, 256)),
}

# The unconstrained matcher's earlier choices (depths, widths; stem as in the template), for ``ablate match``'s
# old-vs-new column: e.g. cttt_tiny had S1 narrower than the stem, one head in S2 and 19 blocks.
SUPERSEDED: dict[tuple[str, str], tuple[tuple[int, ...], tuple[int, ...]]] = {
    ("paper", "VIT_REL"): ((6,), (576,)),
    ("paper", "C-C-C-C"): ((5, 3, 5, 2), (112, 224, 432, 864)),
    ("paper", "C-C-C-T"): ((2, 4, 5, 1), (128, 240, 480, 960)),
    ("paper", "C-C-T-T"): ((4, 5, 5, 2), (96, 192, 384, 768)),
    ("paper", "C-T-T-T"): ((1, 3, 5, 2), (96, 192, 384, 768)),
    ("cifar", "VIT_REL"): ((6,), (384,)),
    ("cifar", "C-C-C-C"): ((2, 8, 4, 2), (64, 144, 288, 576)),
    ("cifar", "C-C-C-T"): ((3, 3, 5, 1), (80, 160, 320, 640)),
    ("cifar", "C-C-T-T"): ((5, 4, 5, 2), (64, 128, 256, 512)),
    ("cifar", "C-T-T-T"): ((3, 3, 5, 2), (64, 128, 256, 512)),
    ("tiny", "VIT_REL"): ((4,), (160,)),
    ("tiny", "C-C-C-C"): ((3, 2, 2, 2), (32, 64, 112, 224)),
    ("tiny", "C-C-C-T"): ((3, 1, 3, 1), (32, 64, 128, 256)),
    ("tiny", "C-C-T-T"): ((1, 3, 2, 1), (32, 64, 128, 256)),
    ("tiny", "C-T-T-T"): ((4, 6, 6, 3), (16, 32, 64, 160)),
}


def variant_name(layout: str, budget: str) -> str:
    return f"{layout.replace('-', '').lower()}_{budget}"


def budget_config(budget: Budget, layout: str, depths: tuple[int, ...], dims: tuple[int, ...],
                  stem_dim: int | None = None) -> StagedNetConfig:
    """The template of ``budget`` with a layout's depths and widths (ViT_REL: patch stem, one stage)."""
    if layout == VIT_REL:
        return budget.template.replace(layout=VIT_REL, depths=depths, dims=dims, stem_dim=None,
                                       stem_stride=budget.vit_patch, strides=None)
    return budget.template.replace(layout=layout, depths=depths, dims=dims, stem_dim=stem_dim or budget.template.stem_dim)


for (_budget, _layout), (_stem, _depths, _dims) in MATCHED.items():
    register_model(variant_name(_layout, _budget), ModelEntry(
        budget_config(BUDGETS[_budget], _layout, _depths, _dims, _stem),
        f"{_layout} at the {_budget} budget ({BUDGETS[_budget].params / 1e6:.3g}M params, "
        f"{BUDGETS[_budget].macs / 1e9:.3g} GMACs at {BUDGETS[_budget].template.image_size[0]}px)",
    ))


# --- ConvMixer (Trockman & Kolter) ------------------------------------------------------------------------------
for _name, _cfg, _params in (
    ("convmixer_1536_20", ConvMixerConfig(1536, 20, 9, 7, "gelu", 1000, image_size=(224, 224)), 51.6e6),
    ("convmixer_768_32", ConvMixerConfig(768, 32, 7, 7, "relu", 1000, image_size=(224, 224)), 21.1e6),
    ("convmixer_1024_20", ConvMixerConfig(1024, 20, 9, 14, "gelu", 1000, image_size=(224, 224)), 24.4e6),
    ("convmixer_256_8", ConvMixerConfig(256, 8, 5, 2, "gelu", 10, image_size=(32, 32)), None),
):
    register_model(_name, ModelEntry(_cfg, f"ConvMixer-{_cfg.dim}/{_cfg.depth} (k{_cfg.kernel_size}, p{_cfg.patch_size})",
                                     _params))


# --- The one entry point ---------------------------------------------------------------------------------------
def list_models() -> list[str]:
    return list(MODELS)


_LAYOUT_LIKE = re.compile(r"[A-Z]+(-[A-Z]+)*")


# What a budget's variant may differ in from the budget itself: the data set's shape and regularisation.
DATA_FIELDS = ("num_classes", "in_chans", "image_size", "drop_path")


def budget_variant(layout: str, budget: str, **overrides: Any) -> StagedNetConfig:
    """``layout`` sized for ``budget``: the registry's frozen variant when there is one, else the budget matcher's
    choice (deterministic) under the architectural ``overrides`` (block settings such as ``window``); explicit
    ``depths`` and ``dims`` skip the matching. Data fields (``DATA_FIELDS``) are applied after matching."""
    from .budget import match_budget

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; valid budgets: {', '.join(BUDGETS)}")
    canonical = str(parse_layout(layout, BLOCK_DESCRIPTIONS))
    arch = {k: v for k, v in overrides.items() if k not in DATA_FIELDS}
    data = {k: v for k, v in overrides.items() if k in DATA_FIELDS}
    if {"depths", "dims"} <= arch.keys():
        cfg = budget_config(BUDGETS[budget], canonical, tuple(arch.pop("depths")), tuple(arch.pop("dims")),
                            arch.pop("stem_dim", None))
        return _apply_overrides(cfg, {**arch, **data})
    if not arch and (budget, canonical) in MATCHED:
        return MODELS[variant_name(canonical, budget)].config.replace(**data)
    cfg, _ = match_budget(canonical, BUDGETS[budget], tuple(sorted(arch.items())))
    return cfg.replace(**data)


def create_model(name: str, budget: str | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model by name, or a layout such as ``"C-C-T-T"``, with config overrides.

    ``create_model("coatnet_0", num_classes=10, image_size=(160, 224))``; ``create_model("C-T-T-T", depths=...,
    dims=...)``. A layout without depths/dims borrows them from CoAtNet-0 (4 stages) or ``vit_rel_paper``;
    ``create_model("C-T-C-T", budget="cifar")`` sizes it for a budget (see ``budget_variant``).
    """
    key = name.strip()
    if budget is not None:
        if key.lower() in MODELS:
            raise ValueError(f"budget={budget!r} sizes a layout such as 'C-T-C-T'; {name!r} is a registry model "
                             "with its own size")
        return StagedNet(budget_variant(key, budget, **overrides))
    if key.lower() in MODELS:
        return MODELS[key.lower()].build(**overrides)
    if key.upper().replace("-", "_") == VIT_REL or _LAYOUT_LIKE.fullmatch(key):
        layout = parse_layout(key, BLOCK_DESCRIPTIONS)
        base = MODELS["vit_rel_paper" if layout.patch_stem else "coatnet_0"].config
        if len(layout.segments) != len(base.depths) and not {"depths", "dims"} <= overrides.keys():
            raise ValueError(f"layout {key!r} has {len(layout.segments)} segments: pass depths=(...) and dims=(...), "
                             "one entry per letter")
        return StagedNet(_apply_overrides(base, {"layout": key, **overrides}))
    raise ValueError(
        f"unknown model {name!r}; valid names: {', '.join(MODELS)}; or a layout of stage letters "
        f"{'/'.join(BLOCK_DESCRIPTIONS)} such as 'C-C-T-T', or 'VIT_REL'"
    )


def _apply_overrides(cfg: StagedNetConfig | ConvMixerConfig, overrides: dict[str, Any]):
    if isinstance(cfg, StagedNetConfig):  # other names are block settings, checked when the network is planned
        return cfg.replace(**overrides)
    valid = [f.name for f in fields(cfg)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {type(cfg).__name__}; valid: {', '.join(valid)}")
    return cfg.replace(**overrides)
