"""Transformer blocks of the byte-level language model: attention, FFN, pre-norm residual block.

Every projection is a plain bias-free ``nn.Linear`` so that the quantization swap pass
(``trainables.quant.prepare``) can replace each of them with the chosen scheme's layer.
"""

from __future__ import annotations

import torch
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

    def forward_queries(
        self, x: Tensor, pos: Tensor, valid: Tensor, cos: Tensor, sin: Tensor
    ) -> Tensor:
        """The branch output at the query positions ``pos`` only; keys/values from all of ``x``.

        ``x``: ``[B, T, D]`` (normed hidden states of every position: they all serve as keys and
        values), ``pos``: ``[B, M]`` query positions per row, ``valid``: ``[B, M]`` which of them
        are real (rows have different counts; the padding is dropped), ``cos``/``sin``:
        ``[T, hd]``. Returns ``[N, D]`` for the ``N = valid.sum()`` queries, in ``valid`` order.
        The query projection, the attention of the queries, the output projection and the norms
        run on the ``N`` queries only.
        """
        b, t, _ = x.shape
        m = pos.shape[1]
        inner = self.n_heads * self.head_dim
        k = self.k_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        v = self.v_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = apply_rope(k, cos, sin)
        rows = torch.arange(b, device=x.device)[:, None].expand(b, m)  # [B, M]
        q_flat = self.q_proj(x[rows[valid], pos[valid]])  # [N, inner]
        q = q_flat.new_zeros(b, m, inner)
        q[valid] = q_flat
        q = q.view(b, m, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, M, hd]
        q = apply_rope(q, cos[pos].unsqueeze(1), sin[pos].unsqueeze(1))  # tables [B, 1, M, hd]
        # causal by original position: query at position pos may see keys 0..pos
        mask = torch.arange(t, device=x.device)[None, None, :] <= pos[:, :, None]  # [B, M, T]
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], dropout_p=p)
        y = y.transpose(1, 2).reshape(b, m, inner)[valid]  # [N, inner]
        if self.sub_norm is not None:
            y = self.sub_norm(y)
        y = self.o_proj(y)  # [N, D]
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

    def forward(
        self,
        h: Tensor,
        cos: Tensor,
        sin: Tensor,
        pos: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        """``h``: ``[B, T, D]`` -> ``[B, T, D]``; with ``pos``/``valid`` see :meth:`forward_tokens`.

        The token subset goes through ``forward`` (not a separate method call) so that wrappers
        hooked on it, such as FSDP2's parameter gathering, also run for early-exit inference.
        """
        if pos is not None and valid is not None:
            return self.forward_tokens(h, pos, valid, cos, sin)
        h = h + self.drop(self.attn(self.attn_norm(h), cos, sin))
        return h + self.drop(self.ffn(self.ffn_norm(h)))

    def forward_tokens(
        self, h: Tensor, pos: Tensor, valid: Tensor, cos: Tensor, sin: Tensor
    ) -> Tensor:
        """Run the block for the positions ``pos`` (``valid``) only; the others keep ``h``.

        Used by per-token early-exit inference: an exited token's hidden state is frozen, but it
        still serves as key and value to the later tokens, so every position's attention norm
        and key/value projections run; the query, attention, output projection and FFN run only
        for the ``N`` active tokens (see :meth:`Attention.forward_queries`). ``h``: ``[B, T, D]``,
        ``pos``/``valid``: ``[B, M]`` -> a new ``[B, T, D]``.
        """
        b, m = pos.shape
        rows = torch.arange(b, device=h.device)[:, None].expand(b, m)[valid]  # [N]
        cols = pos[valid]  # [N]
        y = self.attn.forward_queries(self.attn_norm(h), pos, valid, cos, sin)  # [N, D]
        r = h[rows, cols] + self.drop(y)  # [N, D]
        r = r + self.drop(self.ffn(self.ffn_norm(r)))  # the FFN on the active tokens only
        out = h.clone()
        out[rows, cols] = r
        return out

    def branch_outputs(self) -> list[nn.Module]:
        """The last module of each residual branch (what starts at zero in a new grown block)."""
        attn_last: nn.Module = (
            self.attn.post_norm if self.attn.post_norm is not None else (self.attn.o_proj)
        )
        return [attn_last, self.ffn.down_proj]
