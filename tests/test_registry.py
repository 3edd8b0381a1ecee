"""The registry against the papers' tables, and the budget-matched stacking-order variants."""

import itertools

import pytest
import torch

from lightning_modules.backbones import (
    BUDGETS, MODELS, STUDY_LAYOUTS, count_macs, count_params, create_model, estimate_cost, list_models, match_budget,
    variant_name,
)
from lightning_modules.backbones.registry import ATTENTION_LAYOUTS, MATCHED


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


def test_coatnet_7_in_the_layout_grammar():
    params, _ = measured("coatnet_7")
    assert params == pytest.approx(2.44e9, rel=0.03)
    assert MODELS["coatnet_7"].config.layout == "C-C-CT-T"


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


def test_every_required_name_is_registered():
    names = set(list_models())
    for budget in ("paper", "cifar", "tiny"):
        for short in ("vit_rel", "cccc", "ccct", "cctt", "cttt", "ccww", "ccgg", "ccll"):
            assert f"{short}_{budget}" in names
    assert {f"coatnet_{i}" for i in range(8)} <= names
    assert {"convmixer_1536_20", "convmixer_768_32", "convmixer_1024_20", "convmixer_256_8"} <= names


@pytest.mark.parametrize("budget", list(BUDGETS))
def test_every_variant_of_a_budget_is_within_3_5_percent(budget):
    """Built and counted (not estimated): the five and the attention letters, parameters and MACs."""
    target = BUDGETS[budget]
    for layout in (*STUDY_LAYOUTS, *ATTENTION_LAYOUTS):
        params, macs = measured(variant_name(layout, budget))
        assert abs(params / target.params - 1) <= 0.035 and abs(macs / target.macs - 1) <= 0.035, (layout, params, macs)


def test_variants_differ_in_block_types_not_in_shape():
    """The matcher's constraints, checked on what the registry holds: at least two heads in every attention stage,
    widths non-decreasing from the stem, one width multiplier (each width within 10% of template x m), each depth
    within a factor 1.5 of the template's. The superseded cttt_tiny, (16, 32, 64, 160) with 19 blocks, fails all."""
    for (budget, layout), (stem, depths, dims) in MATCHED.items():
        if layout == "VIT_REL":
            assert dims[0] // 32 >= 2
            continue
        template = BUDGETS[budget].template
        for letter, width in zip(layout.replace("-", ""), dims):
            if letter != "C":
                assert width % template.head_dim == 0 and width // template.head_dim >= 2, (budget, layout)
        assert list((stem, *dims)) == sorted((stem, *dims)), (budget, layout)
        ratios = [w / t for w, t in zip((stem, *dims), (template.stem_dim, *template.dims))]
        assert max(ratios) / min(ratios) <= 1.1 / 0.9, (budget, layout, ratios)
        for depth, base in zip(depths, template.depths):
            assert base / 1.5 - 1 <= depth <= base * 1.5 + 1, (budget, layout, depths)


def test_variants_have_the_layout_their_name_says():
    for (budget, layout) in MATCHED:
        with torch.device("meta"):
            model = create_model(variant_name(layout, budget))
        assert str(model.layout) == layout
        assert model.image_size == BUDGETS[budget].template.image_size


def test_paper_budget_is_coatnet_0_sized():
    budget = BUDGETS["paper"]
    assert budget.params == pytest.approx(25e6, rel=0.01)  # CoAtNet-0's parameters
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
    assert str(model.layout) == "C-T-C-T" and model.cfg.dims == match_budget("C-T-C-T", target)[0].dims
    assert abs(count_params(model) / target.params - 1) <= 0.035 and abs(count_macs(model) / target.macs - 1) <= 0.035
    with pytest.raises(ValueError, match="'cctt_tiny' is a registry model"):
        create_model("cctt_tiny", budget="tiny")


def test_coatnet_0_attention_macs_equal_a_hand_count_on_any_device():
    """QK^T and attention x V cost N^2 x C MACs each per block: S3 has 5 blocks of 14x14 tokens at width 384,
    S4 2 blocks of 7x7 at 768. The count runs on the meta device, so a real CPU model (whose attention some torch
    builds dispatch to a fused kernel the FLOP counter has no formula for) counts the same as its meta twin."""
    from lightning_modules.backbones.profile import attention_macs, macs_by_op

    hand = 5 * 2 * 196**2 * 384 + 2 * 2 * 49**2 * 768
    assert hand == 154_893_312
    with torch.device("meta"):
        meta = create_model("coatnet_0")
    real = create_model("C-T", depths=(1, 1), dims=(16, 32), stem_dim=16, head_dim=16, image_size=(32, 32))
    assert attention_macs(macs_by_op(meta)) == hand
    with torch.device("meta"):
        twin = create_model("C-T", depths=(1, 1), dims=(16, 32), stem_dim=16, head_dim=16, image_size=(32, 32))
    assert macs_by_op(real) == macs_by_op(twin) and attention_macs(macs_by_op(real)) == 2 * 4**4 * 32
    assert next(real.parameters()).device.type == "cpu"  # counted through a copy, the model itself untouched
