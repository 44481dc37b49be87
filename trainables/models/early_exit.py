"""Learnable early exit (seed 001, BitSkip arXiv 2510.23766) and LayerSkip (arXiv 2404.16710).

Pieces, each a pure function or a small module so that they are unit-tested on their own:

- :class:`ExitGate`: ``p = sigmoid(Linear(ReLU(Linear(LayerNorm(h)))))`` per token, a Bernoulli
  sample through a straight-through estimator in training, a threshold at inference.
- :func:`exit_distribution`, :func:`expected_exit`, :func:`routing_loss`: the routing objective.
- :func:`exit_loss_weights`, :func:`exit_curriculum_mask`: the LayerSkip early-exit loss.
- :func:`layer_dropout_rates`: layer dropout growing with depth (BitSkip quadratic, LayerSkip
  exponential).

Layers are numbered ``1..L`` throughout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lm_config import ExitCurriculum, ExitLossWeighting, LayerDropoutSchedule


class FloatLinear(nn.Module):
    """A dense layer that the quantization swap pass leaves alone (it is not an ``nn.Linear``).

    The exit gates are tiny and decide routing; they stay in full precision under every scheme.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default initialization range
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[..., in]`` -> ``[..., out]``."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def bernoulli_ste(p: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A hard 0/1 Bernoulli sample of ``p`` whose gradient is the identity (straight-through).

    Forward value ``z ~ Bernoulli(p)``; backward ``dz/dp = 1`` (``p + (z - p).detach()``).
    """
    z = torch.bernoulli(p.detach(), generator=generator)
    return p + (z - p).detach()


class ExitGate(nn.Module):
    """Per-token exit gate ``sigmoid(Linear(ReLU(Linear(LayerNorm(h)))))`` (seed 001, BitSkip).

    Args:
        d_model: width of the hidden state it reads.
        hidden: width of the gate MLP (the model uses ``d_model // 4``).
        threshold: inference exits where ``p > threshold``.
    """

    def __init__(self, d_model: int, hidden: int, threshold: float = 0.5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.fc1 = FloatLinear(d_model, hidden)
        self.fc2 = FloatLinear(hidden, 1)
        self.threshold = threshold

    def probability(self, h: Tensor) -> Tensor:
        """Exit probability per token: ``h`` ``[..., D]`` -> ``[...]`` in (0, 1)."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(self.norm(h))))).squeeze(-1)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(p, z)``: probabilities ``[...]`` and decisions ``[...]`` in {0, 1}.

        In training ``z`` is a Bernoulli sample with a straight-through gradient to ``p``;
        in evaluation ``z = 1[p > threshold]`` (no gradient).
        """
        p = self.probability(h)
        if self.training:
            return p, bernoulli_ste(p)
        return p, (p > self.threshold).to(p.dtype)


def exit_distribution(gate_probs: Tensor) -> Tensor:
    """``p_exit(l) = p_l * prod_{i<l} (1 - p_i)``, the mass not yet exited exiting at layer L.

    ``gate_probs``: ``[..., L]``, the exit probability of each layer; the last layer's entry is
    ignored (treated as 1: everything that reaches it exits there), so the result ``[..., L]``
    sums to 1 along the last dimension for any probabilities in [0, 1] (seed 001, BitSkip).
    """
    keep = torch.cumprod(1.0 - gate_probs, dim=-1)  # [..., L] prod_{i<=l}(1 - p_i)
    reach = torch.cat((torch.ones_like(keep[..., :1]), keep[..., :-1]), dim=-1)  # prod_{i<l}
    dist = gate_probs * reach  # [..., L]
    return torch.cat((dist[..., :-1], reach[..., -1:]), dim=-1)


def expected_exit(gate_probs: Tensor) -> Tensor:
    """Expected exit layer ``E = sum_l l * p_exit(l)`` (layers 1..L): ``[..., L]`` -> ``[...]``."""
    n = gate_probs.shape[-1]
    layers = torch.arange(1, n + 1, dtype=gate_probs.dtype, device=gate_probs.device)  # [L]
    return (exit_distribution(gate_probs) * layers).sum(-1)


def routing_loss(gate_probs: Tensor, target_exit_layer: float) -> Tensor:
    """The BitSkip target-cost loss: the mean over tokens of ``(E - target_exit_layer)^2``.

    ``gate_probs``: ``[..., L]`` (leading dims are batch and tokens). Each token's expected exit is
    pushed to the target, like ``F.mse_loss(E, target)`` in seed 001. Returns a scalar.
    """
    return (expected_exit(gate_probs) - target_exit_layer).square().mean()


def exit_loss_weights(
    n_layers: int, weighting: ExitLossWeighting = "layerskip", active: list[bool] | None = None
) -> list[float]:
    """Weights of the intermediate exits ``1..L-1`` in the early-exit loss, summing to 1.

    LayerSkip (arXiv 2404.16710) scales the loss of exit ``l`` by a factor growing with depth,
    ``sum_{i<=l} i = l (l + 1) / 2`` (``"layerskip"``); ``"linear"`` uses ``l``, ``"uniform"`` 1.
    Exits switched off by ``active`` (the curriculum) get weight 0 and the others are renormalized;
    with no active exit every weight is 0. The last layer is not included: its loss is the task
    loss.
    """
    if weighting == "layerskip":
        raw = [i * (i + 1) / 2 for i in range(1, n_layers)]
    elif weighting == "linear":
        raw = [float(i) for i in range(1, n_layers)]
    elif weighting == "uniform":
        raw = [1.0] * (n_layers - 1)
    else:
        raise ValueError(
            "exit_loss_weighting must be one of 'layerskip', 'linear', 'uniform', "
            f"got {weighting!r}"
        )
    if active is not None:
        if len(active) != n_layers - 1:
            raise ValueError(f"active must have n_layers - 1 = {n_layers - 1} entries")
        raw = [w if a else 0.0 for w, a in zip(raw, active, strict=True)]
    total = sum(raw)
    return [w / total for w in raw] if total > 0 else [0.0] * len(raw)


def exit_curriculum_mask(
    n_layers: int,
    step: int,
    curriculum: ExitCurriculum = "none",
    *,
    rotation: int = 2,
    gradual_steps: int = 100,
) -> list[bool]:
    """Which intermediate exits ``1..L-1`` the early-exit loss uses at training ``step``.

    LayerSkip curricula (arXiv 2404.16710): ``"none"`` all exits; ``"rotational"`` exit ``l`` is on
    when ``l % R == step % R`` (R = ``rotation``), so a different subset each step;
    ``"gradual"`` exits are enabled from the last layer downward, exit ``l`` once
    ``step >= (L - l) * gradual_steps`` (none at step 0, exit ``L-1`` after ``gradual_steps``).
    """
    layers = range(1, n_layers)
    if curriculum == "none":
        return [True for _ in layers]
    if curriculum == "rotational":
        return [i % rotation == step % rotation for i in layers]
    if curriculum == "gradual":
        enabled = step // gradual_steps  # how many exits, counted from the top
        return [n_layers - i <= enabled for i in layers]
    raise ValueError(
        f"exit_curriculum must be one of 'none', 'rotational', 'gradual', got {curriculum!r}"
    )


def layer_dropout_rates(
    n_layers: int, p_max: float, schedule: LayerDropoutSchedule = "quadratic"
) -> list[float]:
    """Per-layer probability of skipping block ``l = 1..L`` in training, growing with depth.

    ``"quadratic"``: ``p_max (l / L)^2`` (BitSkip, arXiv 2510.23766); ``"exponential"``:
    ``p_max (2^((l - 1) / (L - 1)) - 1)`` (LayerSkip, arXiv 2404.16710: 0 at the first layer,
    ``p_max`` at the last); ``"uniform"``: ``p_max`` for every layer.
    """
    if not 0.0 <= p_max < 1.0:
        raise ValueError(f"layer_dropout (p_max) must be in [0, 1), got {p_max!r}")
    if schedule == "quadratic":
        return [p_max * (i / n_layers) ** 2 for i in range(1, n_layers + 1)]
    if schedule == "exponential":
        if n_layers == 1:
            return [p_max]
        return [p_max * (2.0 ** ((i - 1) / (n_layers - 1)) - 1.0) for i in range(1, n_layers + 1)]
    if schedule == "uniform":
        return [p_max] * n_layers
    raise ValueError(
        f"layer_dropout_schedule must be one of 'quadratic', 'exponential', 'uniform', "
        f"got {schedule!r}"
    )
