"""Relative attention against a plain reference computation, the bias's structure, and its interpolation."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.backbones import BLOCKS, StagedNetConfig, create_model
from lightning_modules.backbones.attention import LinearAttention, RelativeAttention, RelativePositionBias, relative_index


def reference_attention(attn: RelativeAttention, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Explicit logits + bias, softmax, weighted sum; the bias is looked up offset by offset with Python loops."""
    height, width = size
    batch, tokens, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(heads * head_dim, dim=-1)
    q, k, v = (t.reshape(batch, tokens, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    bias = torch.zeros(heads, tokens, tokens)
    if attn.rel_bias is not None:
        table = attn.rel_bias.table
        positions = list(itertools.product(range(height), range(width)))
        for i, (yi, xi) in enumerate(positions):
            for j, (yj, xj) in enumerate(positions):
                bias[:, i, j] = table[:, yi - yj + height - 1, xi - xj + width - 1]
    logits = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    if attn.rel_pos == "pre":
        weights = torch.softmax(logits + bias, dim=-1)
    elif attn.rel_pos == "post":
        weights = torch.softmax(logits, dim=-1) + bias
    else:
        weights = torch.softmax(logits, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("rel_pos", ["pre", "post", "none"])
@pytest.mark.parametrize("size", [(3, 4), (4, 4)])
def test_relative_attention_matches_reference(rel_pos, size):
    torch.manual_seed(0)
    attn = RelativeAttention(dim_in=16, dim_out=32, head_dim=8, size=size, rel_pos=rel_pos)
    if attn.rel_bias is not None:
        torch.nn.init.normal_(attn.rel_bias.table, std=1.0)  # large enough to matter
    x = torch.randn(2, size[0] * size[1], 16)
    torch.testing.assert_close(attn(x), reference_attention(attn, x, size), atol=1e-5, rtol=1e-5)


def test_modes_differ():
    """A bias that matters changes the output, and pre- and post-softmax are different computations."""
    torch.manual_seed(0)
    outs = {}
    for mode in ("pre", "post", "none"):
        torch.manual_seed(0)
        attn = RelativeAttention(16, 16, 8, (3, 3), mode)
        if attn.rel_bias is not None:
            with torch.no_grad():
                attn.rel_bias.table.copy_(torch.linspace(-2, 2, attn.rel_bias.table.numel()).view_as(attn.rel_bias.table))
        outs[mode] = attn(torch.ones(1, 9, 16).cumsum(1) / 9)
    assert not torch.allclose(outs["pre"], outs["none"])
    assert not torch.allclose(outs["pre"], outs["post"])


def test_bias_depends_only_on_relative_offset():
    height, width = 3, 5
    rpb = RelativePositionBias(num_heads=2, size=(height, width))
    torch.nn.init.normal_(rpb.table)
    bias = rpb()
    assert bias.shape == (2, height * width, height * width)
    assert rpb.table.shape == (2, 2 * height - 1, 2 * width - 1)
    by_offset = {}
    positions = list(itertools.product(range(height), range(width)))
    for i, (yi, xi) in enumerate(positions):
        for j, (yj, xj) in enumerate(positions):
            offset = (yi - yj, xi - xj)
            if offset in by_offset:
                torch.testing.assert_close(bias[:, i, j], by_offset[offset])
            by_offset[offset] = bias[:, i, j]
    # every entry of the table is used by exactly one offset
    assert len(by_offset) == (2 * height - 1) * (2 * width - 1)
    assert torch.equal(bias[:, 0, 0], rpb.table[:, height - 1, width - 1])


def test_gradients_reach_the_bias_table():
    torch.manual_seed(0)
    attn = RelativeAttention(16, 16, 8, (4, 4), "pre")
    attn(torch.randn(2, 16, 16)).square().sum().backward()
    grad = attn.rel_bias.table.grad
    assert grad is not None and grad.abs().min() > 0  # every offset occurs, so every entry gets gradient


def test_bias_table_interpolated_on_resolution_change():
    small = RelativePositionBias(num_heads=3, size=(4, 4))
    height, width = small.table.shape[1:]
    ys = torch.linspace(-1, 1, height)[:, None]
    xs = torch.linspace(-1, 1, width)[None, :]
    with torch.no_grad():
        small.table.copy_((2 * ys + xs).expand(3, -1, -1))  # linear in the offset: bilinear keeps it exact
    large = RelativePositionBias(num_heads=3, size=(8, 6))
    large.load_state_dict(small.state_dict())
    expected = 2 * torch.linspace(-1, 1, 15)[:, None] + torch.linspace(-1, 1, 11)[None, :]
    torch.testing.assert_close(large.table[1], expected)
    assert large().shape == (3, 48, 48)


def test_checkpoint_loads_at_another_resolution():
    """The interface promise: a 224 state dict loads into a 384 model, tables interpolated, outputs finite."""
    torch.manual_seed(0)
    small = create_model("cctt_tiny")
    large = create_model("cctt_tiny", image_size=64)
    result = large.load_state_dict(small.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    key = next(k for k in small.state_dict() if k.endswith("rel_bias.table"))
    assert small.state_dict()[key].shape != large.state_dict()[key].shape
    centre = lambda t: t[:, t.shape[1] // 2, t.shape[2] // 2]  # noqa: E731 - the zero offset
    torch.testing.assert_close(centre(large.state_dict()[key]), centre(small.state_dict()[key]))
    large.eval()
    assert torch.isfinite(large(torch.randn(1, 3, 64, 64))).all()


def test_sdpa_mask_path_equals_explicit_softmax():
    """The float-mask SDPA call we rely on adds the mask before the softmax (guards against API drift)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    mask = torch.randn(1, 2, 5, 5)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 2 + mask, -1) @ v
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), expected)


def test_interface_coatnet_0_from_224_to_384():
    """The exact call the issue promises: every S3/S4 table grows from (27, 27)/(13, 13) to (47, 47)/(23, 23)."""
    big = create_model("coatnet_0", image_size=384)
    result = big.load_state_dict(create_model("coatnet_0").state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert big.stages[2][0].attn.rel_bias.table.shape == (12, 47, 47)
    assert big.stages[3][0].attn.rel_bias.table.shape == (24, 23, 23)


# --- W (window), G (grid) and L (linear attention) against loops over token positions -------------------------
def attention_groups(height: int, width: int, kind: str, size: int) -> list[list[tuple[int, int]]]:
    """The token positions that attend to each other, enumerated one by one (row-major inside a group)."""
    if kind == "window":  # size x size tiles
        return [[(wy * size + a, wx * size + b) for a in range(size) for b in range(size)]
                for wy in range(height // size) for wx in range(width // size)]
    step_y, step_x = height // size, width // size  # grid: a size x size lattice with step (H/size, W/size)
    return [[(i * step_y + a, j * step_x + b) for i in range(size) for j in range(size)]
            for a in range(step_y) for b in range(step_x)]


@pytest.mark.parametrize("letter,kind", [("W", "window"), ("G", "grid")])
@pytest.mark.parametrize("rel_pos", ["pre", "none"])
def test_window_and_grid_attention_match_reference(letter, kind, rel_pos):
    torch.manual_seed(0)
    height, width, size = 4, 6, 2
    cfg = StagedNetConfig(head_dim=8).replace(**{kind: size, "rel_pos": rel_pos})
    block = BLOCKS[letter](16, 16, stride=1, size=(height, width), drop_path=0.0, cfg=cfg)
    if block.attn.rel_bias is not None:
        torch.nn.init.normal_(block.attn.rel_bias.table, std=1.0)
        assert block.attn.rel_bias.table.shape == (2, 2 * size - 1, 2 * size - 1)  # the bias lives in the group
    y = torch.randn(2, height, width, 16)
    expected = torch.zeros(2, height, width, 16)
    groups = attention_groups(height, width, kind, size)
    assert sorted(p for g in groups for p in g) == [(r, c) for r in range(height) for c in range(width)]
    for group in groups:
        mixed = reference_attention(block.attn, torch.stack([y[:, r, c] for r, c in group], 1), (size, size))
        for n, (r, c) in enumerate(group):
            expected[:, r, c] = mixed[:, n]
    torch.testing.assert_close(block.mix(y), expected, atol=1e-5, rtol=1e-5)


def test_grid_attention_mixes_distant_tokens_and_window_does_not():
    """Changing one corner token moves the opposite corner under G (same lattice group) but not under W."""
    torch.manual_seed(0)
    cfg = StagedNetConfig(head_dim=8).replace(window=2, grid=2)
    y = torch.randn(1, 4, 4, 16)
    moved = y.clone()
    moved[0, 0, 0] += 1.0
    for letter, changes in (("W", False), ("G", True)):
        block = BLOCKS[letter](16, 16, stride=1, size=(4, 4), drop_path=0.0, cfg=cfg)
        assert (not torch.allclose(block.mix(y)[0, 2, 2], block.mix(moved)[0, 2, 2])) == changes, letter


def test_linear_attention_matches_reference():
    """Katharopoulos et al. Eq. 5: y_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j), summed in loops."""
    torch.manual_seed(0)
    attn = LinearAttention(dim_in=12, dim_out=16, head_dim=8)
    x = torch.randn(2, 5, 12)
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(16, dim=-1)
    phi = lambda t: F.elu(t) + 1  # noqa: E731
    out = torch.zeros(2, 5, 16)
    for b in range(2):
        for h in range(2):
            cols = slice(8 * h, 8 * h + 8)
            for i in range(5):
                num, den = torch.zeros(8), torch.zeros(())
                for j in range(5):
                    sim = phi(q[b, i, cols]) @ phi(k[b, j, cols])
                    num, den = num + sim * v[b, j, cols], den + sim
                out[b, i, cols] = num / (den + attn.eps)
    torch.testing.assert_close(attn(x), out @ attn.proj.weight.T + attn.proj.bias, atol=1e-5, rtol=1e-5)


def test_new_letters_mix_in_any_layout_and_count_attention_macs():
    from lightning_modules.backbones.profile import attention_macs, macs_by_op

    shares = {}
    for layout in ("C-C-W-T", "C-C-WG-WG", "C-L-G-W", "C-C-T-T", "C-C-C-C"):
        segments = len(layout.replace("-", ""))
        args = dict(depths=(1,) * segments, dims=(16, 32, 64, 64, 64, 64)[:segments], stem_dim=16, head_dim=16,
                    stem_stride=1, strides=(1, 2, 2, 2), image_size=16, num_classes=3, window=2, grid=2)
        model = create_model(layout, **args).eval()
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
        with torch.device("meta"):
            shares[layout] = attention_macs(macs_by_op(create_model(layout, **args)))
    assert shares["C-C-C-C"] == 0 and min(v for k, v in shares.items() if k != "C-C-C-C") > 0
    # at S3 (4x4 tokens) 2x2 windows compare 4 tokens instead of 16: W's attention products are a quarter of T's
    assert shares["C-C-W-T"] < shares["C-C-T-T"]


@pytest.mark.parametrize("layout,option,message", [
    ("C-C-W-W", dict(window=3), r"stage S3 \(W\) of layout 'C-C-W-W': window 3 does not divide the 4x4 feature map"),
    ("C-C-G-G", dict(grid=3), r"stage S3 \(G\) of layout 'C-C-G-G': grid 3 does not divide the 4x4 feature map"),
    ("C-C-T-T", dict(widow=3), r"unknown option\(s\) widow; valid: layout"),
])
def test_window_or_grid_that_does_not_divide_is_one_line(layout, option, message):
    with pytest.raises(ValueError, match=message) as err:
        create_model(layout, image_size=64, **option)
    assert "\n" not in str(err.value)
@pytest.mark.parametrize("size", [(7, 7), (14, 14), (4, 4), (3, 5)])
def test_bias_handed_to_attention_kernels_has_aligned_rows(size):
    """Memory-efficient SDPA kernels need mask rows on 16-element boundaries; an unaligned (49 x 49) bias of
    CoAtNet-0's last stage failed to compile on an H200. The bias is an aligned view, equal to the plain gather."""
    bias_module = RelativePositionBias(3, size)
    torch.nn.init.normal_(bias_module.table)
    bias = bias_module(torch.bfloat16)
    tokens = size[0] * size[1]
    assert bias.shape == (3, tokens, tokens) and bias.dtype == torch.bfloat16
    assert bias.stride(-1) == 1 and bias.stride(-2) % 16 == 0
    plain = bias_module.table.flatten(1)[:, relative_index(*size)].to(torch.bfloat16)
    assert torch.equal(bias, plain)
