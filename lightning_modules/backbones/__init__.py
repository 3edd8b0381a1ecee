"""Backbones for the stacking-order study: ``create_model(name_or_layout, **overrides)`` builds any of them."""

from .blocks import BLOCKS, Block, import_block_modules, register_block
from .budget import Budget, Cost, estimate_cost, match_budget
from .config import ConvMixerConfig, StagedNetConfig
from .convmixer import ConvMixer
from .layout import parse_layout
from .profile import count_macs, count_params
from .registry import BUDGETS, MODELS, STUDY_LAYOUTS, budget_variant, create_model, list_models, variant_name
from .staged import StagedNet
from .timm_compat import from_timm, to_timm_state_dict

__all__ = [
    "BLOCKS", "BUDGETS", "Block", "budget_variant", "import_block_modules", "Budget", "ConvMixer", "ConvMixerConfig", "Cost", "MODELS", "STUDY_LAYOUTS", "StagedNet",
    "StagedNetConfig", "count_macs", "count_params", "create_model", "estimate_cost", "list_models", "match_budget",
    "from_timm", "parse_layout", "register_block", "to_timm_state_dict", "variant_name",
]
