"""The layout grammar: which block type each stage of a staged backbone uses.

A layout names stages S1, S2, ... after the stem S0. Stages are separated by dashes and each stage halves
the resolution (by default) in its first block: ``"C-C-T-T"`` is CoAtNet's order. Without dashes each letter
is a stage, so ``"CCTT"`` means the same. A stage may hold several segments, one letter each, that run at the
same resolution one after the other: ``"C-C-CT-T"`` puts MBConv blocks then Transformer blocks in S3, as
CoAtNet-6/7 do. Per-segment settings (``depths``, ``dims``) have one entry per letter.

``"VIT_REL"`` is the one named layout: a patch stem followed by a single Transformer stage at stride 1.
"""

from __future__ import annotations

from dataclasses import dataclass

VIT_REL = "VIT_REL"


@dataclass(frozen=True)
class Layout:
    """A parsed layout: ``stages[i]`` is the tuple of segment letters of stage S(i+1)."""

    stages: tuple[tuple[str, ...], ...]
    patch_stem: bool = False

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(letter for stage in self.stages for letter in stage)

    def __str__(self) -> str:
        if self.patch_stem:
            return VIT_REL
        return "-".join("".join(stage) for stage in self.stages)


def parse_layout(layout: str, valid_letters: dict[str, str]) -> Layout:
    """Parse ``layout``; ``valid_letters`` maps each registered letter to a description for error messages."""
    if not isinstance(layout, str) or not layout.strip():
        raise ValueError(f"layout must be a non-empty string such as 'C-C-T-T' or 'VIT_REL', got {layout!r}")
    text = layout.strip().upper()
    if text.replace("-", "_") == VIT_REL:
        return Layout(stages=(("T",),), patch_stem=True)

    tokens = text.split("-") if "-" in text else list(text)
    if any(not token for token in tokens):
        raise ValueError(f"layout {layout!r} has an empty stage; write stages like 'C-C-T-T' or 'CCTT'")
    for token in tokens:
        for letter in token:
            if letter not in valid_letters:
                valid = ", ".join(f"{k} ({v})" for k, v in valid_letters.items())
                raise ValueError(
                    f"unknown stage type {letter!r} in layout {layout!r}; valid stage types: {valid}, or the layout 'VIT_REL'"
                )
    return Layout(stages=tuple(tuple(token) for token in tokens))
