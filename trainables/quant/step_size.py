"""Step-size control for LSQ models: list, freeze and unfreeze every learnable step ("alpha").

Seed 002's ``--freeze-alpha``: after the LSQ-only warm-up, no loss (cross-entropy, W-BR or A-BR)
updates any step size again. The trainer calls :func:`freeze_alpha` once, at the first step of the
bin-regularization stage (``br_active(step, ...)`` turning true, see ``bin_reg``)::

    for step in range(total_steps):
        if config.freeze_alpha and step == br_warmup_steps(total_steps, config.br_warmup_frac):
            freeze_alpha(model)
        ...  # forward, loss, optimizer.zero_grad(), backward, optimizer.step()

Frozen steps get ``requires_grad = False`` (autograd computes no gradient for them, so no loss can
reach them) and ``grad = None`` (PyTorch optimizers skip parameters without a gradient, so neither
momentum nor weight decay moves them). The optimizer may keep them in its parameter groups.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .lsq import LSQLayer, LSQQuantizer


def step_size_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every LSQ step-size parameter of ``model`` (weights' and activations'), in module order.

    Useful for a separate optimizer parameter group (LSQ trains steps like any other parameter,
    Esser et al., ICLR 2020) and for reporting.
    """
    return [m.step for m in model.modules() if isinstance(m, LSQQuantizer)]


def freeze_alpha(model: nn.Module) -> int:
    """Freeze every LSQ step size of ``model`` (seed 002's ``--freeze-alpha``); returns how many.

    Sets ``requires_grad = False`` and drops any stored gradient, so that neither a loss nor an
    optimizer step (momentum, weight decay) changes a step size afterwards.
    """
    params = step_size_parameters(model)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return len(params)


def unfreeze_alpha(model: nn.Module) -> int:
    """Make every LSQ step size of ``model`` learnable again; returns how many."""
    params = step_size_parameters(model)
    for p in params:
        p.requires_grad_(True)
    return len(params)


def alpha_frozen(model: nn.Module) -> bool:
    """True when ``model`` has LSQ step sizes and none of them is learnable."""
    params = step_size_parameters(model)
    return bool(params) and not any(p.requires_grad for p in params)


def initialize_step_sizes(model: nn.Module, run: Callable[[], object]) -> int:
    """Initialize the LSQ step sizes not yet initialized, from one calibration forward ``run()``.

    LSQ initializes a step lazily, at the first forward that quantizes (Esser et al., ICLR 2020:
    activations from the first batch). Calling this explicitly, with quantization forced on
    (lam = 1) for that pass only and no autograd, lets the trainer pick the batch: a training batch
    even when the lam schedule starts at 0, and before wrapping the model for DDP, whose
    constructor broadcasts rank 0's parameters so that every rank starts from the same steps.
    Returns the number of initialized step sizes in ``model`` afterwards.
    """
    layers = [m for m in model.modules() if isinstance(m, LSQLayer)]
    saved = [(m.quant_lambda, m.eval_lambda) for m in layers]
    try:
        for layer in layers:
            layer.quant_lambda, layer.eval_lambda = 1.0, 1.0
        with torch.no_grad():
            run()
    finally:
        for layer, (lam, eval_lam) in zip(layers, saved, strict=True):
            layer.quant_lambda, layer.eval_lambda = lam, eval_lam
    return sum(m.is_initialized for m in model.modules() if isinstance(m, LSQQuantizer))
