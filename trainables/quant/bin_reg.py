"""Bin regularization (Han et al., ICCV 2021) for LSQ weights (W-BR) and activations (A-BR).

For a tensor quantized by LSQ with step ``s`` and codes ``-Q_N..Q_P``, a bin is the set of values
mapped to one integer code ``i = round(clip(v/s, -Q_N, Q_P))``; its target level is ``i * s``. The
per-tensor term (Han et al., Eq. 5) sums over the bins::

    L_BR = sum_i [ (mean(v_i) - i * s)^2 + var(v_i) ]

Normalization, stated once: within a tensor the bins are **summed** (not averaged), with the
population variance; an empty bin contributes nothing and a single-value bin only its squared
distance (its variance is 0), as in the paper. Across tensors the terms are **averaged** (the mean
over the model's quantized layers, or over the captured activation tensors), so ``lambda_br`` does
not have to change with depth, as ``quantization_mse`` does. Values are compared in their own
units (levels ``i * s``), which is what lets the gradient reach ``s``.

Seed 002 separates the two terms: W-BR (``lambda_br``) always lets its gradient reach the weight
step size; A-BR (``lambda_br_act``) reaches the activation step size only with
``br_backprop_to_alpha_act``. Training runs in two stages: LSQ only for the first
``br_warmup_frac`` of the steps, then LSQ + BR (:func:`br_active`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .lsq import MIN_STEP, LSQLayer, LSQQuantizer


def bin_regularization(
    values: Tensor, step: Tensor, q_n: int, q_p: int, *, backprop_to_step: bool = True
) -> Tensor:
    """Bin regularization of one tensor (Han et al., ICCV 2021, Eq. 5).

    ``sum`` over the non-empty bins of ``(mean(v_i) - i*s)^2 + var(v_i)`` (population variance),
    where bin ``i`` holds the values whose LSQ code ``round(clip(v/s, -Q_N, Q_P))`` is ``i``.

    Args:
        values: any shape; the gradient reaches them through the bin means and variances.
        step: LSQ's 0-d step ``s``. The bin assignment never carries a gradient (rounding).
        q_n, q_p: the code range (see ``lsq_range``).
        backprop_to_step: let the gradient reach ``s`` through the target levels ``i * s``.

    Returns:
        A 0-d float32 tensor, 0 when every value sits on its level.
    """
    v = values.reshape(-1).float()  # [N]
    s_assign = step.detach().float().clamp_min(MIN_STEP)
    s_level = (step if backprop_to_step else step.detach()).float()
    num_bins = q_n + q_p + 1
    idx = (torch.clamp(v.detach() / s_assign, -q_n, q_p).round() + q_n).long()  # [N] in [0, bins)
    # index_add instead of bincount / boolean masks: no host synchronization on a GPU
    counts = v.new_zeros(num_bins).index_add_(0, idx, torch.ones_like(v))  # [bins]
    means = v.new_zeros(num_bins).index_add(0, idx, v) / counts.clamp_min(1)  # [bins]
    deviation = v - means[idx]  # [N]
    variances = v.new_zeros(num_bins).index_add(0, idx, deviation * deviation)
    variances = variances / counts.clamp_min(1)  # [bins]
    levels = torch.arange(-q_n, q_p + 1, device=v.device, dtype=v.dtype) * s_level  # [bins]
    per_bin = (means - levels).pow(2) + variances  # [bins]
    return torch.where(counts > 0, per_bin, torch.zeros_like(per_bin)).sum()


def _mean_or_zero(terms: list[Tensor], device: torch.device) -> Tensor:
    if not terms:
        return torch.zeros((), device=device)
    return torch.stack(terms).mean()


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def weight_bin_regularization(model: nn.Module) -> Tensor:
    """W-BR: the mean over ``model``'s LSQ layers of :func:`bin_regularization` of their weights.

    The gradient always reaches the weight step sizes (Han et al. train ``s`` and the weights
    jointly), unless they were frozen with ``freeze_alpha``. 0 for a model without LSQ layers.
    """
    terms = []
    for layer in model.modules():
        if isinstance(layer, LSQLayer):
            quantizer = layer.weight_quantizer
            if not quantizer.is_initialized:  # data-free: the weights themselves
                quantizer.initialize(layer.weight)
            terms.append(bin_regularization(layer.weight, quantizer.step, *quantizer.q_range))
    return _mean_or_zero(terms, _device_of(model))


class ActivationCapture:
    """Captures the pre-quantization input of every LSQ activation quantizer, for A-BR.

    A context manager: entering registers one forward hook per activation quantizer of ``model``
    when ``enabled`` (nothing at all otherwise, so A-BR off costs nothing); leaving removes them.
    A hook records ``(name, x, quantizer)`` for forwards in training mode with lam > 0; ``x`` keeps
    its autograd graph. Call :meth:`clear` once per training step, before the forward::

        with ActivationCapture(model, enabled=config.lambda_br_act > 0) as capture:
            for step, batch in enumerate(loader):
                capture.clear()
                logits = model(batch)
                loss = ce(logits)
                if br_active(step, total_steps, config.br_warmup_frac):
                    terms = bin_reg_terms(model, config, capture)
                    loss = loss + (bin_reg_loss(terms, config) or 0.0)
    """

    def __init__(self, model: nn.Module, *, enabled: bool = True) -> None:
        self.model = model
        self.enabled = enabled
        self.records: list[tuple[str, Tensor, LSQQuantizer]] = []
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> ActivationCapture:
        if self.enabled and not self._handles:
            for name, module in self.model.named_modules():
                if isinstance(module, LSQQuantizer) and module.kind == "activation":
                    self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _hook(self, name: str) -> Any:
        def hook(module: LSQQuantizer, args: tuple[Any, ...], output: Tensor) -> None:
            lam = args[1] if len(args) > 1 else 1.0
            if module.training and lam != 0.0:
                self.records.append((name, args[0], module))

        return hook

    @property
    def num_hooks(self) -> int:
        """How many hooks are registered now (0 when disabled or closed)."""
        return len(self._handles)

    def clear(self) -> None:
        """Forget the captured activations (call once per training step)."""
        self.records.clear()

    def close(self) -> None:
        """Remove the hooks and forget the captured activations."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.records.clear()


def activation_bin_regularization(
    capture: ActivationCapture, *, backprop_to_alpha: bool = False
) -> Tensor:
    """A-BR: the mean of :func:`bin_regularization` over the captured pre-quantization inputs.

    The gradient reaches the activations (hence the layers that produced them) and, only with
    ``backprop_to_alpha`` (``br_backprop_to_alpha_act``), the activation step sizes (seed 002: the
    levels would otherwise chase a batch-dependent target). The flag concerns the levels of the
    regularized activations; step sizes of earlier layers, which helped compute those activations,
    receive the gradient through the forward graph as from any loss. 0 when nothing was captured.
    """
    terms = [
        bin_regularization(x, q.step, *q.q_range, backprop_to_step=backprop_to_alpha)
        for _, x, q in capture.records
    ]
    return _mean_or_zero(terms, _device_of(capture.model))


@dataclass(frozen=True, kw_only=True)
class BinRegConfig:
    """Bin-regularization settings (seed 002's flags, as config names).

    Attributes:
        lambda_br: weight of W-BR (weights); 0 disables it.
        lambda_br_act: weight of A-BR (activations); 0 disables it.
        br_backprop_to_alpha_act: let A-BR's gradient reach the activation step sizes.
        br_warmup_frac: fraction of the steps trained with LSQ only before BR starts, in [0, 1].
        freeze_alpha: freeze every step size when BR starts (see ``step_size.freeze_alpha``).
    """

    lambda_br: float = 0.0
    lambda_br_act: float = 0.0
    br_backprop_to_alpha_act: bool = False
    br_warmup_frac: float = 0.3
    freeze_alpha: bool = False

    def __post_init__(self) -> None:
        for name in ("lambda_br", "lambda_br_act"):
            value = getattr(self, name)
            if not value >= 0.0:  # also rejects NaN
                raise ValueError(f"{name} must be >= 0 (0 disables the term), got {value}")
        if not 0.0 <= self.br_warmup_frac <= 1.0:
            raise ValueError(f"br_warmup_frac must be in [0, 1], got {self.br_warmup_frac}")

    @property
    def enabled(self) -> bool:
        """Whether any BR term is on."""
        return self.lambda_br > 0 or self.lambda_br_act > 0


def br_warmup_steps(total_steps: int, br_warmup_frac: float) -> int:
    """Number of LSQ-only steps before BR starts: ``round(br_warmup_frac * total_steps)``."""
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    if not 0.0 <= br_warmup_frac <= 1.0:
        raise ValueError(f"br_warmup_frac must be in [0, 1], got {br_warmup_frac}")
    return round(br_warmup_frac * total_steps)


def br_active(step: int, total_steps: int, br_warmup_frac: float) -> bool:
    """Whether 0-based ``step`` is in the BR stage (Han et al.'s two-stage training)."""
    return step >= br_warmup_steps(total_steps, br_warmup_frac)


def bin_reg_terms(
    model: nn.Module, config: BinRegConfig, capture: ActivationCapture | None = None
) -> dict[str, Tensor]:
    """The enabled BR terms, unweighted: ``{"br_w": W-BR, "br_act": A-BR}``.

    A term whose lambda is 0 is absent (and never computed); ``br_act`` needs a ``capture``. The
    trainer adds ``lambda_br * terms["br_w"] + lambda_br_act * terms["br_act"]`` to the loss in
    the BR stage only (:func:`br_active`), and reports each term.
    """
    terms: dict[str, Tensor] = {}
    if config.lambda_br > 0:
        terms["br_w"] = weight_bin_regularization(model)
    if config.lambda_br_act > 0:
        if capture is None or not capture.enabled:
            raise ValueError("lambda_br_act > 0 needs an enabled ActivationCapture")
        terms["br_act"] = activation_bin_regularization(
            capture, backprop_to_alpha=config.br_backprop_to_alpha_act
        )
    return terms


def bin_reg_loss(terms: dict[str, Tensor], config: BinRegConfig) -> Tensor | None:
    """``lambda_br * br_w + lambda_br_act * br_act`` over the terms present, or None if none."""
    weights = {"br_w": config.lambda_br, "br_act": config.lambda_br_act}
    weighted = [weights[name] * value for name, value in terms.items()]
    return sum(weighted[1:], weighted[0]) if weighted else None


def render_br_banner(config: BinRegConfig, total: int, *, unit: str = "Steps") -> str:
    """Seed 002's "Starting 2-Stage QAT+BR Training" banner for ``config``.

    Args:
        config: the BR settings.
        total: number of training steps (or epochs) in the run.
        unit: what ``total`` counts, as printed (``"Steps"`` or ``"Epochs"``).
    """
    rule = "=" * 80
    warmup = br_warmup_steps(total, config.br_warmup_frac)
    stage1 = f"{unit} 1-{warmup} (LSQ only)" if warmup > 0 else "none (BR from the start)"
    stage2 = f"{unit} {warmup + 1}-{total}" if warmup < total else "none (LSQ only)"
    if warmup < total and not config.enabled:
        stage2 += " (no BR term enabled: LSQ only)"

    def state(lam: float) -> str:
        return f"λ={float(lam)} [{'ENABLED' if lam > 0 else 'DISABLED'}]"

    act_flag = config.br_backprop_to_alpha_act
    return "\n".join(
        [
            rule,
            "Starting 2-Stage QAT+BR Training",
            rule,
            f"Stage 1 (Warmup): {stage1}",
            f"Stage 2 (BR): {stage2}",
            "",
            "BR Configuration:",
            f"  - W-BR (weights): {state(config.lambda_br)}",
            "    └─> Gradients to alpha: Always enabled (paper-faithful, weights are stable)",
            f"  - A-BR (activations): {state(config.lambda_br_act)}",
            f"    └─> Gradients to alpha: {act_flag} (default: False, recommended)",
            "",
            "Alpha Control:",
            f"  - Freeze alpha after warmup: {config.freeze_alpha}",
            "    └─> If True: NO updates to alpha from ANY loss (CE or BR)",
            "    └─> If False: CE can update alpha, A-BR respects br_backprop_to_alpha_act",
            rule,
        ]
    )
