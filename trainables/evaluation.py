"""Periodic evaluation, always at lam = 1 (quantized layers evaluate fully quantized)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.build import TaskData
from trainables.config import RunConfig
from trainables.data import ByteCorpus, iterate_batches
from trainables.parallel import unwrap

EVAL_IMAGE_BATCH = 512


@torch.no_grad()
def evaluate(model: nn.Module, data: TaskData, cfg: RunConfig) -> dict[str, float]:
    """Validation metrics: ``val/loss`` and ``val/bpb`` (bytes) or ``val/acc`` (images).

    A byte LM with early exit is evaluated at full depth for ``val/loss``; its early-exit
    inference is measured too (``val/loss_exit``, ``route/exit_layer``: the mean exit layer).
    """
    raw = unwrap(model)
    was_training = raw.training
    model.eval()
    try:
        if isinstance(data, ByteCorpus):
            return _evaluate_lm(model, raw, data, cfg)
        return _evaluate_images(model, data)
    finally:
        model.train(was_training)


def _lm_loss(
    model: nn.Module, data: ByteCorpus, cfg: RunConfig, seq_len: int
) -> tuple[float, float, dict[int, int]]:
    total = tokens = exit_layers = batches = 0.0
    exits: dict[int, int] = {}
    for x, y in data.iter_eval_batches(
        "val", batch_size=cfg.train.batch_size, seq_len=seq_len, max_batches=cfg.data.eval_batches
    ):
        device = next(model.parameters()).device
        out = model(x.to(device), targets=y.to(device))
        total += float(out.task_loss) * y.numel()
        tokens += y.numel()
        exit_layers += float(out.metrics.get("route/exit_layer", 0.0))
        batches += 1
        per_sequence = getattr(unwrap(model), "last_exit_layers", None)
        if per_sequence is not None:
            for layer in per_sequence.tolist():
                exits[int(layer)] = exits.get(int(layer), 0) + 1
    return total / tokens, exit_layers / max(batches, 1), exits


def _evaluate_lm(
    model: nn.Module, raw: nn.Module, data: ByteCorpus, cfg: RunConfig
) -> dict[str, float]:
    seq_len = min(raw.config.seq_len, data.num_bytes("val") - 1)
    early_exit = getattr(raw, "exit_gates", None) is not None
    if early_exit:
        raw.exit_at_inference = False
    loss, _, _ = _lm_loss(model, data, cfg, seq_len)
    metrics = {"val/loss": loss, "val/bpb": loss / math.log(2)}
    if early_exit:
        raw.exit_at_inference = True
        exit_loss, exit_layer, exits = _lm_loss(model, data, cfg, seq_len)
        metrics["val/loss_exit"] = exit_loss
        metrics["route/exit_layer"] = exit_layer
        sequences = max(sum(exits.values()), 1)
        for layer in range(1, raw.config.n_layers + 1):
            # the exit-layer distribution of early-exit inference on the validation windows
            metrics[f"route/exit_frac/{layer}"] = exits.get(layer, 0) / sequences
    return metrics


def _evaluate_images(model: nn.Module, data: TaskData) -> dict[str, float]:
    loss = correct = count = 0.0
    device = next(model.parameters()).device
    for x, y in iterate_batches(data.test_images, data.test_labels, batch_size=EVAL_IMAGE_BATCH):
        logits = model(x.to(device)).logits
        y = y.to(device)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(dim=1) == y).sum())
        count += y.numel()
    return {"val/loss": loss / count, "val/acc": correct / count}
