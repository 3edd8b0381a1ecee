"""2-D relative self-attention (CoAtNet, Section 2.1) on top of ``F.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

REL_POS_MODES = ("pre", "post", "none")


def relative_index(height: int, width: int) -> torch.Tensor:
    """``index[i, j]`` is the flat position of the offset ``(yi - yj, xi - xj)`` in a (2H-1) x (2W-1) table."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    coords = torch.stack((ys.flatten(), xs.flatten()))  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    return (rel[0] + height - 1) * (2 * width - 1) + (rel[1] + width - 1)


# Memory-efficient SDPA kernels read a float mask whose rows start on 16-element boundaries; a (N, N) bias with N
# not a multiple of 16 (196 and 49 tokens in CoAtNet-0 at 224) failed to compile on an H200 ("(*bias): last
# dimension must be contiguous"). The bias is therefore gathered into rows padded to a multiple of 16 and sliced.
MASK_ALIGN = 16


class RelativePositionBias(nn.Module):
    """One learned scalar per head and relative offset, gathered into a dense (heads, N, N) bias (a view of an
    aligned (heads, N, N rounded up to 16) tensor, so attention kernels can read it in place).

    Loading a state dict saved at another resolution resizes the table bilinearly (the paper fine-tunes at
    384/512 this way), so ``create_model(name, image_size=384).load_state_dict(sd_at_224)`` just works.
    """

    def __init__(self, num_heads: int, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)
        height, width = self.size
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * height - 1, 2 * width - 1))
        nn.init.trunc_normal_(self.table, std=0.02)
        index = relative_index(height, width)
        tokens = index.shape[1]
        pad = -tokens % MASK_ALIGN  # padded columns read offset (0, 0) and are sliced off
        zero = (height - 1) * (2 * width - 1) + (width - 1)
        self.register_buffer("index", F.pad(index, (0, pad), value=zero), persistent=False)
        self.tokens = tokens
        self._register_load_state_dict_pre_hook(self._resize_loaded_table)

    def forward(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The bias in ``dtype``, cast before the gather: casting the sliced view would copy it unaligned."""
        return self.table.to(dtype or self.table.dtype).flatten(1)[:, self.index][..., : self.tokens]

    def _resize_loaded_table(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "table"
        loaded = state_dict.get(key)
        if loaded is not None and loaded.shape[1:] != self.table.shape[1:] and loaded.shape[0] == self.table.shape[0]:
            resized = F.interpolate(
                loaded[None].float(), size=self.table.shape[1:], mode="bilinear", align_corners=True
            )
            state_dict[key] = resized[0].to(loaded.dtype)

    def extra_repr(self) -> str:
        return f"heads={self.table.shape[0]}, size={self.size}"


class RelativeAttention(nn.Module):
    """Multi-head self-attention over a (B, N, C) token grid with a per-head 2-D relative bias.

    ``rel_pos="pre"`` adds the bias to the logits (the paper's choice) and hands it to SDPA as its float mask;
    ``"post"`` adds it to the softmax output, ``softmax(qk) @ v + bias @ v``; ``"none"`` has no bias at all.
    The input width may differ from the output width (the first block of a stage widens).
    """

    def __init__(self, dim_in: int, dim_out: int, head_dim: int, size: tuple[int, int], rel_pos: str = "pre"):
        super().__init__()
        if rel_pos not in REL_POS_MODES:
            raise ValueError(f"rel_pos={rel_pos!r} is not valid; choose one of {REL_POS_MODES}")
        if dim_out % head_dim:
            raise ValueError(f"attention width {dim_out} is not a multiple of head_dim={head_dim}")
        self.num_heads = dim_out // head_dim
        self.head_dim = head_dim
        self.rel_pos = rel_pos
        self.qkv = nn.Linear(dim_in, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)
        self.rel_bias = RelativePositionBias(self.num_heads, size) if rel_pos != "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        if self.rel_bias is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            bias = self.rel_bias(q.dtype).unsqueeze(0)  # (1, heads, N, N)
            if self.rel_pos == "pre":
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            else:
                out = F.scaled_dot_product_attention(q, k, v) + bias @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))
