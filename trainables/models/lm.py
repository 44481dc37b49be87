"""Decoder-only byte-level transformer (vocabulary of 256 byte values) with optional early exit.

Architecture: token embedding, ``n_layers`` pre-norm blocks (RMSNorm, RoPE causal attention through
``scaled_dot_product_attention``, squared-ReLU / gated squared-ReLU / SwiGLU FFN, optional SubLN and
post-attention RMSNorm, no biases), a final RMSNorm and a full-precision output ``head``. Every
projection inside the blocks is a plain ``nn.Linear``: ``trainables.quant.prepare(model, scheme)``
swaps them for the scheme's layers and keeps ``head`` (the last ``nn.Linear``) in full precision.

Early exit (``config.early_exit``, seed 001): a gate after each block but the last. In training the
model runs every block and reports the routing loss (``aux_losses["route"]``) and the expected exit
layer (``metrics["route/expected_exit"]``). In evaluation (``model.eval()`` with
``exit_at_inference``) it exits **per sequence**: after block ``l`` the sequences whose gate fires
are finished (final norm + head on their hidden state) and removed from the batch, so the remaining
blocks run only on the sequences still active; when none is left the loop stops.

The training step: pass ``forward(..., step=n)`` or call :meth:`ByteLM.set_step` (the curricula of
the early-exit loss read it; without either the last step given is kept, starting at 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .blocks import Block
from .early_exit import (
    ExitGate,
    exit_curriculum_mask,
    exit_loss_weights,
    expected_exit,
    layer_dropout_rates,
    routing_loss,
)
from .lm_config import ByteLMConfig
from .outputs import ModelOutput
from .rope import RotaryEmbedding

LN2 = math.log(2.0)


def bits_per_byte(loss_nats: float | Tensor) -> float | Tensor:
    """Convert a mean cross-entropy per byte in nats to bits per byte (``loss / ln 2``)."""
    return loss_nats / LN2


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:  # [B, T, V], [B, T] -> []
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


class ByteLM(nn.Module):
    """The byte-level language model of :class:`ByteLMConfig`.

    Attributes:
        config: the architecture (replaced by the growth functions with the grown shape).
        exit_at_inference: with ``config.early_exit``, exit early in evaluation (default True);
            set False to evaluate every sequence through every block.
        last_exit_layers: after an early-exit inference, the exit layer of each sequence ``[B]``.
        layer_dropout_seed: seeds the layer-dropout decisions (with the step), so that every
            data-parallel rank skips the same blocks.
    """

    def __init__(self, config: ByteLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.rope = RotaryEmbedding(config.head_dim, config.seq_len, config.rope_base)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.exit_gates = (
            nn.ModuleList(self.new_gate() for _ in range(config.n_layers - 1))
            if config.early_exit
            else None
        )
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # last nn.Linear
        self.exit_at_inference = True
        self.step = 0
        self.layer_dropout_seed = 0
        self._forwards_this_step = 0
        self.last_exit_layers: Tensor | None = None
        self.reset_parameters()

    def new_gate(self) -> ExitGate:
        """A freshly initialized exit gate for this model's width."""
        return ExitGate(self.config.d_model, self.config.gate_hidden, self.config.exit_threshold)

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; branch output projections scaled by ``1/sqrt(2 L)``."""
        std = self.config.init_std
        nn.init.normal_(self.embed.weight, std=std)
        nn.init.normal_(self.head.weight, std=std)
        for block in self.blocks:
            self.init_block(block)

    def init_block(self, block: nn.Module) -> None:
        """Initialize one block's projections like :meth:`reset_parameters` does."""
        std = self.config.init_std
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                scale = name.endswith(("o_proj", "down_proj"))
                s = std / math.sqrt(2 * self.config.n_layers) if scale else std
                nn.init.normal_(module.weight, std=s)

    def set_step(self, step: int) -> None:
        """Set the training step (read by the exit-loss curricula and the layer-dropout draws)."""
        if int(step) != self.step:
            self._forwards_this_step = 0
        self.step = int(step)

    def _run_block(self, block: nn.Module, h: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, cos, sin, use_reentrant=False)  # type: ignore[return-value]
        return block(h, cos, sin)

    def exit_logits(self, h: Tensor) -> Tensor:
        """The shared exit: final norm and head, ``[B, T, D]`` -> ``[B, T, V]``."""
        return self.head(self.norm(h))

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, step: int | None = None
    ) -> ModelOutput:
        """Next-byte logits for ``idx`` ``[B, T]`` (int64 byte values); ``targets`` ``[B, T]``.

        ``targets[b, t]`` is the byte following ``idx[b, t]``. ``step`` updates the training step
        used by the early-exit curricula. Returns :class:`ModelOutput` with ``logits``
        ``[B, T, 256]``,
        ``task_loss`` (mean cross-entropy in nats of the logits returned), ``aux_losses``
        (``"route"`` with early exit, ``"exit"`` with the early-exit loss and targets, outside
        early-exit inference) and ``metrics``.
        """
        cfg = self.config
        if idx.dim() != 2:
            raise ValueError(f"idx must be [batch, time], got shape {tuple(idx.shape)}")
        if idx.shape[1] > cfg.seq_len:
            raise ValueError(
                f"sequence length {idx.shape[1]} exceeds ByteLMConfig.seq_len={cfg.seq_len}"
            )
        if step is not None:
            self.set_step(step)
        cos, sin = self.rope(idx.shape[1])  # [T, hd]
        h = self.drop(self.embed(idx))  # [B, T, D]
        if not self.training and self.exit_gates is not None and self.exit_at_inference:
            return self._forward_early_exit(h, cos, sin, targets)
        return self._forward_full(h, cos, sin, targets)

    def _forward_full(
        self, h: Tensor, cos: Tensor, sin: Tensor, targets: Tensor | None
    ) -> ModelOutput:
        cfg = self.config
        n = cfg.n_layers
        skip = [False] * n
        if self.training and cfg.layer_dropout > 0:
            skip = self._layer_dropout_decisions()
        weights: list[float] = []
        if cfg.exit_loss and targets is not None and n > 1:
            mask = None
            if self.training:
                mask = exit_curriculum_mask(
                    n,
                    self.step,
                    cfg.exit_curriculum,
                    rotation=cfg.exit_rotation,
                    gradual_steps=cfg.exit_gradual_steps,
                )
            weights = exit_loss_weights(n, cfg.exit_loss_weighting, mask)
        probs: list[Tensor] = []
        samples: list[Tensor] = []
        exit_terms: list[Tensor] = []
        dropped = 0
        for layer, block in enumerate(self.blocks, start=1):
            if skip[layer - 1]:
                dropped += 1  # the whole block is skipped this step
            else:
                h = self._run_block(block, h, cos, sin)  # [B, T, D]
            if layer == n:
                break
            if self.exit_gates is not None:
                p, z = self.exit_gates[layer - 1](h.detach())  # [B, T] each
                probs.append(p)
                samples.append(z)
            if weights and weights[layer - 1] > 0:
                assert targets is not None
                exit_terms.append(weights[layer - 1] * _cross_entropy(self.exit_logits(h), targets))
        logits = self.exit_logits(h)  # [B, T, V]
        out = ModelOutput(logits=logits)
        if targets is not None:
            out.task_loss = _cross_entropy(logits, targets)
        if self.exit_gates is not None:
            ones = torch.ones_like(h[..., 0])  # [B, T]: the last layer takes the remaining mass
            gate_probs = torch.stack([*probs, ones], dim=-1)  # [B, T, L]
            out.aux_losses["route"] = routing_loss(gate_probs, cfg.exit_target)
            out.metrics["route/expected_exit"] = float(expected_exit(gate_probs.detach()).mean())
            hard = torch.stack([*samples, ones], dim=-1).detach()  # [B, T, L] in {0, 1}
            out.metrics["route/sampled_exit"] = float(expected_exit(hard).mean())
        if cfg.exit_loss and targets is not None:
            zero = logits.new_zeros(())
            out.aux_losses["exit"] = torch.stack(exit_terms).sum() if exit_terms else zero
        if self.training and cfg.layer_dropout > 0:
            out.metrics["model/layers_dropped"] = float(dropped)
        return out

    def _layer_dropout_decisions(self) -> list[bool]:
        """Which blocks this training forward skips (layer dropout).

        Drawn from a generator seeded by ``layer_dropout_seed``, the training step and the forwards
        since :meth:`set_step`, not from the global RNG: every data-parallel rank skips the same
        blocks (a block skipped on one FSDP rank only would stall its collectives), and a run
        resumed at a step draws what the uninterrupted run drew.
        """
        cfg = self.config
        rates = layer_dropout_rates(cfg.n_layers, cfg.layer_dropout, cfg.layer_dropout_schedule)
        seed = (self.layer_dropout_seed * 1_000_003 + self.step) * 1_009 + self._forwards_this_step
        gen = torch.Generator().manual_seed(seed % 2**63)
        self._forwards_this_step += 1
        draws = torch.rand(len(rates), generator=gen).tolist()
        return [u < r for u, r in zip(draws, rates, strict=True)]

    def _exit_decision(self, p: Tensor) -> Tensor:  # [b, T] -> [b] bool
        cfg = self.config
        if cfg.exit_aggregate == "all":
            return (p > cfg.exit_threshold).all(dim=-1)
        if cfg.exit_aggregate == "last":
            return p[:, -1] > cfg.exit_threshold
        return p.mean(dim=-1) > cfg.exit_threshold

    def _forward_early_exit(
        self, h: Tensor, cos: Tensor, sin: Tensor, targets: Tensor | None
    ) -> ModelOutput:
        """Per-sequence early exit: exited sequences leave the batch, later blocks skip them."""
        assert self.exit_gates is not None
        n = self.config.n_layers
        b = h.shape[0]
        active = torch.arange(b, device=h.device)  # [b'] rows of the batch still running
        final = torch.empty_like(h)  # [B, T, D] hidden state at each sequence's exit
        exit_layer = torch.full((b,), n, dtype=torch.long, device=h.device)  # [B]
        for layer, block in enumerate(self.blocks, start=1):
            h = block(h, cos, sin)  # [b', T, D]
            if layer == n:
                break
            fire = self._exit_decision(self.exit_gates[layer - 1].probability(h))  # [b']
            if bool(fire.any()):
                done = active[fire]
                final[done] = h[fire]
                exit_layer[done] = layer
                active, h = active[~fire], h[~fire]
                if active.numel() == 0:
                    break
        if active.numel() > 0:
            final[active] = h
        logits = self.exit_logits(final)  # [B, T, V]
        self.last_exit_layers = exit_layer
        out = ModelOutput(logits=logits)
        if targets is not None:
            out.task_loss = _cross_entropy(logits, targets)
        mean_exit = float(exit_layer.float().mean())
        out.metrics["route/exit_layer"] = mean_exit
        out.metrics["route/compute_frac"] = mean_exit / n
        return out

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Append ``max_new_tokens`` sampled bytes to ``idx`` ``[B, T]`` (greedy at temperature 0).

        No KV cache: each step reruns the last ``seq_len`` bytes (a small-model convenience).
        """
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.seq_len :]).logits[:, -1]  # [B, V]
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)  # [B, 1]
            else:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # [B, 1]
            idx = torch.cat((idx, nxt), dim=1)
        return idx
