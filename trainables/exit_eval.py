"""Validation of early-exit inference (seed 001): what a user trades, loss against compute.

Runs the byte LM's early-exit inference (per token or per sequence, ``model.exit_mode``) over the
validation windows and reports, over every validation token:

- ``val/loss_exit``: the mean cross-entropy (nats) of the predictions at the realized exits;
- ``val/exit_layer_mean``: the mean realized exit layer (layers 1..L);
- ``val/compute_frac``: block computations run / (full depth x tokens), counted by the model
  (``last_block_tokens``: per block, the tokens whose query and FFN computation ran);
- ``route/exit_frac/<l>``: the share of tokens exiting at layer ``l`` (the exit distribution),
  and ``route/exit_layer`` (the same mean exit layer under its historical name).
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.config import RunConfig
from trainables.data import ByteCorpus


@torch.no_grad()
def evaluate_early_exit(
    model: nn.Module, raw: nn.Module, data: ByteCorpus, cfg: RunConfig, seq_len: int
) -> dict[str, float]:
    """Early-exit validation metrics of ``raw`` (a ``ByteLM`` with gates), in evaluation mode.

    ``model`` is what to call (possibly a data-parallel wrapper of ``raw``); ``raw`` holds the
    per-call exit bookkeeping. Leaves ``raw.exit_at_inference`` True.
    """
    raw.exit_at_inference = True
    n_layers = int(raw.config.n_layers)
    device = next(model.parameters()).device
    loss_sum = tokens = block_tokens = 0.0
    counts = torch.zeros(n_layers + 1, dtype=torch.float64)  # index = exit layer 1..L
    for x, y in data.iter_eval_batches(
        "val", batch_size=cfg.train.batch_size, seq_len=seq_len, max_batches=cfg.data.eval_batches
    ):
        out = model(x.to(device), targets=y.to(device))
        loss_sum += float(out.task_loss) * y.numel()
        tokens += y.numel()
        exits = raw.last_exit_layers  # [b, T] exit layer of each token
        counts += torch.bincount(exits.reshape(-1).cpu(), minlength=n_layers + 1).double()
        block_tokens += float(sum(raw.last_block_tokens))
    tokens = max(tokens, 1.0)
    layers = torch.arange(n_layers + 1, dtype=torch.float64)
    mean_exit = float((counts * layers).sum()) / tokens
    metrics = {
        "val/loss_exit": loss_sum / tokens,
        "val/exit_layer_mean": mean_exit,
        "val/compute_frac": block_tokens / (n_layers * tokens),
        "route/exit_layer": mean_exit,
    }
    for layer in range(1, n_layers + 1):
        metrics[f"route/exit_frac/{layer}"] = float(counts[layer]) / tokens
    return metrics
