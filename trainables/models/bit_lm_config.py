"""The configuration of the bit-level language model (:class:`BitLMConfig`, seed 004)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

BITS_PER_BYTE = 9
"""Each text byte is 8 data bits (most significant first) and one even-parity bit."""


def _fail(name: str, allowed: str, value: object) -> NoReturn:
    raise ValueError(f"BitLMConfig.{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class BitLMConfig:
    """Architecture of :class:`trainables.models.BitLM` (BitTransformerLM, seed 004).

    The config describes the architecture completely: a checkpoint rebuilds the model from it, and
    the growth functions return a model whose config describes the grown shape.

    Attributes:
        d_model: residual width (even: sinusoidal positions pair sin and cos).
        n_layers: number of transformer blocks.
        n_heads: attention heads; head size ``d_model // n_heads``.
        d_ff: FFN hidden width; ``None`` means ``4 * d_model``.
        seq_len: longest input in bits; a multiple of 9 so windows hold whole bytes.
        dropout: dropout on embeddings, attention probabilities and residual branches.
        causal: causal attention (next-bit prediction); ``False`` builds the non-causal denoiser
            of the diffusion mode.
        reversible: RevNet coupling of the blocks (Gomez et al. 2017): activations are recomputed
            in the backward pass, so activation memory does not grow with depth.
        grad_checkpointing: recompute each (non-reversible) block in the backward pass
            (``torch.utils.checkpoint``); a reversible stack already recomputes, so there it has
            no further effect.
        act: Adaptive Computation Time over the layers (Graves 2016; Universal Transformer,
            Dehghani et al. 2019): each position halts once its cumulative halting probability
            reaches ``1 - act_eps``; not combinable with ``reversible`` (see :mod:`.bit_lm`).
        act_eps: the ACT threshold margin ``eps`` (halt at ``1 - eps``), in (0, 1).
        act_init_bias: initial bias of the halting unit (``sigmoid(-2) = 0.12``: positions start
            by using every layer, and the ponder cost teaches them to halt earlier).
        attn_chunk: attend in chunks of this many queries, so a ``T x T`` attention map is never
            built (``None``: one fused attention call over all queries).
        full_attn_logging: keep every layer's full attention probabilities ``[B, H, T, T]`` in
            ``BitLM.attention_maps`` (for telemetry); builds the full map even when chunked.
        byte_phase: add a learned embedding of each bit's index within its byte (0..8) to the
            input (windows start at byte boundaries); off by default, as in the seed. It lets a
            small model find byte boundaries without inferring them from the sinusoids.
        pos_dim: width of the sinusoidal position table, tiled to ``d_model``; ``None`` means
            ``d_model``. Width growth keeps the old width here so positions stay function-
            preserving (``[pe, pe]`` is the duplicated residual of ``pe``).
        pos_base: the sinusoid base (10000 in Vaswani et al. 2017).
        norm_eps: epsilon of every RMSNorm.
        init_std: standard deviation of the normal weight initialization.
    """

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None
    seq_len: int = 144
    dropout: float = 0.0
    causal: bool = True
    reversible: bool = False
    grad_checkpointing: bool = False
    act: bool = False
    act_eps: float = 0.01
    act_init_bias: float = -2.0
    attn_chunk: int | None = None
    full_attn_logging: bool = False
    byte_phase: bool = False
    pos_dim: int | None = None
    pos_base: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, "a positive integer", value)
        if self.d_model % 2:
            _fail("d_model", "even (sinusoidal positions)", self.d_model)
        if self.d_model % self.n_heads:
            _fail("n_heads", f"a divisor of d_model={self.d_model}", self.n_heads)
        if self.seq_len % BITS_PER_BYTE:
            _fail("seq_len", f"a multiple of {BITS_PER_BYTE} (whole bytes of bits)", self.seq_len)
        for name in ("d_ff", "attn_chunk", "pos_dim"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                _fail(name, "a positive integer or None", value)
        if self.pos_dim is not None and (self.pos_dim % 2 or self.d_model % self.pos_dim):
            _fail("pos_dim", f"an even divisor of d_model={self.d_model} or None", self.pos_dim)
        if not 0.0 <= float(self.dropout) < 1.0:
            _fail("dropout", "in [0, 1)", self.dropout)
        if not 0.0 < float(self.act_eps) < 1.0:
            _fail("act_eps", "in (0, 1)", self.act_eps)
        for name in ("pos_base", "norm_eps", "init_std"):
            if not float(getattr(self, name)) > 0:
                _fail(name, "a positive number", getattr(self, name))
        if self.act and self.reversible:
            raise ValueError(
                "BitLMConfig.act and BitLMConfig.reversible cannot both be true: the ACT output "
                "mixes every layer's state, so its backward needs all of them and the reversible "
                "stack would no longer be memory-free; choose one"
            )

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.d_model // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        """The FFN hidden width (``d_ff`` or ``4 * d_model``)."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def position_width(self) -> int:
        """Width of the sinusoid table before tiling (``pos_dim`` or ``d_model``)."""
        return self.pos_dim if self.pos_dim is not None else self.d_model

    @property
    def seq_bytes(self) -> int:
        """Whole bytes in the longest input (``seq_len // 9``)."""
        return self.seq_len // BITS_PER_BYTE

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (JSON/YAML friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BitLMConfig:
        """Build a config from a mapping; unknown keys raise a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown BitLMConfig key(s): {', '.join(unknown)}; valid keys: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    def replace(self, **changes: Any) -> BitLMConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)
