"""Blocks of the bit-level language model: chunked attention, FFN, pre-norm block, reversible stack.

Every projection is a plain bias-free ``nn.Linear`` so the quantization swap pass
(``trainables.quant.prepare``) replaces each of them with the chosen scheme's layer.

A :class:`BitBlock` holds two residual branches, ``F`` (RMSNorm + attention) and ``G`` (RMSNorm +
FFN). The standard block computes ``h + F(h)`` then ``+ G(.)``; the reversible stack couples two
streams with the same branches (RevNet, Gomez et al. 2017, "The Reversible Residual Network"):
``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``, inverted as ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bit_lm_config import BitLMConfig


class BitAttention(nn.Module):
    """Multi-head self-attention, causal or not, optionally in query chunks.

    Without ``attn_chunk`` (and without logging) it is one ``scaled_dot_product_attention`` call.
    With ``attn_chunk = c`` the queries are processed ``c`` at a time: each chunk builds scores
    ``[B, H, c, T_k]`` only (causal chunks stop at their last query), so the ``T x T`` map is never
    allocated. With ``full_attn_logging`` the probabilities of every chunk are stitched into the
    full ``[B, H, T, T]`` map, kept in ``last_probs`` for telemetry.
    """

    def __init__(self, cfg: BitLMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        self.causal = cfg.causal
        self.chunk = cfg.attn_chunk
        self.log_full = cfg.full_attn_logging
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.last_probs: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        b, t, _ = x.shape
        shape = (b, t, self.n_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(shape).transpose(1, 2)  # [B, H, T, hd]
        v = self.v_proj(x).view(shape).transpose(1, 2)  # [B, H, T, hd]
        p = self.dropout if self.training else 0.0
        if self.chunk is None and not self.log_full:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        else:
            y = self._chunked(q, k, v, p)  # [B, H, T, hd]
        y = y.transpose(1, 2).reshape(b, t, -1)  # [B, T, D]
        return self.o_proj(y)

    def _chunked(self, q: Tensor, k: Tensor, v: Tensor, p: float) -> Tensor:
        """Attention over query chunks; builds ``[B, H, c, T_k]`` scores per chunk only."""
        t = q.shape[2]
        c = self.chunk or t
        scale = 1.0 / math.sqrt(self.head_dim)
        outputs: list[Tensor] = []
        full = q.new_zeros(q.shape[0], q.shape[1], t, t) if self.log_full else None  # [B,H,T,T]
        for start in range(0, t, c):
            end = min(start + c, t)
            keys = end if self.causal else t  # a causal chunk sees keys up to its last query
            scores = q[:, :, start:end] @ k[:, :, :keys].transpose(-1, -2) * scale  # [B,H,c,Tk]
            if self.causal:
                qi = torch.arange(start, end, device=q.device)[:, None]  # [c, 1]
                kj = torch.arange(keys, device=q.device)[None, :]  # [1, Tk]
                scores = scores.masked_fill(kj > qi, float("-inf"))
            wide = torch.promote_types(scores.dtype, torch.float32)  # half inputs: fp32 softmax
            probs = torch.softmax(scores, dim=-1, dtype=wide).to(q.dtype)  # [B, H, c, Tk]
            if full is not None:
                full[:, :, start:end, :keys] = probs.detach()
            if p > 0:
                probs = F.dropout(probs, p=p)
            outputs.append(probs @ v[:, :, :keys])  # [B, H, c, hd]
        self.last_probs = full
        return torch.cat(outputs, dim=2)  # [B, H, T, hd]


class BitFeedForward(nn.Module):
    """Squared-ReLU FFN ``down(relu(up x)^2)`` (an elementwise activation, so Net2Net-growable)."""

    def __init__(self, cfg: BitLMConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, T, D]`` -> ``[B, T, D]``."""
        return self.down_proj(F.relu(self.up_proj(x)).square())


class BitBlock(nn.Module):
    """A pre-norm block with branches ``F = attn(norm(.))`` and ``G = ffn(norm(.))``."""

    def __init__(self, cfg: BitLMConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = BitAttention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = BitFeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def f(self, x: Tensor) -> Tensor:
        """The attention branch ``F(x)``, ``[B, T, D]`` -> ``[B, T, D]``."""
        return self.drop(self.attn(self.attn_norm(x)))

    def g(self, x: Tensor) -> Tensor:
        """The FFN branch ``G(x)``, ``[B, T, D]`` -> ``[B, T, D]``."""
        return self.drop(self.ffn(self.ffn_norm(x)))

    def forward(self, h: Tensor) -> Tensor:
        """Standard residual block: ``h + F(h)`` then ``+ G(.)``; ``[B, T, D]`` -> ``[B, T, D]``."""
        h = h + self.f(h)
        return h + self.g(h)

    def couple(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """RevNet coupling (Gomez et al. 2017): ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``."""
        y1 = x1 + self.f(x2)
        return y1, x2 + self.g(y1)

    def branch_outputs(self) -> list[nn.Module]:
        """The last module of each branch (zeroed in a new identity block by depth growth)."""
        return [self.attn.o_proj, self.ffn.down_proj]


class _RngState:
    """The RNG states a branch consumed (dropout, stochastic quantizers), to replay in backward."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class _Autocast:
    """The autocast state of the forward, re-entered for the backward's recomputation (autocast
    is off while backward runs, so without it a bf16 forward would be rebuilt in fp32)."""

    def __init__(self, device: torch.device) -> None:
        self.device_type = device.type
        self.enabled = torch.is_autocast_enabled(device.type)
        self.dtype = torch.get_autocast_dtype(device.type)

    def __call__(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


class _ReversibleStack(torch.autograd.Function):
    """Runs coupled blocks without storing activations; backward reconstructs them.

    Forward keeps only the last pair ``(y1, y2)``. Backward walks the blocks in reverse: from
    ``(y1, y2)`` it recomputes ``G(y1)`` with autograd on, gets ``x2 = y2 - G(y1)``, recomputes
    ``F(x2)``, gets ``x1 = y1 - F(x2)``, and chains the gradients (Gomez et al. 2017, Alg. 1):
    ``dx1 = dy1 + (dG/dy1)^T dy2``, ``dx2 = dy2 + (dF/dx2)^T dx1``. Parameter gradients are
    returned as the gradients of the parameter inputs, so DDP hooks and grad clipping see them.
    Only one block's branch activations are alive at a time.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x1: Tensor, x2: Tensor, blocks: list[BitBlock], n_params: int, *params: Tensor
    ) -> tuple[Tensor, Tensor]:
        states: list[tuple[_RngState, _RngState]] = []
        with torch.no_grad():
            for block in blocks:
                rng_f = _RngState(x1.device)
                y1 = x1 + block.f(x2)
                rng_g = _RngState(x1.device)
                x2 = x2 + block.g(y1)
                x1 = y1
                states.append((rng_f, rng_g))
        ctx.blocks = blocks
        ctx.states = states
        ctx.autocast = _Autocast(x1.device)
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx: Any, dy1: Tensor, dy2: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        y1, y2 = ctx.saved_tensors
        grads: list[Tensor | None] = []
        for block, (rng_f, rng_g) in zip(reversed(ctx.blocks), reversed(ctx.states), strict=True):
            f_params = [p for p in _branch_params(block, "f") if p.requires_grad]
            g_params = [p for p in _branch_params(block, "g") if p.requires_grad]
            with torch.random.fork_rng(devices=[y1.device] if y1.is_cuda else []):
                rng_g.restore()
                with torch.enable_grad(), ctx.autocast():
                    y1_ = y1.detach().requires_grad_(True)
                    gy1 = block.g(y1_)
                dg = torch.autograd.grad(gy1, [y1_, *g_params], dy2, allow_unused=True)
                with torch.no_grad():
                    x2 = y2 - gy1
                    dx1 = dy1 + dg[0]
                rng_f.restore()
                with torch.enable_grad(), ctx.autocast():
                    x2_ = x2.detach().requires_grad_(True)
                    fx2 = block.f(x2_)
                df = torch.autograd.grad(fx2, [x2_, *f_params], dx1, allow_unused=True)
                with torch.no_grad():
                    x1 = y1 - fx2
                    dx2 = dy2 + df[0]
            block_grads = dict(zip(map(id, g_params), dg[1:], strict=True))
            block_grads.update(zip(map(id, f_params), df[1:], strict=True))
            grads.append(block_grads)  # type: ignore[arg-type]
            y1, y2, dy1, dy2 = x1.detach(), x2.detach(), dx1, dx2
        by_id: dict[int, Tensor | None] = {}
        for block_grads in grads:
            for key, value in block_grads.items():  # type: ignore[attr-defined]
                if value is not None:
                    by_id[key] = by_id[key] + value if by_id.get(key) is not None else value
        params = _stack_params(ctx.blocks)
        return (dy1, dy2, None, None, *(by_id.get(id(p)) for p in params))


def _branch_params(block: BitBlock, branch: str) -> list[Tensor]:
    modules = (block.attn_norm, block.attn) if branch == "f" else (block.ffn_norm, block.ffn)
    return [p for m in modules for p in m.parameters()]


def _stack_params(blocks: list[BitBlock]) -> list[Tensor]:
    seen: set[int] = set()
    out: list[Tensor] = []
    for block in blocks:
        for p in block.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def reversible_stack(blocks: list[BitBlock], x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the coupled ``blocks`` to the streams ``(x1, x2)`` ``[B, T, D]`` each.

    With autograd recording, activation memory is that of one block (Gomez et al. 2017); without
    it (evaluation) this is the plain coupling loop.
    """
    if not torch.is_grad_enabled():
        for block in blocks:
            x1, x2 = block.couple(x1, x2)
        return x1, x2
    params = _stack_params(blocks)
    out = _ReversibleStack.apply(x1, x2, blocks, len(params), *params)
    return out[0], out[1]
