"""timm's CoAtNet in and out: ``from_timm`` gives the same logits in float64, and the weights go back."""

import pytest
import torch
from torch import nn

from lightning_modules.backbones import create_model, from_timm, to_timm_state_dict

timm = pytest.importorskip("timm")


def randomised_timm(size: tuple[int, int]) -> nn.Module:
    """A randomly initialised coatnet_0_224 whose norms and BatchNorm statistics are random too (timm initialises
    them to 1 / 0, which would hide a swapped weight and bias or running mean and variance)."""
    torch.manual_seed(0)
    model = timm.create_model("coatnet_0_224", img_size=size, num_classes=7).double().eval()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(value.abs() + 0.5 if name.endswith("running_var") else value + 0.1 * torch.randn_like(value))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("size", [(224, 224), (96, 64)])
def test_from_timm_gives_timms_logits_in_float64(size):
    theirs = randomised_timm(size)
    ours = from_timm(theirs).eval()
    assert ours.cfg.image_size == size and ours.cfg.layout == "C-C-T-T" and ours.cfg.style == "timm"
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() < 1e-6


def test_the_weights_go_back_to_timm():
    theirs = randomised_timm((64, 96))
    back = timm.create_model("coatnet_0_224", img_size=(64, 96), num_classes=7).double().eval()
    back.load_state_dict(to_timm_state_dict(from_timm(theirs)))  # strict: every key, every shape
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        assert (back(x) - theirs(x)).abs().max() < 1e-6


def test_the_paper_stays_the_default_and_timm_style_is_timms_parameter_count():
    """The five details against the independent check's parameter differences: stem +64 (conv bias), S1 -6,152 and
    S2 -36,888 (SE width), head -590,592 (pre-logits)."""
    paper = create_model("coatnet_0", downsample="dw", num_classes=1000)
    timm_style = create_model("coatnet_0", downsample="dw", style="timm", pre_logits=True, num_classes=1000)
    assert paper.cfg.style == "paper" and isinstance(paper.stages[0][0].shortcut.pool, nn.MaxPool2d)
    assert isinstance(timm_style.stages[0][0].shortcut.pool, nn.AvgPool2d)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(paper.stem) - count(timm_style.stem) == 64
    assert count(paper.stages[0]) - count(timm_style.stages[0]) == -6152
    assert count(paper.stages[1]) - count(timm_style.stages[1]) == -36888
    assert count(paper.head) - count(timm_style.head) == -590592
    reference = timm.create_model("coatnet_0_224")
    assert count(timm_style) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("name", ["maxvit_nano_rw_256", "coatnet_nano_rw_224"])
def test_from_timm_refuses_other_families(name):
    with pytest.raises(ValueError, match="from_timm converts timm's paper-style CoAtNets"):
        from_timm(timm.create_model(name))
