"""Rotary position embeddings (RoPE, Su et al. 2021, arXiv 2104.09864), rotate-half layout.

RoPE has no learned parameters: the cos/sin tables are a pure function of the head size, the base
and the maximum length, so a model's context can grow without touching any weight.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rope_tables(
    head_dim: int, max_len: int, base: float = 10000.0, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """The ``cos`` and ``sin`` tables, each ``[max_len, head_dim]`` in float32.

    Frequencies ``theta_i = base^(-2i / head_dim)`` for ``i < head_dim / 2``, repeated for the two
    halves that :func:`apply_rope` rotates against each other.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head size, got head_dim={head_dim}")
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim
    )
    pos = torch.arange(max_len, dtype=torch.float64, device=device)  # [T]
    angles = torch.outer(pos, inv_freq)  # [T, hd/2]
    angles = torch.cat((angles, angles), dim=-1)  # [T, hd]
    return angles.cos().float(), angles.sin().float()


def _rotate_half(x: Tensor) -> Tensor:  # [..., hd] -> [..., hd]
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (``[B, H, T, hd]``) by position; ``cos``/``sin`` are ``[T, hd]``."""
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin  # [B, H, T, hd]


class RotaryEmbedding(nn.Module):
    """Holds the RoPE tables for up to ``max_len`` positions as non-persistent buffers.

    The buffers are not saved in the state dict: they are rebuilt from the config, which is what
    lets :func:`trainables.models.growth.grow_context` extend the context without changing weights.
    """

    cos: Tensor
    sin: Tensor

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.max_len = max_len
        cos, sin = rope_tables(head_dim, max_len, base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def resize(self, max_len: int) -> None:
        """Rebuild the tables for ``max_len`` positions (on the buffers' current device)."""
        cos, sin = rope_tables(self.head_dim, max_len, self.base, device=self.cos.device)
        self.cos, self.sin = cos, sin
        self.max_len = max_len

    def forward(self, seq_len: int) -> tuple[Tensor, Tensor]:
        """The ``[seq_len, head_dim]`` cos and sin tables for the first ``seq_len`` positions."""
        return self.cos[:seq_len], self.sin[:seq_len]

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_len={self.max_len}, base={self.base:g}"
