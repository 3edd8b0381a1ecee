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
        self.register_load_state_dict_pre_hook(RelativePositionBias._resize_loaded_table)  # called with the module

    def forward(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The bias in ``dtype``, cast before the gather: casting the sliced view would copy it unaligned."""
        return self.table.to(dtype or self.table.dtype).flatten(1)[:, self.index][..., : self.tokens]

    def _resize_loaded_table(self, state_dict, prefix, *args):
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


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window * window, C): non-overlapping ``window x window`` tiles."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_merge(x: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    channels = x.shape[-1]
    x = x.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def grid_partition(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/grid * W/grid, grid * grid, C): each group is a ``grid x grid`` lattice of tokens
    spread over the whole map with step (H/grid, W/grid), MaxViT's dilated "grid" attention."""
    batch, height, width, channels = x.shape
    x = x.view(batch, grid, height // grid, grid, width // grid, channels)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, grid * grid, channels)


def grid_merge(x: torch.Tensor, grid: int, height: int, width: int) -> torch.Tensor:
    channels = x.shape[-1]
    x = x.view(-1, height // grid, width // grid, grid, grid, channels)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(-1, height, width, channels)


class LinearAttention(nn.Module):
    """Kernelised linear attention of Katharopoulos et al., "Transformers are RNNs" (ICML 2020), Eq. 4-6:
    ``softmax(q k^T) v`` becomes ``phi(q) (phi(k)^T v) / (phi(q) sum_j phi(k_j))`` with ``phi = elu + 1``, so the
    cost is O(N d^2) instead of O(N^2 d). No relative bias: it needs the N x N matrix this avoids.
    Products go through ``torch.matmul`` so the FLOP counter books them as attention (``bmm``)."""

    eps = 1e-6

    def __init__(self, dim_in: int, dim_out: int, head_dim: int):
        super().__init__()
        if dim_out % head_dim:
            raise ValueError(f"attention width {dim_out} is not a multiple of head_dim={head_dim}")
        self.num_heads = dim_out // head_dim
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim_in, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        kv = torch.matmul(k.transpose(-1, -2), v)  # (B, heads, d, d): the sum over tokens, done once
        norm = torch.matmul(q, k.sum(-2, keepdim=True).transpose(-1, -2))  # (B, heads, N, 1)
        out = torch.matmul(q, kv) / (norm + self.eps)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))
