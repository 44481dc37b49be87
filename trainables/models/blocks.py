"""Transformer blocks of the byte-level language model: attention, FFN, pre-norm residual block.

Every projection is a plain bias-free ``nn.Linear`` so that the quantization swap pass
(``trainables.quant.prepare``) can replace each of them with the chosen scheme's layer.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .lm_config import ByteLMConfig
from .rope import apply_rope


def _norm(size: int, cfg: ByteLMConfig) -> nn.RMSNorm:
    return nn.RMSNorm(size, eps=cfg.norm_eps)


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE through ``scaled_dot_product_attention``.

    With ``cfg.subln`` an RMSNorm (``sub_norm``) precedes the output projection (BitNet b1.58
    2B4T, arXiv 2504.12285); with ``cfg.rmsnorm_post_attn`` an RMSNorm (``post_norm``) follows it
    (seed 003).
    """

    def __init__(self, cfg: ByteLMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        inner = cfg.n_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.sub_norm = _norm(inner, cfg) if cfg.subln else None
        self.o_proj = nn.Linear(inner, cfg.d_model, bias=False)
        self.post_norm = _norm(cfg.d_model, cfg) if cfg.rmsnorm_post_attn else None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """``x``: ``[B, T, D]``, ``cos``/``sin``: ``[T, hd]`` -> the branch output ``[B, T, D]``."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        v = self.v_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # [B, H, T, hd]
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # [B, T, H*hd]
        if self.sub_norm is not None:
            y = self.sub_norm(y)
        y = self.o_proj(y)  # [B, T, D]
        if self.post_norm is not None:
            y = self.post_norm(y)
        return y


class FeedForward(nn.Module):
    """The FFN: squared ReLU, gated squared ReLU (BitNet b1.58 2B4T) or SwiGLU.

    ``sqrelu``: ``down(relu(up x)^2)``; ``gated_sqrelu``: ``down(relu(gate x)^2 * up x)``;
    ``swiglu``: ``down(silu(gate x) * up x)``. With ``cfg.subln`` an RMSNorm (``sub_norm``) is
    applied to the hidden activations before ``down_proj`` (arXiv 2504.12285).
    """

    def __init__(self, cfg: ByteLMConfig) -> None:
        super().__init__()
        hidden = cfg.ffn_hidden
        self.kind = cfg.ffn
        self.gate_proj = nn.Linear(cfg.d_model, hidden, bias=False) if cfg.ffn != "sqrelu" else None
        self.up_proj = nn.Linear(cfg.d_model, hidden, bias=False)
        self.sub_norm = _norm(hidden, cfg) if cfg.subln else None
        self.down_proj = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        up = self.up_proj(x)  # [B, T, F]
        if self.gate_proj is None:
            h = F.relu(up).square()
        elif self.kind == "gated_sqrelu":
            h = F.relu(self.gate_proj(x)).square() * up
        else:
            h = F.silu(self.gate_proj(x)) * up
        if self.sub_norm is not None:
            h = self.sub_norm(h)
        return self.down_proj(h)  # [B, T, D]


class Block(nn.Module):
    """Pre-norm residual block: ``h + attn(norm(h))`` then ``h + ffn(norm(h))``."""

    def __init__(self, cfg: ByteLMConfig) -> None:
        super().__init__()
        self.attn_norm = _norm(cfg.d_model, cfg)
        self.attn = Attention(cfg)
        self.ffn_norm = _norm(cfg.d_model, cfg)
        self.ffn = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """``h``: ``[B, T, D]`` -> ``[B, T, D]``."""
        h = h + self.drop(self.attn(self.attn_norm(h), cos, sin))
        return h + self.drop(self.ffn(self.ffn_norm(h)))

    def branch_outputs(self) -> list[nn.Module]:
        """The last module of each residual branch (what starts at zero in a new grown block)."""
        attn_last: nn.Module = (
            self.attn.post_norm if self.attn.post_norm is not None else (self.attn.o_proj)
        )
        return [attn_last, self.ffn.down_proj]
