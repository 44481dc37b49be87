"""Decoder-only byte-level transformer (vocabulary of 256 byte values) with optional early exit.

Architecture: token embedding, ``n_layers`` pre-norm blocks (RMSNorm, RoPE causal attention through
``scaled_dot_product_attention``, squared-ReLU / gated squared-ReLU / SwiGLU FFN, optional SubLN and
post-attention RMSNorm, no biases), a final RMSNorm and a full-precision output ``head``. Every
projection inside the blocks is a plain ``nn.Linear``: ``trainables.quant.prepare(model, scheme)``
swaps them for the scheme's layers and keeps ``head`` (the last ``nn.Linear``) in full precision.

Early exit (``config.early_exit``, seed 001): a gate after each block but the last. In training the
model runs every block, samples each token's exit from the gates (straight-through Bernoulli) and,
with ``exit_task_loss: sampled`` (default), scores the task loss at that exit, so the task loss
trains the gates (see :func:`trainables.models.early_exit.routed_task_loss`); it also reports the
routing loss (``aux_losses["route"]``) and the expected and sampled exit layers. In evaluation
(``model.eval()`` with ``exit_at_inference``) it exits per token at ``p_exit > exit_threshold`` and
skips the exited tokens' compute in later blocks (``exit_mode: token``), or per sequence
(``exit_mode: sequence``); see :mod:`trainables.models.exit_inference`.

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
    routed_task_loss,
    routing_loss,
)
from .exit_inference import sequence_exit, token_exit
from .lm_config import ByteLMConfig
from .outputs import ModelOutput
from .rope import RotaryEmbedding

LN2 = math.log(2.0)


def bits_per_byte(loss_nats: float | Tensor) -> float | Tensor:
    """Convert a mean cross-entropy per byte in nats to bits per byte (``loss / ln 2``)."""
    return loss_nats / LN2


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:  # [B, T, V], [B, T] -> []
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def _token_ce(logits: Tensor, targets: Tensor) -> Tensor:  # [B, T, V], [B, T] -> [B, T]
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none"
    )
    return flat.view(targets.shape)


class ByteLM(nn.Module):
    """The byte-level language model of :class:`ByteLMConfig`.

    Attributes:
        config: the architecture (replaced by the growth functions with the grown shape).
        exit_at_inference: with ``config.early_exit``, exit early in evaluation (default True);
            set False to evaluate every sequence through every block.
        last_exit_layers: after an early-exit inference, the exit layer of each token ``[B, T]``.
        last_block_tokens: after an early-exit inference, per block the number of tokens whose
            block computation ran (exited tokens' queries and FFN are skipped).
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
        self.last_block_tokens: list[int] = []
        self.reset_parameters()

    def new_gate(self) -> ExitGate:
        """A freshly initialized exit gate for this model's width."""
        cfg = self.config
        return ExitGate(cfg.d_model, cfg.gate_hidden, cfg.exit_threshold, cfg.gate_dropout)

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
        # the task loss scores each token at its sampled exit: every exit's loss is needed
        routed = (
            self.training
            and self.exit_gates is not None
            and targets is not None
            and cfg.exit_task_loss != "final"
        )
        weights = self._exit_loss_weights(routed) if cfg.exit_loss and targets is not None else []
        probs: list[Tensor] = []
        samples: list[Tensor] = []
        layer_logits: list[Tensor] = []
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
                # Detached input: the gate learns from the task loss through its straight-through
                # sample (which exit scores the token), not through h; so neither routing nor
                # the choice of exit bends the trunk's features towards firing the gates.
                p, z = self.exit_gates[layer - 1](h.detach())  # [B, T] each
                probs.append(p)
                samples.append(z)
            wants_exit_loss = bool(weights) and weights[layer - 1] > 0
            if routed or wants_exit_loss:
                logits_l = self.exit_logits(h)  # [B, T, V]
                layer_logits.append(logits_l)
                if wants_exit_loss:
                    assert targets is not None
                    exit_terms.append(weights[layer - 1] * _cross_entropy(logits_l, targets))
        logits = self.exit_logits(h)  # [B, T, V]
        out = ModelOutput(logits=logits)
        if targets is not None:
            out.task_loss = _cross_entropy(logits, targets)
            if len(weights) == n and weights[-1] > 0:  # routed: the last layer is an exit too
                exit_terms.append(weights[-1] * out.task_loss)
        if self.exit_gates is not None:
            ones = torch.ones_like(h[..., 0])  # [B, T]: the last layer takes the remaining mass
            gate_probs = torch.stack([*probs, ones], dim=-1)  # [B, T, L]
            gate_samples = torch.stack([*samples, ones], dim=-1)  # [B, T, L] in {0, 1}
            out.aux_losses["route"] = routing_loss(gate_probs, cfg.exit_target)
            out.metrics["route/expected_exit"] = float(expected_exit(gate_probs.detach()).mean())
            out.metrics["route/sampled_exit"] = float(expected_exit(gate_samples.detach()).mean())
            if routed:
                assert targets is not None and out.task_loss is not None
                out.metrics["route/final_loss"] = float(out.task_loss.detach())
                out.task_loss, out.logits = self._routed_loss(
                    [*layer_logits, logits], targets, gate_probs, gate_samples
                )
        if cfg.exit_loss and targets is not None:
            zero = logits.new_zeros(())
            out.aux_losses["exit"] = torch.stack(exit_terms).sum() if exit_terms else zero
        if self.training and cfg.layer_dropout > 0:
            out.metrics["model/layers_dropped"] = float(dropped)
        return out

    def _exit_loss_weights(self, routed: bool) -> list[float]:
        """Weights of the LayerSkip early-exit loss (arXiv 2404.16710) at the current step.

        Without routing the last layer's loss is the task loss, so the exit loss weighs the
        intermediate exits ``1..L-1``. With the routed task loss (which scores each token at one
        exit only) the exit loss is LayerSkip's own: every layer ``1..L`` including the last,
        normalized together, so that every exit, the full depth included, keeps learning to
        predict whichever tokens the gates route elsewhere. ``[]`` for a one-layer model.
        """
        cfg = self.config
        n = cfg.n_layers
        if n == 1:
            return []
        mask = None
        if self.training:
            mask = exit_curriculum_mask(
                n,
                self.step,
                cfg.exit_curriculum,
                rotation=cfg.exit_rotation,
                gradual_steps=cfg.exit_gradual_steps,
            )
        if routed:
            return exit_loss_weights(
                n + 1, cfg.exit_loss_weighting, [*(mask or [True] * (n - 1)), True]
            )
        return exit_loss_weights(n, cfg.exit_loss_weighting, mask)

    def _routed_loss(
        self, layer_logits: list[Tensor], targets: Tensor, gate_probs: Tensor, samples: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The task loss at each token's exit and the logits it scored (see ``routed_task_loss``).

        ``layer_logits``: ``L`` tensors ``[B, T, V]``; ``targets`` ``[B, T]``; gate
        probabilities and samples ``[B, T, L]``. Returns ``(loss [], logits [B, T, V])``: the
        logits of each token's realized exit (``"sampled"``) or of the last layer
        (``"expected"``).
        """
        per_layer = torch.stack([_token_ce(lg, targets) for lg in layer_logits], dim=-1)  # [B,T,L]
        loss, weights = routed_task_loss(
            per_layer, gate_probs, samples, self.config.exit_task_loss
        )  # [B, T], [B, T, L]
        logits = layer_logits[-1]
        if self.config.exit_task_loss == "sampled":
            chosen = weights.detach().argmax(dim=-1)  # [B, T] index of the realized exit
            for index in range(len(layer_logits) - 2, -1, -1):
                logits = torch.where((chosen == index)[..., None], layer_logits[index], logits)
        return loss.mean(), logits

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

    def _forward_early_exit(
        self, h: Tensor, cos: Tensor, sin: Tensor, targets: Tensor | None
    ) -> ModelOutput:
        """Early-exit inference per token or per sequence (``exit_mode``, see exit_inference)."""
        run = token_exit if self.config.exit_mode == "token" else sequence_exit
        final, exit_layer, block_tokens = run(self, h, cos, sin)  # [B, T, D], [B, T], [L]
        logits = self.exit_logits(final)  # [B, T, V]: each token's prediction at its exit
        self.last_exit_layers = exit_layer
        self.last_block_tokens = block_tokens
        out = ModelOutput(logits=logits)
        if targets is not None:
            out.task_loss = _cross_entropy(logits, targets)
        out.metrics["route/exit_layer"] = float(exit_layer.float().mean())
        out.metrics["route/compute_frac"] = sum(block_tokens) / (
            self.config.n_layers * exit_layer.numel()
        )
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
