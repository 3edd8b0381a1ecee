"""The staged backbone: layout grammar, shapes at many resolutions, stochastic depth, state dicts, clear errors."""

import pytest
import torch
from torch import nn

from lightning_modules.backbones import BLOCKS, Block, create_model, parse_layout, register_block
from lightning_modules.backbones.blocks import BLOCK_DESCRIPTIONS, MBConv, TransformerBlock
from lightning_modules.backbones.layout import Layout

SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 32, 64), stem_dim=16, head_dim=16, num_classes=7)


def blocks_of(model):
    return [m for m in model.modules() if isinstance(m, tuple(BLOCKS.values()))]


@pytest.mark.parametrize("text,stages", [
    ("C-C-T-T", (("C",), ("C",), ("T",), ("T",))),
    ("CCTT", (("C",), ("C",), ("T",), ("T",))),
    ("c-t", (("C",), ("T",))),
    ("C-C-CT-T", (("C",), ("C",), ("C", "T"), ("T",))),
    ("T-C-T", (("T",), ("C",), ("T",))),
])
def test_layout_grammar(text, stages):
    assert parse_layout(text, BLOCK_DESCRIPTIONS).stages == stages


@pytest.mark.parametrize("text", ["VIT_REL", "vit_rel", "ViT-Rel"])
def test_vit_rel_layout(text):
    layout = parse_layout(text, BLOCK_DESCRIPTIONS)
    assert layout == Layout(stages=(("T",),), patch_stem=True) and str(layout) == "VIT_REL"


@pytest.mark.parametrize("text,needle", [
    ("C-X-T", "unknown stage type 'X'"),
    ("C--T", "empty stage"),
    ("", "non-empty"),
])
def test_layout_errors_name_the_bad_value(text, needle):
    with pytest.raises(ValueError, match=needle) as err:
        parse_layout(text, BLOCK_DESCRIPTIONS)
    if "stage type" in needle:
        assert "C (MBConv" in str(err.value) and "T (Transformer" in str(err.value)


@pytest.mark.parametrize("layout,size", [
    ("C-C-T-T", (32, 32)), ("C-C-T-T", (64, 96)), ("C-T-T-T", (96, 64)), ("C-C-C-C", (32, 64)),
    ("T-C-T-C", (64, 64)),
])
def test_shapes_at_several_resolutions(layout, size):
    model = create_model(layout, image_size=size, **SMALL)
    x = torch.randn(2, 3, *size)
    features = model.forward_features(x)
    assert features.shape == (2, 64, size[0] // 32, size[1] // 32)
    assert model(x).shape == (2, 7)
    assert model.forward_head(features, pre_logits=True).shape == (2, 64)


def test_small_images_through_stem_and_stage_strides():
    model = create_model("C-C-T-T", image_size=32, stem_stride=1, strides=(1, 2, 2, 2), **SMALL)
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


def test_vit_rel_patch_stem_non_square():
    model = create_model("VIT_REL", depths=(2,), dims=(64,), stem_stride=8, image_size=(32, 48), head_dim=32,
                         num_classes=5)
    assert isinstance(model.stem, nn.Conv2d) and model.stem.stride == (8, 8)
    assert model.forward_features(torch.randn(1, 3, 32, 48)).shape == (1, 64, 4, 6)
    assert model.stages[0][0].attn.rel_bias.table.shape == (2, 7, 11)


def test_mixed_stage_for_coatnet_7_style_layouts():
    model = create_model("C-C-CT-T", depths=(1, 1, 2, 2, 1), dims=(16, 32, 32, 64, 64), stem_dim=16, head_dim=16,
                         image_size=64, num_classes=3)
    s3 = model.stages[2]
    assert [type(b).__name__ for b in s3] == ["MBConv", "MBConv", "TransformerBlock", "TransformerBlock"]
    assert [b.shortcut.pool.__class__.__name__ for b in s3] == ["MaxPool2d", "Identity", "Identity", "Identity"]
    assert s3[2].attn.qkv.in_features == 32 and s3[2].attn.qkv.out_features == 3 * 64  # widens without pooling
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_downsampling_happens_in_the_first_block_of_each_stage():
    model = create_model("C-C-T-T", image_size=64, depths=(2, 2, 2, 2), dims=(16, 32, 32, 64), stem_dim=16,
                         head_dim=16)
    for stage in model.stages:
        strides = [b.shortcut.pool.__class__.__name__ for b in stage]
        assert strides == ["MaxPool2d", "Identity"]


def test_mbconv_downsample_variants():
    """'conv' strides the first 1x1 (paper default), 'dw' the depthwise conv (Table 9): more MACs, same params."""
    conv = create_model("coatnet_0", image_size=64, downsample="conv")
    dw = create_model("coatnet_0", image_size=64, downsample="dw")
    first = lambda m: m.stages[0][0]  # noqa: E731
    assert first(conv).expand[0].stride == (2, 2) and first(conv).depthwise[0].stride == (1, 1)
    assert first(dw).expand[0].stride == (1, 1) and first(dw).depthwise[0].stride == (2, 2)
    with pytest.raises(ValueError, match="downsample='avg'"):
        create_model("coatnet_0", downsample="avg")


def test_hidden_width_follows_output_width_and_head_size_32():
    """The known faults of a widely copied implementation: hidden width from the input, 8 fixed heads."""
    model = create_model("coatnet_0")
    s2_first, s3_first = model.stages[1][0], model.stages[2][0]
    assert isinstance(s2_first, MBConv) and s2_first.expand[0].out_channels == 4 * 192
    assert isinstance(s3_first, TransformerBlock) and s3_first.attn.num_heads == 384 // 32
    assert model.stages[3][0].attn.num_heads == 768 // 32


def test_stochastic_depth_increases_linearly():
    model = create_model("C-C-T-T", drop_path=0.3, **SMALL, image_size=32)
    rates = [b.drop_path.p for b in blocks_of(model)]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = create_model("C-T-T-T", image_size=32, **SMALL).eval()
    torch.manual_seed(1)
    b = create_model("C-T-T-T", image_size=32, **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x))
    assert not any(k.endswith(".index") for k in a.state_dict())  # derived buffers are not saved


def test_wrong_input_size_is_a_clear_error():
    model = create_model("cctt_tiny")
    with pytest.raises(ValueError, match="built for 32x32 inputs, got 64x64"):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("kwargs,needle", [
    (dict(image_size=100), r"stage S2 \(C\) downsamples a 25x25 feature map by 2; use sides divisible by the total stride 32"),
    (dict(image_size=(224, 208)), r"stage S4 \(T\) downsamples a 14x13 feature map"),
    (dict(depths=(2, 3, 5)), r"one depths entry per segment letter \(4\), got 3"),
    (dict(dims=(96, 192, 384, 768, 1)), "one dims entry per segment letter"),
    (dict(strides=(2, 2)), "one strides entry per stage"),
    (dict(depths=(2, 0, 5, 2)), "positive"),
    (dict(rel_pos="after"), "rel_pos='after'"),
    (dict(head_dim=100), "not a multiple of head_dim=100"),
    (dict(widht=3), "unknown option.*widht.*valid: layout"),
])
def test_bad_configs_name_the_bad_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_model("coatnet_0", **kwargs)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'coatnet_9'; valid names: coatnet_0, .*convmixer_256_8"):
        create_model("coatnet_9")


def test_layout_with_other_segment_count_needs_depths_and_dims():
    with pytest.raises(ValueError, match="has 3 segments: pass depths"):
        create_model("C-T-T")
    assert create_model("C-T-T", depths=(1, 1, 1), dims=(16, 32, 64), stem_dim=16, head_dim=16, image_size=32)


def test_a_new_stage_type_is_one_class_and_one_entry():
    @register_block("Z", "identity-ish test block")
    class Conv3(Block):
        def __init__(self, dim_in, dim_out, *, stride, size, drop_path, cfg):
            super().__init__()
            self.conv = nn.Conv2d(dim_in, dim_out, 3, stride, 1)

        def forward(self, x):
            return self.conv(x)

    try:
        model = create_model("C-Z-T", depths=(1, 2, 1), dims=(16, 24, 32), stem_dim=16, head_dim=16, image_size=32)
        assert isinstance(model.stages[1][0], Conv3) and model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    finally:
        BLOCKS.pop("Z")
        BLOCK_DESCRIPTIONS.pop("Z")
    with pytest.raises(ValueError, match="must be one new upper-case letter"):
        register_block("C", "duplicate")(Conv3)

