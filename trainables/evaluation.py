"""Periodic evaluation, always at lam = 1 (quantized layers evaluate fully quantized)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables import metric_names as names
from trainables.build import TaskData
from trainables.config import RunConfig
from trainables.data import BitCorpus, ByteCorpus, bits_to_bytes, iterate_batches, parity_positions
from trainables.exit_eval import evaluate_early_exit
from trainables.parallel import unwrap

EVAL_IMAGE_BATCH = 512
BIT_EVAL_GEN_SEQUENCES = 4  # bit LM: sequences sampled for val/parity_error
BIT_EVAL_GEN_BYTES = 4  # bit LM: bytes sampled per sequence


@torch.no_grad()
def evaluate(model: nn.Module, data: TaskData, cfg: RunConfig) -> dict[str, float]:
    """Validation metrics: ``val/loss`` and ``val/bpb`` (bytes) or ``val/acc`` (images).

    A byte LM with early exit is evaluated at full depth for ``val/loss``; its early-exit
    inference is measured too (``val/loss_exit``, ``val/exit_layer_mean``, ``val/compute_frac``
    and the exit distribution, see :mod:`trainables.exit_eval`).
    """
    raw = unwrap(model)
    was_training = raw.training
    model.eval()
    try:
        if isinstance(data, BitCorpus):
            return _evaluate_bit_lm(model, raw, data, cfg)
        if isinstance(data, ByteCorpus):
            return _evaluate_lm(model, raw, data, cfg)
        return _evaluate_images(model, data)
    finally:
        model.train(was_training)


def _lm_loss(model: nn.Module, data: ByteCorpus, cfg: RunConfig, seq_len: int) -> float:
    total = tokens = 0.0
    for x, y in data.iter_eval_batches(
        "val", batch_size=cfg.train.batch_size, seq_len=seq_len, max_batches=cfg.data.eval_batches
    ):
        device = next(model.parameters()).device
        out = model(x.to(device), targets=y.to(device))
        total += float(out.task_loss) * y.numel()
        tokens += y.numel()
    return total / tokens


def _evaluate_lm(
    model: nn.Module, raw: nn.Module, data: ByteCorpus, cfg: RunConfig
) -> dict[str, float]:
    seq_len = min(raw.config.seq_len, data.num_bytes("val") - 1)
    early_exit = getattr(raw, "exit_gates", None) is not None
    if early_exit:
        raw.exit_at_inference = False
    loss = _lm_loss(model, data, cfg, seq_len)
    # bits per byte of text: loss per token * tokens / bytes (a TokenCorpus knows the ratio)
    per_byte = getattr(data, "tokens_per_byte", 1.0)
    metrics = {names.VAL_LOSS: loss, names.VAL_BPB: loss / math.log(2) * per_byte}
    if early_exit:  # val/loss_exit, val/exit_layer_mean, val/compute_frac, exit distribution
        metrics.update(evaluate_early_exit(model, raw, data, cfg, seq_len))
    return metrics


def _evaluate_bit_lm(
    model: nn.Module, raw: nn.Module, data: BitCorpus, cfg: RunConfig
) -> dict[str, float]:
    """The causal bit LM (seed 004) on the validation bytes, read as 9 bits each.

    ``val/loss`` is the mean cross-entropy per bit (nats); ``val/bpb`` is bits per byte of text,
    the sum of the 9 bit cross-entropies of each byte (8 data bits and the parity bit) in bits,
    so it compares with the byte LM's ``val/bpb`` (parity is a function of the 8 data bits, a
    good model pays ~0 for it); ``val/bpb_parity`` is the parity bit's share of it.
    ``val/parity_error``: the share of sampled bytes (``BIT_EVAL_GEN_SEQUENCES`` validation
    prefixes, ``BIT_EVAL_GEN_BYTES`` bytes each, temperature 1, seeded by ``train.seed``) whose
    parity bit is wrong. With ACT, ``val/act_mean_layers`` is the mean halting layer.
    """
    if not raw.config.causal:
        return {}  # the diffusion denoiser is evaluated by its own integration (bit_diffusion)
    device = next(model.parameters()).device
    seq_len = min(raw.config.seq_len, 9 * (data.num_bytes("val") - 1))
    seq_len -= seq_len % 9
    total = parity = bits = act_layers = batches = 0.0
    prefix: torch.Tensor | None = None
    for x, y in data.iter_eval_batches(
        "val", batch_size=cfg.train.batch_size, seq_len=seq_len, max_batches=cfg.data.eval_batches
    ):
        out = model(x.to(device))
        ce = F.cross_entropy(
            out.logits.float().transpose(1, 2), y.to(device), reduction="none"
        )  # [b, T] nats
        total += float(ce.sum())
        parity += float(ce[:, parity_positions(y.shape[1], offset=1).to(device)].sum())
        bits += y.numel()
        act_layers += float(out.metrics.get("act/mean_layers", 0.0))
        batches += 1
        if prefix is None:
            prefix = x[:BIT_EVAL_GEN_SEQUENCES, : 9 * max(1, min(8, seq_len // 18))]
    loss = total / bits
    byte_count = bits / 9
    metrics = {
        names.VAL_LOSS: loss,
        names.VAL_BPB: 9 * loss / math.log(2),
        names.VAL_BPB_PARITY: parity / byte_count / math.log(2),
    }
    if getattr(raw.config, "act", False):
        metrics[names.VAL_ACT_MEAN_LAYERS] = act_layers / max(batches, 1)
    assert prefix is not None
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
    sampled = raw.generate(prefix.to(device), BIT_EVAL_GEN_BYTES, generator=generator)
    _, parity_ok = bits_to_bytes(sampled[:, prefix.shape[1] :])  # [b, n] bool
    metrics[names.VAL_PARITY_ERROR] = 1.0 - float(parity_ok.float().mean())
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
    return {names.VAL_LOSS: loss / count, names.VAL_ACC: correct / count}
