"""The joint loss: the task loss plus whichever terms the run config enables.

Each enabled term is reported under its metric-contract name (``loss/quant``, ``loss/route``, ...;
declared, with the runs that report each, in :mod:`trainables.metric_names`) and weighted by its
config weight; a disabled term is never computed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trainables.config import RunConfig
from trainables.models.bit_telemetry import regularizer_terms
from trainables.models.outputs import ModelOutput
from trainables.quant import (
    ActivationCapture,
    BinRegConfig,
    BitBalancedCrossEntropy,
    bin_reg_terms,
    br_active,
    br_warmup_steps,
    freeze_alpha,
    quantization_mse,
    record_quant_errors,
    render_br_banner,
)
from trainables.quant.registry import LEARNED_STEP_SIZES


class LossDivergedError(RuntimeError):
    """A loss term became NaN or infinite; the message names the term and the step."""


class TrainingObjective:
    """Computes the weighted joint loss of one training step for a single-device model."""

    def __init__(self, cfg: RunConfig, model: nn.Module) -> None:
        self.cfg = cfg
        self.model = model
        loss = cfg.loss
        if loss.lambda_q > 0:
            # computed inside forward, where sharded (FSDP2) weights are whole
            record_quant_errors(model)
        self.br = BinRegConfig(
            lambda_br=loss.lambda_br,
            lambda_br_act=loss.lambda_br_act,
            br_backprop_to_alpha_act=loss.br_backprop_to_alpha_act,
            br_warmup_frac=loss.br_warmup_frac,
            freeze_alpha=loss.freeze_alpha,
        )
        # Hooks exist only when A-BR is on, so a run without it pays nothing for them.
        self.capture = ActivationCapture(model, enabled=loss.lambda_br_act > 0).__enter__()
        self.br_stage = False
        # seed 000's --loss_fn: the bit-balanced cross-entropy wraps the task cross-entropy
        self.task_loss_fn: BitBalancedCrossEntropy | None = None
        if loss.fn == "bit_balanced_ce":
            self.task_loss_fn = BitBalancedCrossEntropy(
                loss.bit_loss_weight, loss.bit_loss_normalize
            ).set_model(model)
        # bit_lm telemetry regularizers: only the weighted ones are computed; S's reference
        # distribution of the data bits is set by the loop (trainables.bit_control)
        weights = {"K": loss.lambda_K, "C": loss.lambda_C, "S": loss.lambda_S}
        self.telemetry_weights = {name: w for name, w in weights.items() if w > 0}
        self.telemetry_reference: Tensor | None = None

    def banner(self) -> str | None:
        """Seed 002's BR configuration banner, for runs of a scheme with learned step sizes."""
        if not self.cfg.quant.has(LEARNED_STEP_SIZES):
            return None
        return render_br_banner(self.br, self.cfg.train.steps)

    def begin_step(self, step: int) -> None:
        """Per-step stage changes (BR warm-up, step-size freezing); called before forward."""
        self.capture.clear()
        cfg = self.cfg
        entering = br_active(step, cfg.train.steps, cfg.loss.br_warmup_frac)
        if entering and not self.br_stage and cfg.loss.freeze_alpha:
            # seed 002: after the LSQ-only warm-up no loss may move any step size
            freeze_alpha(self.model)
        self.br_stage = entering

    def br_start_step(self) -> int:
        """The first step of the BR stage."""
        return br_warmup_steps(self.cfg.train.steps, self.cfg.loss.br_warmup_frac)

    def __call__(self, out: ModelOutput, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """``(total, terms)``: the loss to minimize and every unweighted term by metric name."""
        loss = self.cfg.loss
        if out.task_loss is None:
            raise ValueError("the model returned no task loss: call it with targets")
        terms: dict[str, Tensor] = {"loss/task": out.task_loss}
        total = out.task_loss
        if self.task_loss_fn is not None:
            total = self.task_loss_fn.combine(out.task_loss)
            terms["loss/bits"] = self.task_loss_fn.last_terms["bits"]
        if loss.lambda_q > 0:
            terms["loss/quant"] = quantization_mse(self.model, recorded=True)
            total = total + loss.lambda_q * terms["loss/quant"]
        if loss.lambda_r > 0 and "route" in out.aux_losses:
            terms["loss/route"] = out.aux_losses["route"]
            if step >= loss.route_warmup_frac * self.cfg.train.steps:  # routing warm-up
                total = total + loss.lambda_r * terms["loss/route"]
        if loss.lambda_exit > 0 and "exit" in out.aux_losses:
            terms["loss/exit"] = out.aux_losses["exit"]
            total = total + loss.lambda_exit * terms["loss/exit"]
        if self.br.enabled and self.br_stage:
            br = bin_reg_terms(self.model, self.br, self.capture)
            if "br_w" in br:
                terms["loss/br_w"] = br["br_w"]
                total = total + loss.lambda_br * br["br_w"]
            if "br_act" in br:
                terms["loss/br_a"] = br["br_act"]
                total = total + loss.lambda_br_act * br["br_act"]
        if loss.lambda_act > 0 and "ponder" in out.aux_losses:
            # ACT's ponder cost N + R (Graves 2016), bit_lm with model.act
            terms["loss/ponder"] = out.aux_losses["ponder"]
            total = total + loss.lambda_act * terms["loss/ponder"]
        if self.telemetry_weights:  # bit_lm: 1 - K, 1 - C~, 1 - S (seed 004)
            telemetry = regularizer_terms(
                out.logits, self.telemetry_weights, q_ref=self.telemetry_reference
            )
            for name, value in telemetry.items():
                terms[f"loss/{name}"] = value
                total = total + self.telemetry_weights[name] * value
        return total, terms

    def close(self) -> None:
        """Release hooks and other resources."""
        record_quant_errors(self.model, enabled=False)
        self.capture.close()


def check_finite(total: Tensor, terms: dict[str, Tensor], step: int) -> None:
    """Raise :class:`LossDivergedError` naming the first non-finite term at ``step``."""
    if math.isfinite(float(total.detach())):
        return
    for name, value in terms.items():
        if not bool(torch.isfinite(value.detach()).all()):
            raise LossDivergedError(
                f"{name} became {float(value.detach())} at step {step}; lower train.lr or the "
                f"weight of that term, or enable train.grad_clip"
            )
    raise LossDivergedError(f"the total loss became {float(total.detach())} at step {step}")
