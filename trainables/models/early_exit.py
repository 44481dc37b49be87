"""Learnable early exit (seed 001, BitSkip arXiv 2510.23766) and LayerSkip (arXiv 2404.16710).

Pieces, each a pure function or a small module so that they are unit-tested on their own:

- :class:`ExitGate`: ``p = sigmoid(Linear(ReLU(Linear(LayerNorm(h)))))`` per token, a Bernoulli
  sample through a straight-through estimator in training, a threshold at inference.
- :func:`exit_distribution`, :func:`expected_exit`, :func:`routing_loss`: the routing objective.
- :func:`realized_exit`, :func:`routed_task_loss`: the task loss scored at the exit the gates
  choose per token, so the task loss itself trains the gates (LayerSkip / CALM training signal).
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

from .lm_config import ExitCurriculum, ExitLossWeighting, ExitTaskLoss, LayerDropoutSchedule


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
    """Per-token exit gate of seed 001 (BitSkip, arXiv 2510.23766).

    ``p = sigmoid(Linear(Dropout(ReLU(Linear(LayerNorm(h))))))`` with hidden width ``d_model // 4``
    and dropout ``gate_dropout`` (0.1 in the seed; dropout and ReLU commute, so the seed's listing
    order ``Linear, Dropout, ReLU`` is the same function). The linear layers are
    :class:`FloatLinear`, so the gates stay full precision under every quantization scheme.

    Args:
        d_model: width of the hidden state it reads.
        hidden: width of the gate MLP (the model uses ``d_model // 4``).
        threshold: inference exits where ``p > threshold``.
        dropout: dropout rate on the gate's hidden layer (active in training only).
    """

    def __init__(
        self, d_model: int, hidden: int, threshold: float = 0.5, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"gate dropout must be in [0, 1), got {dropout!r}")
        self.norm = nn.LayerNorm(d_model)
        self.fc1 = FloatLinear(d_model, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = FloatLinear(hidden, 1)
        self.threshold = threshold

    def probability(self, h: Tensor) -> Tensor:
        """Exit probability per token: ``h`` ``[..., D]`` -> ``[...]`` in (0, 1)."""
        hidden = self.drop(F.relu(self.fc1(self.norm(h))))  # [..., hidden]
        return torch.sigmoid(self.fc2(hidden)).squeeze(-1)

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


def realized_exit(samples: Tensor) -> Tensor:
    """One-hot exit ``e_l = z_l * prod_{i<l} (1 - z_i)`` of hard gate samples (``z_L = 1``).

    ``samples``: ``[..., L]`` decisions in {0, 1} (the last entry is ignored, as in
    :func:`exit_distribution`: a token that reaches layer L exits there) -> ``[..., L]``, one 1
    at the first layer whose gate fired. With straight-through samples (:func:`bernoulli_ste`)
    the result keeps a gradient to every gate the token reached: at hard values
    ``d e_k / d z_l`` is what turns ``sum_k e_k c_k`` into the finite difference of
    :func:`routed_task_loss`.
    """
    return exit_distribution(samples)


def routed_task_loss(
    layer_losses: Tensor, gate_probs: Tensor, gate_samples: Tensor, mode: ExitTaskLoss
) -> tuple[Tensor, Tensor]:
    """The per-token task loss at the exit the gates choose, and the exit weights it used.

    ``layer_losses`` ``[..., L]``: the cross-entropy ``c_l`` of each exit's prediction (shared
    final norm and head on ``h_l``); ``gate_probs`` / ``gate_samples`` ``[..., L]``: the gates'
    probabilities and straight-through samples (last entries ignored, the last layer always
    exits). Returns ``(loss [...], weights [..., L])``.

    - ``"sampled"``: ``sum_l e_l c_l`` with ``e`` the :func:`realized_exit` of the samples, so
      the loss is the cross-entropy at the realized exit. Through the straight-through estimator
      the gradient to gate ``l`` of a token that reached it is ``c_l - c_next`` (``c_next``: the
      loss at the exit the token took, or would take after ``l``): the gate learns to fire where
      exiting costs nothing against going on. This is the training signal of LayerSkip
      (arXiv 2404.16710) and CALM (Schuster et al. 2022, arXiv 2207.07061): an exit is judged by
      its own prediction; the routing loss ``(E - target)^2`` of BitSkip (arXiv 2510.23766) is the
      compute cost that pulls the exits earlier.
    - ``"expected"``: ``sum_l p_exit(l) c_l``, the expected loss under the exit distribution
      (:func:`exit_distribution`): an exact, noise-free gradient ``reach_l (c_l - E[c | past l])``
      for the same trade-off.

    The gates read the hidden states detached (``ByteLM``): their learning signal arrives
    through the exit weights, not through ``h``, so detaching loses them nothing, while it keeps
    the routing loss and the choice of exit from bending the trunk's features towards firing the
    gates. The per-layer losses are not detached: the exit a token took is trained on it (and,
    with the LayerSkip exit loss, every exit is trained on every token).
    """
    if mode == "sampled":
        weights = realized_exit(gate_samples)  # [..., L] one-hot in the forward pass
    elif mode == "expected":
        weights = exit_distribution(gate_probs)  # [..., L] sums to 1
    else:
        raise ValueError(f"exit_task_loss must be 'sampled' or 'expected' here, got {mode!r}")
    return (weights * layer_losses).sum(-1), weights


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
