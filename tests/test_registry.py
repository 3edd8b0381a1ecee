"""The registry against the papers' tables, and the budget-matched stacking-order variants."""

import functools
import itertools

import pytest
import torch

from lightning_modules.backbones import (
    BUDGETS, MODELS, STUDY_LAYOUTS, count_macs, count_params, create_model, estimate_cost, list_models, match_budget,
    variant_name,
)
from lightning_modules.backbones.registry import ATTENTION_LAYOUTS, MATCHED


@functools.cache  # counted once for the tests that read the same model
def measured(name, **overrides):
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return count_params(model), count_macs(model)


# Table 3 (params, MACs at 224) and Table 11; the paper's "FLOPs" are multiply-accumulates.
@pytest.mark.parametrize("name,params,macs", [
    ("coatnet_0", 25e6, 4.2e9), ("coatnet_1", 42e6, 8.4e9), ("coatnet_2", 75e6, 15.7e9), ("coatnet_3", 168e6, 34.7e9),
    ("coatnet_4", 275e6, None), ("coatnet_5", 688e6, None),
])
def test_coatnet_family_matches_the_paper(name, params, macs):
    ours_params, ours_macs = measured(name)
    assert ours_params == pytest.approx(params, rel=0.03)
    if macs is not None:
        assert ours_macs == pytest.approx(macs, rel=0.05)


def test_table_9_depthwise_downsampling_costs_more():
    """Table 9: CoAtNet-0 4.2G -> 4.6G with stride-2 depthwise downsampling, same parameters."""
    conv_params, conv_macs = measured("coatnet_0")
    dw_params, dw_macs = measured("coatnet_0", downsample="dw")
    assert dw_params == conv_params
    assert dw_macs == pytest.approx(4.6e9, rel=0.05) and dw_macs > conv_macs * 1.05


# CoAtNet-6 counts 1.34G parameters here against Table 12's 1.47G with the table's widths and depths (unexplained)
@pytest.mark.parametrize("name,params,mbconv_width,tfm_width", [("coatnet_6", None, 768, 1536),
                                                               ("coatnet_7", 2.44e9, 1024, 2048)])
def test_coatnet_6_and_7_hold_mbconv_then_transformer_blocks_in_s3(name, params, mbconv_width, tfm_width):
    """Table 12: S3 is 8 MBConv blocks, then 42 Transformer blocks at double width."""
    if params is not None:
        assert measured(name)[0] == pytest.approx(params, rel=0.03)
    with torch.device("meta"):
        model = create_model(name)
    s3 = model.stages[2]
    widths = []
    hooks = [block.register_forward_hook(lambda module, args, out: widths.append(out.shape[1])) for block in s3]
    model(torch.zeros(1, 3, *model.image_size, device="meta"))
    for hook in hooks:
        hook.remove()
    kinds = [type(block).__name__ for block in s3]
    assert kinds == ["MBConv"] * 8 + ["TransformerBlock"] * 42
    assert widths == [mbconv_width] * 8 + [tfm_width] * 42


@pytest.mark.parametrize("name,params", [
    ("convmixer_1536_20", 51.6e6), ("convmixer_768_32", 21.1e6), ("convmixer_1024_20", 24.4e6),
])
def test_convmixer_parameter_counts(name, params):
    assert measured(name)[0] == pytest.approx(params, rel=0.02)


def test_convmixer_768_32_uses_relu_and_cifar_model_shape():
    model = create_model("convmixer_768_32")
    assert any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    cifar = create_model("convmixer_256_8")
    assert cifar.stem[0].kernel_size == (2, 2) and cifar.blocks[0][0][0].kernel_size == (5, 5)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# Section 2.2's five stacking orders, as the paper names them
PAPER_LAYOUTS = ("VIT_REL", "C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T")
# Tokens per stage S1..S4 (ViT_REL: its one stage), from the resolutions: 224 with stride 4..32 (ViT: 16); 32x32
# with stride 1..8 (ViT: patch 4); 32x32 with stride 2..16 (ViT: patch 8)
TOKENS = {"paper": ((3136, 784, 196, 49), (196,)), "cifar": ((1024, 256, 64, 16), (64,)),
          "tiny": ((256, 64, 16, 4), (16,))}


def stage_outputs(model) -> list[tuple[int, int, int]]:
    """(channels, height, width) after the stem and after each stage, read from a forward pass on the meta device."""
    shapes = []
    hooks = [m.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape[1:])))
             for m in (model.stem, *model.stages)]
    model(torch.zeros(1, 3, *model.image_size, device="meta"))
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.mark.parametrize("budget", list(BUDGETS))
def test_every_variant_of_a_budget_is_within_3_5_percent(budget):
    """Built and counted (not estimated): the five and the attention letters, parameters and MACs."""
    target = BUDGETS[budget]
    for layout in (*STUDY_LAYOUTS, *ATTENTION_LAYOUTS):
        params, macs = measured(variant_name(layout, budget))
        assert abs(params / target.params - 1) <= 0.035 and abs(macs / target.macs - 1) <= 0.035, (layout, params, macs)


def shape_faults(model, outputs: list[tuple[int, int, int]]) -> list[str]:
    """How a built network departs from the shape every CoAtNet of Table 3 has: at least two heads of attention
    per block, widths that never decrease from the stem, each stage twice as wide as the one before (here up to
    the rounding of widths to what the blocks accept, 10%)."""
    heads = [m.num_heads for m in model.modules() if hasattr(m, "num_heads")]
    widths = [channels for channels, _, _ in outputs]
    faults = [f"{min(heads)} head(s)"] if heads and min(heads) < 2 else []
    if widths != sorted(widths):
        faults.append(f"widths {widths} decrease")
    if any(abs(b / a / 2 - 1) > 0.1 for a, b in zip(widths[1:], widths[2:])):
        faults.append(f"widths {widths[1:]} do not double per stage")
    return faults


@pytest.mark.slow  # 24 networks built and run on the meta device
def test_every_variant_is_what_its_name_says_and_differs_in_block_types_not_in_shape():
    """Read from the name alone (``cctt_tiny``: letters, then budget) and from the built network: no name builds
    another layout, every stage sees the tokens its budget's resolution gives, each budget has the paper's five,
    and none departs from CoAtNet's shape. The superseded cttt_tiny (stem 32, widths 16/32/64/160: one head in S2,
    S1 narrower than the stem, 2.5x from S3 to S4) is what the shape rules out."""
    spelled = set()
    for name in list_models():
        short, _, budget = name.rpartition("_")
        if budget not in TOKENS:
            continue
        layout = "VIT_REL" if short == "vit_rel" else "-".join(short.upper())
        with torch.device("meta"):
            model = create_model(name)
        outputs = stage_outputs(model)
        tokens = tuple(h * w for _, h, w in outputs[1:])
        assert (str(model.layout), tokens, shape_faults(model, outputs)) == \
            (layout, TOKENS[budget][layout == "VIT_REL"], []), name
        spelled.add((layout, budget))
    assert {(layout, budget) for layout in PAPER_LAYOUTS for budget in TOKENS} <= spelled
    with torch.device("meta"):
        superseded = create_model("C-T-T-T", budget="tiny", depths=(4, 6, 6, 3), dims=(16, 32, 64, 160))
    assert shape_faults(superseded, stage_outputs(superseded)) == [
        "1 head(s)", "widths [32, 16, 32, 64, 160] decrease", "widths [16, 32, 64, 160] do not double per stage"]


def test_paper_budget_is_coatnet_0_sized():
    for layout in PAPER_LAYOUTS:  # Table 3: CoAtNet-0 has 25M parameters
        assert measured(variant_name(layout, "paper"))[0] == pytest.approx(25e6, rel=0.035), layout
    with torch.device("meta"):
        vit = create_model("vit_rel_paper", num_classes=0)
    assert vit.stem.stride == (16, 16) and vit.feature_size == (14, 14)


@pytest.mark.parametrize("budget,layouts", [("tiny", (*STUDY_LAYOUTS, *ATTENTION_LAYOUTS)), ("cifar", ("C-C-C-T", "C-C-W-W"))])
def test_matcher_reproduces_the_frozen_registry(budget, layouts):
    for layout in layouts:
        cfg, cost = match_budget(layout, BUDGETS[budget])
        assert (cfg.stem_dim if layout != "VIT_REL" else None, cfg.depths, cfg.dims) == MATCHED[(budget, layout)], layout
        assert cost.error(BUDGETS[budget].params, BUDGETS[budget].macs) <= 0.035


def test_cost_estimate_equals_the_built_model():
    for name in ("cttt_tiny", "vit_rel_cifar", "coatnet_1"):
        cfg = MODELS[name].config
        assert (estimate_cost(cfg).params, estimate_cost(cfg).macs) == measured(name)


def test_create_by_layout_with_overrides():
    model = create_model("C-C-T-T", depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), stem_dim=16, image_size=(32, 64),
                         num_classes=4, rel_pos="none")
    assert model.cfg.layout == "C-C-T-T" and model.image_size == (32, 64)
    assert model.stages[2][0].attn.rel_bias is None
    assert model(torch.randn(1, 3, 32, 64)).shape == (1, 4)


def test_any_layout_at_a_budget():
    """A registered layout at a budget is the registry's variant; any other is the matcher's, within 3.5%, with the
    data's classes applied after matching; a registry name with a budget is refused."""
    assert create_model("c-c-t-t", budget="tiny", num_classes=4).cfg == MODELS["cctt_tiny"].config.replace(num_classes=4)
    with torch.device("meta"):
        model = create_model("C-T-C-T", budget="tiny")
    target = BUDGETS["tiny"]
    assert str(model.layout) == "C-T-C-T"
    assert create_model("C-T-C-T", budget="tiny", num_classes=4).cfg.dims == model.cfg.dims  # classes: after matching
    assert abs(count_params(model) / target.params - 1) <= 0.035 and abs(count_macs(model) / target.macs - 1) <= 0.035
    with pytest.raises(ValueError, match="'cctt_tiny' is a registry model"):
        create_model("cctt_tiny", budget="tiny")


def test_coatnet_0_attention_macs_equal_a_hand_count_on_any_device():
    """QK^T and attention x V cost N^2 x C MACs each per block: S3 has 5 blocks of 14x14 tokens at width 384,
    S4 2 blocks of 7x7 at 768. The count runs on the meta device, so a real CPU model (whose attention some torch
    builds dispatch to a fused kernel the FLOP counter has no formula for) counts the same as its meta twin."""
    from lightning_modules.backbones.profile import attention_macs, macs_by_op

    hand = 5 * 2 * 196**2 * 384 + 2 * 2 * 49**2 * 768
    with torch.device("meta"):
        meta = create_model("coatnet_0")
    real = create_model("C-T", depths=(1, 1), dims=(16, 32), stem_dim=16, head_dim=16, image_size=(32, 32))
    assert attention_macs(macs_by_op(meta)) == hand
    with torch.device("meta"):
        twin = create_model("C-T", depths=(1, 1), dims=(16, 32), stem_dim=16, head_dim=16, image_size=(32, 32))
    # C-T at 32x32: stem /2, S1 /4, S2 /8, so one attention block over 4x4 = 16 tokens at width 32
    assert macs_by_op(real) == macs_by_op(twin) and attention_macs(macs_by_op(real)) == 2 * 16**2 * 32
    assert next(real.parameters()).device.type == "cpu"  # counted through a copy, the model itself untouched
