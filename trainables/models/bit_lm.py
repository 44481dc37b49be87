"""BitTransformerLM (seed 004): a transformer over the bits of text, with parity.

Input: bits in {0, 1} (and ``MASK_TOKEN`` = 2, for the diffusion denoiser's masked positions),
9 per byte (``trainables.data.bits``). Architecture: a bit embedding (``nn.Embedding(3, D)``) plus
sinusoidal positions (Vaswani et al. 2017), ``n_layers`` pre-norm blocks (RMSNorm, multi-head
attention, causal by default, squared-ReLU FFN, no biases), a final RMSNorm and a full-precision
output ``head`` of 2 logits (the last ``nn.Linear``, kept by ``keep_head``). Every projection inside
the blocks is a plain ``nn.Linear``, so ``trainables.quant.prepare`` swaps them for any scheme.

Three ways to run the blocks (``bit_lm_blocks``):

- standard residual blocks, optionally with ``grad_checkpointing``;
- ``reversible``: two streams, both starting at the embedding, coupled by RevNet
  (``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``, Gomez et al. 2017) through a custom autograd function
  that recomputes activations in backward; the head reads ``(x1 + x2) / 2``;
- ``act``: Adaptive Computation Time over the layers (Graves 2016, arXiv 1603.08983; the Universal
  Transformer's per-position halting, Dehghani et al. 2019, arXiv 1807.03819). After block ``l``
  a halting unit gives ``p_l = sigmoid(w . h_l + b)`` per position; a position halts at the first
  layer ``N`` where ``sum_{l<=N} p_l >= 1 - eps`` (or at the last layer); its weights are ``p_l``
  for ``l < N`` and the remainder ``R = 1 - sum_{l<N} p_l`` at ``N``; the output is
  ``sum_l w_l h_l``. The ponder cost ``N + R`` (mean over positions) is ``aux_losses["ponder"]``,
  weighted by ``loss.lambda_act``; ``metrics["act/mean_layers"]`` is the mean ``N``. Halted
  positions keep being computed in a batch (their weights are zero), the loop stops when every
  position has halted.

ACT and reversible are exclusive (``BitLMConfig`` refuses the pair): ACT's output mixes every
layer's state, so its backward needs all of them, which is exactly the memory the reversible stack
saves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .bit_lm_blocks import BitBlock, reversible_stack
from .bit_lm_config import BITS_PER_BYTE, BitLMConfig
from .early_exit import FloatLinear
from .outputs import ModelOutput

MASK_TOKEN = 2
"""Input id of a masked bit (the diffusion denoiser's noise); the model never predicts it."""
N_INPUT_TOKENS = 3
N_CLASSES = 2


def sinusoidal_positions(length: int, width: int, base: float = 10000.0) -> Tensor:
    """``[length, width]`` table ``PE[t, 2i] = sin(t / base^(2i/width))``, ``PE[t, 2i+1] = cos``.

    Vaswani et al. 2017, "Attention Is All You Need", section 3.5.
    """
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # [T, 1]
    freq = base ** (-torch.arange(0, width, 2, dtype=torch.float64) / width)  # [W/2]
    table = torch.zeros(length, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.float()


def bit_cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy in nats of 2-class logits ``[B, T, 2]`` against bits ``[B, T]``."""
    ce = F.cross_entropy(
        logits.reshape(-1, N_CLASSES).float(), targets.reshape(-1), reduction=reduction
    )
    return ce if reduction != "none" else ce.view(targets.shape)


class BitLM(nn.Module):
    """The bit-level language model of :class:`BitLMConfig`.

    Attributes:
        config: the architecture (replaced by growth with the grown shape).
        attention_maps: with ``full_attn_logging``, every layer's attention probabilities
            ``[B, H, T, T]`` from the last forward; empty otherwise.
        last_halting_layers: with ``act``, each position's halting layer ``[B, T]`` (1-based)
            from the last forward.
    """

    def __init__(self, config: BitLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(N_INPUT_TOKENS, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.register_buffer("positions", self._position_table(config.seq_len), persistent=False)
        self.phase = nn.Embedding(BITS_PER_BYTE, config.d_model) if config.byte_phase else None
        self.blocks = nn.ModuleList(BitBlock(config) for _ in range(config.n_layers))
        # full precision: a tiny routing unit, like the early-exit gates (not an nn.Linear)
        self.halt = FloatLinear(config.d_model, 1) if config.act else None
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, N_CLASSES, bias=False)  # the last nn.Linear
        self.step = 0
        self.attention_maps: list[Tensor] = []
        self.last_halting_layers: Tensor | None = None
        self.reset_parameters()

    def _position_table(self, length: int) -> Tensor:
        cfg = self.config
        table = sinusoidal_positions(length, cfg.position_width, cfg.pos_base)  # [T, P]
        return table.repeat(1, cfg.d_model // cfg.position_width)  # [T, D]

    def resize_positions(self, length: int) -> None:
        """Rebuild the position table for ``length`` positions (context growth)."""
        ref = self.embed.weight
        self.positions = self._position_table(length).to(device=ref.device, dtype=ref.dtype)

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, branch outputs scaled by ``1/sqrt(2 L)``; halting bias."""
        std = self.config.init_std
        nn.init.normal_(self.embed.weight, std=std)
        if self.phase is not None:
            nn.init.normal_(self.phase.weight, std=std)
        nn.init.normal_(self.head.weight, std=std)
        for block in self.blocks:
            self.init_block(block)
        if self.halt is not None:
            nn.init.normal_(self.halt.weight, std=std)
            nn.init.constant_(self.halt.bias, self.config.act_init_bias)

    def init_block(self, block: nn.Module) -> None:
        """Initialize one block's projections like :meth:`reset_parameters` does."""
        std = self.config.init_std
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                scale = name.endswith(("o_proj", "down_proj"))
                s = std / math.sqrt(2 * self.config.n_layers) if scale else std
                nn.init.normal_(module.weight, std=s)

    def set_step(self, step: int) -> None:
        """Record the training step (read by step-dependent schedules such as diffusion's)."""
        self.step = int(step)

    def embed_bits(self, bits: Tensor) -> Tensor:
        """Bit embedding plus sinusoidal positions: ``[B, T]`` -> ``[B, T, D]``."""
        cfg = self.config
        if bits.dim() != 2:
            raise ValueError(f"bits must be [batch, time], got shape {tuple(bits.shape)}")
        t = bits.shape[1]
        if t > cfg.seq_len:
            raise ValueError(f"sequence length {t} exceeds BitLMConfig.seq_len={cfg.seq_len}")
        h = self.embed(bits) + self.positions[:t]  # [B, T, D]
        if self.phase is not None:
            h = h + self.phase(torch.arange(t, device=bits.device) % BITS_PER_BYTE)  # [T, D]
        return self.drop(h)

    def _run_block(self, block: BitBlock, h: Tensor) -> Tensor:
        if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, use_reentrant=False)  # type: ignore[return-value]
        return block(h)

    def _trunk(self, h: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The blocks: ``[B, T, D]`` -> final hidden ``[B, T, D]`` (before the final norm)."""
        if self.config.reversible:
            x1, x2 = reversible_stack(list(self.blocks), h, h)  # type: ignore[arg-type]
            return (x1 + x2) / 2, {}
        if self.halt is not None:
            return self._act(h)
        for block in self.blocks:
            h = self._run_block(block, h)  # type: ignore[arg-type]
        return h, {}

    def _act(self, h: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Adaptive Computation Time over the blocks (Graves 2016, eq. 5-14); see the module doc."""
        assert self.halt is not None
        n = self.config.n_layers
        threshold = 1.0 - self.config.act_eps
        cum = h.new_zeros(h.shape[:2])  # [B, T] sum of p over layers before halting
        running = torch.ones_like(cum, dtype=torch.bool)  # [B, T]
        layers = torch.zeros_like(cum)  # [B, T] N: layers used
        remainder = torch.zeros_like(cum)  # [B, T] R at the halting layer
        out = torch.zeros_like(h)  # [B, T, D]
        for index, block in enumerate(self.blocks, start=1):
            h = self._run_block(block, h)  # type: ignore[arg-type]
            p = torch.sigmoid(self.halt(h).squeeze(-1).float()).to(h.dtype)  # [B, T]
            # the last layer halts every position still running (it takes the remainder)
            halting = running if index == n else running & (cum + p >= threshold)
            keep = running & ~halting
            rest = 1.0 - cum  # the remainder of the positions halting now
            weight = torch.where(keep, p, torch.where(halting, rest, torch.zeros_like(p)))
            remainder = torch.where(halting, rest, remainder)
            layers = layers + running.to(h.dtype)
            cum = cum + torch.where(keep, p, torch.zeros_like(p))
            out = out + weight.unsqueeze(-1) * h
            running = keep
            if not bool(running.any()):
                break  # every position has halted: later blocks would get zero weight
        self.last_halting_layers = layers.detach().long()
        ponder = (layers + remainder).mean()  # Graves 2016 eq. 11: rho = N + R
        return out, {"ponder": ponder}

    def hidden_states(self, bits: Tensor) -> Tensor:
        """The final hidden state (after the final norm, what the head reads): ``[B, T, D]``."""
        h, _ = self._trunk(self.embed_bits(bits))
        return self.norm(h)

    def forward(
        self, bits: Tensor, targets: Tensor | None = None, *, step: int | None = None
    ) -> ModelOutput:
        """Next-bit logits for ``bits`` ``[B, T]`` (int64 in {0, 1, MASK_TOKEN}).

        ``targets[b, t]`` is the bit to predict at position ``t`` (the next bit for the causal
        model; the clean bit for the denoiser). Returns :class:`ModelOutput` with ``logits``
        ``[B, T, 2]``, ``task_loss`` (mean cross-entropy in nats per bit), with ``act``
        ``aux_losses["ponder"]`` and ``metrics["act/mean_layers"]``.
        """
        if step is not None:
            self.set_step(step)
        self.attention_maps = []
        h, aux = self._trunk(self.embed_bits(bits))
        logits = self.head(self.norm(h))  # [B, T, 2]
        out = ModelOutput(logits=logits, aux_losses=aux)
        if targets is not None:
            out.task_loss = bit_cross_entropy(logits, targets)
        if self.config.full_attn_logging:
            self.attention_maps = [
                b.attn.last_probs for b in self.blocks if b.attn.last_probs is not None
            ]
        if self.last_halting_layers is not None and "ponder" in aux:
            out.metrics["act/mean_layers"] = float(self.last_halting_layers.float().mean())
            out.metrics["act/ponder"] = float(aux["ponder"].detach())
        return out

    @torch.no_grad()
    def generate(
        self,
        prefix_bits: Tensor,
        n_bytes: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Append ``9 * n_bytes`` sampled bits to ``prefix_bits`` ``[B, T0]`` (greedy at 0).

        Causal models only (the denoiser samples with ``bit_diffusion``). No KV cache: each step
        reruns the last ``seq_len`` bits. Returns ``[B, T0 + 9 n_bytes]``.
        """
        if not self.config.causal:
            raise ValueError("BitLM.generate needs a causal model (causal: true)")
        bits = prefix_bits
        for _ in range(BITS_PER_BYTE * n_bytes):
            start = max(0, bits.shape[1] - self.config.seq_len)
            start += -start % BITS_PER_BYTE  # the window starts on a byte boundary, like training
            logits = self(bits[:, start:]).logits[:, -1].float()  # [B, 2]
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)  # [B, 1]
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # [B, 1]
            bits = torch.cat((bits, nxt.to(bits.dtype)), dim=1)
        return bits
