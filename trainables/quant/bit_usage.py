"""Model-wide bit usage and the bit-balanced cross-entropy of seed 000.

Any module with a ``bit_usage()`` method (returning a 0-d tensor: bits x stored parameters)
participates; :class:`~trainables.quant.adaptive.AdaptiveBitLinear` is the built-in one. The loss
adds ``bit_loss_weight * total_bits`` (divided by the number of trainable parameters with
``bit_loss_normalize``) to the cross-entropy, so that training trades accuracy against bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _reporting_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module with a ``bit_usage()`` method, outermost first.

    A module that reports its own usage is taken as a whole: its descendants are not visited, so a
    composite that sums its children is never counted twice.
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") or prefix == "" for prefix, _ in found):
            continue
        if callable(getattr(module, "bit_usage", None)):
            found.append((name, module))
    return found


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return torch.device("cpu") if tensor is None else tensor.device


def collect_bit_usage(model: nn.Module) -> dict[str, Tensor]:
    """Each reporting module's ``bit_usage()`` by qualified name (``""`` for the model itself).

    The values keep their autograd graph (seed 000's ``collect_bit_usage``).
    """
    return {name: module.bit_usage() for name, module in _reporting_modules(model)}


def compute_total_bit_usage(model: nn.Module) -> Tensor:
    """The sum of every ``bit_usage()`` in ``model`` (seed 000): a 0-d float32 tensor.

    Accumulated on the model's device (that of its first parameter, else CPU), keeping autograd so
    that a penalty on it trains the bit-widths. 0 when no module reports a usage.
    """
    total = torch.zeros((), device=_device_of(model))
    for _, module in _reporting_modules(model):
        total = total + module.bit_usage().to(device=total.device, dtype=total.dtype)
    return total


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of scalars in ``model``'s parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class BitBalancedCrossEntropy(nn.Module):
    """Cross-entropy plus ``weight * total_bits`` (seed 000's bit-balanced loss).

    ``loss = CE(logits, targets) + weight * compute_total_bit_usage(model) [/ n_trainable]``, the
    division by the number of trainable parameters applying when ``normalize`` is on (a
    scale-invariant regularizer). Call :meth:`set_model` with the raw model (not a DDP wrapper)
    before the first use. The last two terms are kept, detached, in ``last_terms`` for reporting.

    Args:
        weight: ``bit_loss_weight``, >= 0 (0 leaves plain cross-entropy).
        normalize: ``bit_loss_normalize``.
        ignore_index, label_smoothing: passed to ``F.cross_entropy``.
    """

    def __init__(
        self,
        weight: float = 0.0,
        normalize: bool = False,
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not weight >= 0.0:  # also rejects NaN
            raise ValueError(f"bit_loss_weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.normalize = bool(normalize)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.last_terms: dict[str, Tensor] = {}
        # kept out of the module tree: the loss must not own (or save) the model
        self.__dict__["_model"] = None

    def set_model(self, model: nn.Module) -> BitBalancedCrossEntropy:
        """Give the loss the model whose ``bit_usage()`` modules it penalizes; returns self."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"set_model expects an nn.Module, got {type(model).__name__}")
        self.__dict__["_model"] = model
        return self

    @property
    def model(self) -> nn.Module | None:
        """The model given to :meth:`set_model`, or None."""
        return self.__dict__["_model"]

    def bit_penalty(self) -> Tensor:
        """``weight * total_bits`` (divided by the trainable parameter count when normalizing)."""
        return self.weight * self.bits()

    def bits(self) -> Tensor:
        """The unweighted bit term: total bits, or bits per trainable parameter when normalizing.

        Differentiable in the bit-widths (0-d float32, on the model's device).
        """
        model = self.model
        if model is None:
            raise RuntimeError(
                "BitBalancedCrossEntropy needs the model: call loss.set_model(model) before "
                "using it (bit_loss_weight penalizes the model's bit usage)"
            )
        total = compute_total_bit_usage(model)
        if self.normalize:
            total = total / max(count_trainable_parameters(model), 1)
        return total

    def combine(self, ce: Tensor) -> Tensor:
        """``ce + weight * bits``: the bit-balanced loss from an already computed cross-entropy.

        For a trainer whose model computes its own task cross-entropy (a language model, early
        exit); :meth:`forward` is this applied to ``F.cross_entropy(logits, targets)``. Keeps the
        unweighted terms, detached, in ``last_terms`` (``ce``, ``bits``, ``bit_penalty``).
        """
        bits = self.bits()
        penalty = self.weight * bits
        self.last_terms = {
            "ce": ce.detach(),
            "bits": bits.detach(),
            "bit_penalty": penalty.detach(),
        }
        return ce + penalty.to(ce.dtype)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``logits``: [..., C]; ``targets``: [...] class indices. Returns a 0-d loss."""
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )
        return self.combine(ce)

    def extra_repr(self) -> str:
        return f"bit_loss_weight={self.weight:g}, bit_loss_normalize={self.normalize}"
