"""The fast paths compute the same function: torch.compile(fullgraph=True), bf16 autocast, channels_last."""

import pytest
import torch

from lightning_modules.backbones import create_model

TINY = dict(depths=(1, 1, 1, 1), dims=(16, 32, 32, 64), stem_dim=16, head_dim=16, image_size=32, num_classes=5)


@pytest.mark.parametrize("name,kwargs", [("C-C-T-T", TINY), ("VIT_REL", dict(depths=(2,), dims=(32,), stem_stride=8,
                                                                                    head_dim=16, image_size=32))])
@pytest.mark.slow
def test_compiles_without_graph_breaks_forward_and_backward(name, kwargs):
    """fullgraph=True raises on any graph break; aot_eager traces the backward too without a C++ toolchain."""
    torch.compiler.reset()
    torch.manual_seed(0)
    model = create_model(name, drop_path=0.1, **kwargs)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
def test_inductor_compile_matches_eager():
    torch.compiler.reset()
    model = create_model("C-T", depths=(1, 1), dims=(32, 32), stem_dim=16, image_size=16, num_classes=3).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), atol=1e-4, rtol=1e-4)


def test_bf16_autocast_runs_and_stays_close():
    torch.manual_seed(0)
    model = create_model("C-C-T-T", **TINY).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), model(x), atol=0.1, rtol=0.1)


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    model = create_model("C-T-T-T", **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5, rtol=1e-5)
