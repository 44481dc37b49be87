"""The configuration of the byte-level language model (:class:`ByteLMConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, get_args

FFNKind = Literal["sqrelu", "gated_sqrelu", "swiglu"]
ExitAggregate = Literal["mean", "all", "last"]
ExitLossWeighting = Literal["layerskip", "linear", "uniform"]
ExitCurriculum = Literal["none", "rotational", "gradual"]
LayerDropoutSchedule = Literal["quadratic", "exponential", "uniform"]
ExitTaskLoss = Literal["sampled", "expected", "final"]
ExitMode = Literal["token", "sequence"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "ffn": get_args(FFNKind),
    "exit_aggregate": get_args(ExitAggregate),
    "exit_loss_weighting": get_args(ExitLossWeighting),
    "exit_curriculum": get_args(ExitCurriculum),
    "layer_dropout_schedule": get_args(LayerDropoutSchedule),
    "exit_task_loss": get_args(ExitTaskLoss),
    "exit_mode": get_args(ExitMode),
}


def _fail(name: str, allowed: str, value: object) -> NoReturn:
    raise ValueError(f"ByteLMConfig.{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ByteLMConfig:
    """Architecture and routing settings of :class:`trainables.models.ByteLM`.

    The config describes the architecture completely: a checkpoint can rebuild the model from it,
    and the growth functions return a model whose config describes the grown shape.

    Attributes:
        vocab_size: input/output vocabulary (256 byte values).
        d_model: residual width; a multiple of ``n_heads`` with an even head size (RoPE).
        n_layers: number of transformer blocks.
        n_heads: attention heads; head size is ``d_model // n_heads``.
        d_ff: FFN hidden width; ``None`` means ``4 * d_model`` for ``sqrelu`` and
            ``8/3 * d_model`` rounded up to a multiple of 8 for the gated FFNs.
        seq_len: longest sequence the model accepts (RoPE tables are built for it).
        ffn: ``"sqrelu"`` (``W2 relu(W1 x)^2``), ``"gated_sqrelu"`` (BitNet b1.58 2B4T,
            ``W2 (relu(Wg x)^2 * Wu x)``) or ``"swiglu"`` (``W2 (silu(Wg x) * Wu x)``).
        subln: BitNet b1.58 2B4T SubLN (arXiv 2504.12285): an extra RMSNorm before the attention
            output projection and before the FFN down projection.
        rmsnorm_post_attn: an RMSNorm on the attention branch output, after the output
            projection (seed 003, stabilizes gradual ternarization).
        rope_base: RoPE frequency base.
        norm_eps: epsilon of every RMSNorm.
        dropout: dropout on embeddings, attention probabilities and residual branches.
        grad_checkpointing: recompute each block in the backward pass (torch.utils.checkpoint).
        init_std: standard deviation of the normal weight initialization.
        early_exit: add a learnable exit gate after every block but the last (seed 001),
            report ``route/expected_exit``, add the ``"route"`` loss and exit early at inference.
        target_exit_layer: the routing loss target (layers numbered 1..n_layers);
            ``None`` means ``n_layers / 2``.
        exit_threshold: inference exits a token when its gate probability exceeds this (seed 001);
            per sequence, when the aggregated probability does.
        exit_mode: early-exit inference per ``"token"`` (each token leaves at the first gate
            with ``p > exit_threshold``; later blocks skip its query and FFN compute) or per
            ``"sequence"`` (a whole sequence leaves the batch, see ``exit_aggregate``).
        exit_task_loss: what the task loss scores in training with early exit:
            ``"sampled"`` the prediction at each token's realized exit (Bernoulli gate samples,
            straight-through, so the task loss trains the gates), ``"expected"`` the expected
            loss under the exit distribution, ``"final"`` the last layer only (gates then move
            by the routing loss alone: the ablation).
        gate_dropout: dropout inside each exit gate's MLP (0.1 in seed 001).
        exit_aggregate: how a sequence's per-token gate probabilities decide its exit at
            ``"sequence"`` inference: ``"mean"`` (mean probability > threshold), ``"all"``
            (every token's probability > threshold) or ``"last"`` (the last token's, for
            generation).
        exit_loss: add the LayerSkip early-exit loss ``"exit"`` (arXiv 2404.16710): the shared
            final norm and head applied after every intermediate block.
        exit_loss_weighting: per-exit weights before normalization: ``"layerskip"``
            (``l (l + 1) / 2``), ``"linear"`` (``l``) or ``"uniform"``.
        exit_curriculum: which exits the loss uses at a step: ``"none"`` (all),
            ``"rotational"`` (every ``exit_rotation``-th exit, rotating with the step) or
            ``"gradual"`` (enabled from the last layer downward, one more every
            ``exit_gradual_steps`` steps).
        exit_rotation: the period R of the rotational curriculum.
        exit_gradual_steps: steps between two enabled exits in the gradual curriculum.
        layer_dropout: the maximum rate ``p_max`` of skipping a whole block in training.
        layer_dropout_schedule: how the rate grows with depth: ``"quadratic"``
            (BitSkip, ``p_max (l / L)^2``), ``"exponential"`` (LayerSkip,
            ``p_max (2^((l-1)/(L-1)) - 1)``) or ``"uniform"`` (``p_max`` everywhere).
    """

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None
    seq_len: int = 128
    ffn: FFNKind = "sqrelu"
    subln: bool = False
    rmsnorm_post_attn: bool = False
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    dropout: float = 0.0
    grad_checkpointing: bool = False
    init_std: float = 0.02
    early_exit: bool = False
    target_exit_layer: float | None = None
    exit_threshold: float = 0.5
    exit_mode: ExitMode = "token"
    exit_task_loss: ExitTaskLoss = "sampled"
    gate_dropout: float = 0.1
    exit_aggregate: ExitAggregate = "mean"
    exit_loss: bool = False
    exit_loss_weighting: ExitLossWeighting = "layerskip"
    exit_curriculum: ExitCurriculum = "none"
    exit_rotation: int = 2
    exit_gradual_steps: int = 100
    layer_dropout: float = 0.0
    layer_dropout_schedule: LayerDropoutSchedule = "quadratic"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, "a positive integer", value)
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                _fail(name, "one of " + ", ".join(repr(a) for a in allowed), getattr(self, name))
        if self.d_model % self.n_heads:
            _fail("n_heads", f"a divisor of d_model={self.d_model}", self.n_heads)
        if (self.d_model // self.n_heads) % 2:
            _fail(
                "n_heads",
                f"such that d_model / n_heads is even (RoPE), d_model={self.d_model}",
                self.n_heads,
            )
        if self.d_ff is not None and (
            isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff < 1
        ):
            _fail("d_ff", "a positive integer or None", self.d_ff)
        for name in ("rope_base", "norm_eps", "init_std"):
            if not float(getattr(self, name)) > 0:
                _fail(name, "a positive number", getattr(self, name))
        for name in ("dropout", "layer_dropout", "gate_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                _fail(name, "in [0, 1)", getattr(self, name))
        if not 0.0 < float(self.exit_threshold) < 1.0:
            _fail("exit_threshold", "in (0, 1)", self.exit_threshold)
        if self.target_exit_layer is not None and not (
            1.0 <= float(self.target_exit_layer) <= self.n_layers
        ):
            _fail(
                "target_exit_layer",
                f"None or in [1, n_layers={self.n_layers}]",
                self.target_exit_layer,
            )
        for name in ("exit_rotation", "exit_gradual_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, "a positive integer", value)

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.d_model // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        """The FFN hidden width (``d_ff`` or its default for the FFN kind)."""
        if self.d_ff is not None:
            return self.d_ff
        if self.ffn == "sqrelu":
            return 4 * self.d_model
        return -(-8 * self.d_model // 3 // 8) * 8

    @property
    def exit_target(self) -> float:
        """The routing-loss target exit layer (``target_exit_layer`` or ``n_layers / 2``)."""
        if self.target_exit_layer is None:
            return self.n_layers / 2
        return float(self.target_exit_layer)

    @property
    def gate_hidden(self) -> int:
        """Hidden width of each exit gate's MLP (``d_model // 4``, at least 1)."""
        return max(1, self.d_model // 4)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (JSON/YAML friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ByteLMConfig:
        """Build a config from a mapping; unknown keys raise a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown ByteLMConfig key(s): {', '.join(unknown)}; valid keys: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    def replace(self, **changes: Any) -> ByteLMConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)
