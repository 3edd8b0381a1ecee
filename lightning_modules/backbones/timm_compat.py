"""timm's CoAtNet weights in and out: ``from_timm(timm_model)`` and ``to_timm_state_dict(model)``.

timm's ``coatnet_N_224`` models are the paper's networks with five details changed (2x2 average pooling in
shortcuts and attention, SE width from the output and SiLU, no bias on the second stem conv, LayerNorm eps 1e-6),
MBConv downsampling in the depthwise conv (Table 9) and a ``Linear + tanh`` pre-logits layer. ``style="timm"``,
``downsample="dw"`` and ``pre_logits=True`` build the same network here; only names and three layouts differ:
1x1 convs are linear layers here, timm's qkv rows are head-major ([q, k, v] per head) where ours are q/k/v-major,
and the relative-bias table is (offsets, heads) there and (heads, 2H-1, 2W-1) here.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .config import StagedNetConfig
from .blocks import TransformerBlock
from .staged import StagedNet

# (our name, timm name) patterns; \1 \2 are the stage and block indices.
_BLOCK_NAMES = [
    ("shortcut.proj.", "shortcut.expand."),
    ("norm.", "pre_norm."), ("expand.0.", "conv1_1x1."), ("expand.1.", "norm1."), ("depthwise.0.", "conv2_kxk."),
    ("depthwise.1.", "norm2."), ("se.reduce.", "se.fc1."), ("se.expand.", "se.fc2."), ("project.", "conv3_1x1."),
    ("norm1.", "norm1.norm."), ("attn.qkv.", "attn.qkv."), ("attn.proj.", "attn.proj."),
    ("attn.rel_bias.table", "attn.rel_pos.relative_position_bias_table"), ("norm2.", "norm2."),
    ("mlp.0.", "mlp.fc1."), ("mlp.2.", "mlp.fc2."),
]
_OTHER_NAMES = [
    ("stem.0.", "stem.conv1."), ("stem.1.", "stem.norm1."), ("stem.3.", "stem.conv2."),
    ("head.norm.", "head.norm."), ("head.pre_logits.0.", "head.pre_logits.fc."), ("head.fc.", "head.fc."),
]


def timm_name(name: str, pooled: set[str] = frozenset()) -> str:
    """Our state-dict key -> timm's (``stages.2.0.attn.qkv.weight`` -> ``stages.2.blocks.0.attn.qkv.weight``).
    ``pooled``: prefixes of our Transformer blocks that downsample (timm nests their norm1 with the pooling)."""
    match = re.fullmatch(r"stages\.(\d+)\.(\d+)\.(.+)", name)
    table = _BLOCK_NAMES if match else _OTHER_NAMES
    rest = match.group(3) if match else name
    for ours, theirs in table:
        if rest.startswith(ours):
            if ours == "norm1." and not any(name.startswith(p) for p in pooled):
                theirs = "norm1."
            rest = theirs + rest[len(ours):]
            return f"stages.{match.group(1)}.blocks.{match.group(2)}.{rest}" if match else rest
    raise KeyError(f"no timm name for {name!r}")


def _qkv_order(t: torch.Tensor, heads: int, to_timm: bool) -> torch.Tensor:
    """Rows q/k/v-major (ours: s * C + h * d + i) <-> head-major (timm: h * 3d + s * d + i)."""
    rows = t.shape[0]
    shape = (3, heads, rows // (3 * heads)) if to_timm else (heads, 3, rows // (3 * heads))
    return t.reshape(*shape, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _convert(name: str, value: torch.Tensor, target_shape: torch.Size, heads: dict[str, int], to_timm: bool):
    if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
        value = _qkv_order(value.reshape(value.shape[0], -1) if value.ndim > 1 else value,
                           heads[name.rsplit(".qkv.", 1)[0]], to_timm)
    elif name.endswith("rel_bias.table"):
        value = value.flatten(1).T if to_timm else value.T
    return value.reshape(target_shape)


def _heads(model: StagedNet) -> dict[str, int]:
    return {name: module.num_heads for name, module in model.named_modules() if hasattr(module, "num_heads")}


def _pooled(model: StagedNet) -> set[str]:
    return {f"{name}." for name, module in model.named_modules() if isinstance(module, TransformerBlock) and module.stride > 1}


def from_timm(timm_model: nn.Module) -> StagedNet:
    """Our network equal to a timm CoAtNet (``timm.create_model("coatnet_0_224", ...)``, any of coatnet_0..5_224,
    at the image size it was built for), with its weights; logits agree to float rounding."""
    if type(timm_model.head).__name__ != "NormMlpClassifierHead" or not hasattr(timm_model, "stages"):
        raise ValueError(f"from_timm converts timm's paper-style CoAtNets (coatnet_0_224 .. coatnet_5_224); this "
                         f"{type(timm_model).__name__} with a {type(timm_model.head).__name__} is another family")
    stages = list(timm_model.stages)
    layout, depths, dims = [], [], []
    for stage in stages:
        kinds = {type(block).__name__ for block in stage.blocks}
        letters = {"MbConvBlock": "C", "TransformerBlock2d": "T"}
        if len(kinds) != 1 or not kinds <= letters.keys():
            raise ValueError(f"from_timm converts timm's CoAtNets (MbConvBlock and TransformerBlock2d stages); "
                             f"this model has {sorted(kinds)}")
        layout.append(letters[kinds.pop()])
        depths.append(len(stage.blocks))
        dims.append(stage.blocks[-1].norm2.normalized_shape[0] if layout[-1] == "T" else stage.blocks[-1].conv3_1x1.out_channels)
    last_attention = next(b for s in reversed(stages) for b in s.blocks if type(b).__name__ == "TransformerBlock2d")
    window = last_attention.attn.rel_pos.window_size
    stride = 2 ** (len(stages) + 1)
    cfg = StagedNetConfig(
        layout="-".join(layout), depths=tuple(depths), dims=tuple(dims), stem_dim=timm_model.stem.conv1.out_channels,
        head_dim=last_attention.attn.dim_head, num_classes=timm_model.num_classes,
        in_chans=timm_model.stem.conv1.in_channels, image_size=(window[0] * stride, window[1] * stride),
        style="timm", pre_logits=not isinstance(timm_model.head.pre_logits, nn.Identity),
    ).replace(downsample="dw")
    model = StagedNet(cfg).to(next(timm_model.parameters()).dtype)  # float64 weights stay float64
    theirs, heads, pooled = timm_model.state_dict(), _heads(model), _pooled(model)
    ours = {name: _convert(name, theirs[timm_name(name, pooled)], value.shape, heads, to_timm=False).to(value.dtype)
            for name, value in model.state_dict().items()}
    model.load_state_dict(ours)
    return model


def to_timm_state_dict(model: StagedNet) -> dict[str, torch.Tensor]:
    """``model``'s weights under timm's names and layouts: ``timm_model.load_state_dict(to_timm_state_dict(m))``
    for a ``style="timm"``, ``downsample="dw"`` model (``from_timm`` builds one)."""
    heads, pooled, out = _heads(model), _pooled(model), {}
    for name, value in model.state_dict().items():
        target = value.shape
        if name.endswith("attn.qkv.weight") or name.endswith(("attn.proj.weight", "mlp.0.weight", "mlp.2.weight")):
            target = (*value.shape, 1, 1)  # timm's 1x1 convs
        elif name.endswith("rel_bias.table"):
            target = (value.shape[1] * value.shape[2], value.shape[0])
        out[timm_name(name, pooled)] = _convert(name, value, target, heads, to_timm=True)
    return out
