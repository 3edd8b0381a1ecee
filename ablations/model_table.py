"""The registry as a Markdown table: our parameters and MACs beside the papers' figures."""

from __future__ import annotations

import sys
from dataclasses import fields

import torch
from tqdm.auto import tqdm

from lightning_modules.backbones import BLOCKS, MODELS, ConvMixerConfig, count_macs, count_params, create_model


def _delta(ours: float, paper: float | None) -> str:
    return "" if paper is None else f"{(ours / paper - 1) * 100:+.1f}%"


def describe(cfg) -> str:
    if isinstance(cfg, ConvMixerConfig):
        return f"dim {cfg.dim}, depth {cfg.depth}, k{cfg.kernel_size}, p{cfg.patch_size}, {cfg.activation}"
    stem = f"patch {cfg.stem_stride}" if cfg.layout == "VIT_REL" else f"stem {cfg.stem_dim}"
    common = {f.name for letter in "CT" for f in fields(BLOCKS[letter].Settings)}
    own = {f"{f.name} {getattr(BLOCKS[letter].settings(cfg), f.name)}" for letter in sorted(set(cfg.layout) & BLOCKS.keys())
           for f in fields(BLOCKS[letter].Settings) if f.name not in common}  # W's window, G's grid, ...
    return (f"{cfg.layout} {stem}, L={cfg.depths}, D={cfg.dims}" + ("" if cfg.head_dim == 32 else f", head {cfg.head_dim}")
            + "".join(f", {o}" for o in sorted(own)) + ("" if cfg.style == "paper" else f", {cfg.style} style"))


def stage_shapes(cfg) -> str:
    """Stem width, then per stage its letters, depth, width, heads (attention) and tokens: what a comparison holds."""
    from lightning_modules.backbones.blocks import TransformerBlock
    from lightning_modules.backbones.staged import plan_blocks

    layout, _, specs = plan_blocks(cfg)
    parts = [f"stem {cfg.stem_dim or cfg.dims[0]}" + (f" (patch {cfg.stem_stride})" if layout.patch_stem else "")]
    for stage in range(1, len(layout.stages) + 1):
        blocks = [s for s in specs if s.stage == stage]
        attention = [s for s in blocks if issubclass(BLOCKS[s.letter], TransformerBlock)]
        heads = f", {blocks[-1].dim_out // cfg.head_dim} heads" if attention else ""
        height, width = blocks[-1].size
        parts.append(f"S{stage} {''.join(layout.stages[stage - 1])} {len(blocks)}x{blocks[-1].dim_out}{heads}, "
                     f"{height * width} tok")
    return " | ".join(parts)


def model_table(names: list[str] | None = None, progress: bool | None = None) -> str:
    """Build each model on the meta device (no memory, any size) and count; an unknown name raises ValueError."""
    names = names or list(MODELS)
    rows = ["| model | configuration | input | params | GMACs | paper params | paper GMACs | Δ params | Δ MACs |",
            "|---|---|---|---|---|---|---|---|---|"]
    show = sys.stderr.isatty() if progress is None else progress
    for name in tqdm(names, desc="counting", disable=not show):
        with torch.device("meta"):
            model = create_model(name)
        entry = MODELS.get(name.lower())
        params, macs = count_params(model), count_macs(model)
        paper_p = entry.paper_params if entry else None
        paper_m = entry.paper_macs if entry else None
        h, w = model.image_size
        rows.append(
            f"| {name} | {describe(model.cfg)} | {h}x{w} | {params / 1e6:.2f}M | {macs / 1e9:.3f} | "
            f"{'' if paper_p is None else f'{paper_p / 1e6:.1f}M'} | {'' if paper_m is None else f'{paper_m / 1e9:.1f}'} | "
            f"{_delta(params, paper_p)} | {_delta(macs, paper_m)} |"
        )
    return "\n".join(rows)
