"""Distillation after training (``distill.enabled``, seed 004's collapse) for a bit-LM run.

The teacher's training windows (``distill.candidates`` of them) are clustered on its mean hidden
states; the ``distill.k`` representatives train a student ``distill.d_model_scale`` times as wide
(quantized like the teacher) for ``distill.steps`` steps; when the student's telemetry misses a
floor (``telemetry.floor_C``, ``telemetry.floor_S``) a student ``distill.width_scale`` times wider
is trained once more (:func:`trainables.models.bit_distill.collapse`). The attempts become
``distilled_metrics.json`` (achieved vs floor values) and ``distill/*`` metrics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainables.bit_control import BitLMControl
from trainables.build import Architecture, build_model
from trainables.config import RunConfig
from trainables.data import BitCorpus
from trainables.models.bit_diffusion import denoising_batch
from trainables.models.bit_distill import (
    activation_summaries,
    collapse,
    representatives,
    scaled_width,
)
from trainables.quant import LSQLayer, initialize_step_sizes, set_quant_lambda


def distill(
    cfg: RunConfig,
    teacher: nn.Module,
    architecture: Architecture,
    data: BitCorpus,
    control: BitLMControl,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Distill ``teacher``; returns the ``distill/*`` metrics and the attempt records."""
    d, m = cfg.distill, cfg.model
    device = next(teacher.parameters()).device
    g = torch.Generator().manual_seed(cfg.train.seed + 31)
    x, y = data.get_batch("train", d.candidates, teacher.config.seq_len, g)
    chosen = representatives(activation_summaries(teacher, x.to(device)), d.k, generator=g)
    rep_x, rep_y = x[chosen], y[chosen]  # [k, T] each
    noise_g = torch.Generator().manual_seed(cfg.train.seed + 37)

    def batch(step: int) -> tuple[Tensor, Tensor]:
        if teacher.config.causal:
            return rep_x.to(device), rep_y.to(device)
        inputs, targets = denoising_batch(
            rep_x, schedule=cfg.diffusion.schedule, noise=cfg.diffusion.noise, generator=noise_g
        )
        return inputs.to(device), targets.to(device)

    def make_student(width: int) -> nn.Module:
        config = dict(architecture.config)
        teacher_width = config["d_model"]
        config.update(d_model=width, pos_dim=None)
        if config.get("d_ff"):
            config["d_ff"] = max(1, round(config["d_ff"] * width / teacher_width))
        torch.manual_seed(cfg.train.seed + width)
        student = build_model(cfg, Architecture("bit_lm", config)).to(device)
        set_quant_lambda(student, 1.0)  # post-training: the student trains fully quantized
        if any(isinstance(layer, LSQLayer) for layer in student.modules()):
            initialize_step_sizes(student, lambda: student(rep_x.to(device)))
        return student

    width = teacher.config.d_model
    widths = (scaled_width(width, d.d_model_scale, m.n_heads),
              scaled_width(width, d.d_model_scale * d.width_scale, m.n_heads))  # fmt: skip
    floors = {"C": cfg.telemetry.floor_C, "S": cfg.telemetry.floor_S}
    attempts = collapse(
        teacher, batch, make_student=make_student, measure=control.measure, floors=floors,
        widths=widths, steps=d.steps, lr=cfg.train.lr,
    )  # fmt: skip
    for record in attempts:
        record["representatives"] = chosen.tolist()
    last = attempts[-1]
    metrics = {
        "distill/attempts": float(len(attempts)),
        "distill/passed": float(last["passed"]),
        "distill/d_model": float(last["d_model"]),
        "distill/params": float(last["params"]),
        **{f"distill/{key}": value for key, value in last["achieved"].items()},
    }
    return metrics, attempts
