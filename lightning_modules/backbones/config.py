"""Configuration dataclasses: every model in the registry is one of these, so names map to plain data."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


def as_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``224 -> (224, 224)``; ``(160, 224)`` stays (height, width)."""
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {size!r}")
    return size  # type: ignore[return-value]


STYLES = ("paper", "timm")


@dataclass(frozen=True)
class StagedNetConfig:
    """A conv stem (S0) and stages whose block types come from ``layout`` (see ``layout.py``).

    ``depths`` and ``dims`` have one entry per segment letter; ``strides`` one per stage (default 2 each, the
    paper's halving). ``stem_stride`` is the first stem conv's stride, or the patch size of the ``VIT_REL`` stem.
    Settings that belong to one block type (``downsample`` of C, ``window`` of W, ...) are declared beside the
    block (``blocks.py``); ``replace(window=4)`` files them under ``block_options``.

    ``style="timm"`` switches the five details where timm's CoAtNet differs from the paper (2x2 average pooling in
    shortcuts and attention, SE width from the output and SiLU, no bias on the second stem conv, LayerNorm eps
    1e-6); ``pre_logits`` adds timm's ``Linear(d, d) + tanh`` before the classifier.
    """

    layout: str = "C-C-T-T"
    depths: tuple[int, ...] = (2, 3, 5, 2)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    stem_dim: int | None = 64  # None: the first stage's width
    stem_stride: int = 2
    strides: tuple[int, ...] | None = None
    head_dim: int = 32
    expand_ratio: int = 4
    drop_path: float = 0.0
    num_classes: int = 1000
    in_chans: int = 3
    image_size: tuple[int, int] = (224, 224)
    style: str = "paper"  # "paper" | "timm"
    pre_logits: bool = False
    block_options: tuple[tuple[str, Any], ...] = ()  # per-block-type settings, sorted (name, value) pairs

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"style={self.style!r} is not valid; choose one of {STYLES}")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.block_options)

    def replace(self, **overrides: Any) -> "StagedNetConfig":
        """Config fields are replaced; any other name is a block setting, merged into ``block_options``."""
        overrides = _normalise(overrides)
        names = {f.name for f in fields(self)}
        extra = {k: overrides.pop(k) for k in list(overrides) if k not in names}
        if "block_options" in overrides:
            extra = {**dict(overrides.pop("block_options")), **extra}
        if extra:
            overrides["block_options"] = tuple(sorted({**self.options, **{k: _frozen(v) for k, v in extra.items()}}.items()))
        return replace(self, **overrides)


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class ConvMixerConfig:
    """ConvMixer-``dim``/``depth`` (Trockman & Kolter): patch embedding, then depthwise/pointwise mixing blocks."""

    dim: int = 256
    depth: int = 8
    kernel_size: int = 5
    patch_size: int = 2
    activation: str = "gelu"  # "gelu" | "relu"
    num_classes: int = 10
    in_chans: int = 3
    image_size: tuple[int, int] = (32, 32)

    def replace(self, **overrides: Any) -> "ConvMixerConfig":
        return replace(self, **_normalise(overrides))


def _normalise(overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(overrides)
    if "image_size" in out:
        out["image_size"] = as_hw(out["image_size"])
    for key in ("depths", "dims", "strides"):
        if out.get(key) is not None:
            out[key] = tuple(int(v) for v in out[key])
    return out
