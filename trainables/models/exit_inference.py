"""Early-exit inference of the byte LM: per token (default) or per sequence (seed 001).

Per token (``exit_mode: token``): after block ``l < L`` every still-active token whose gate gives
``p_exit > exit_threshold`` (seed 001's rule) exits: its hidden state is frozen and the final norm
and head read it. Under causal attention the later tokens still attend to it, so an exited token
keeps serving as key and value in the later blocks: its frozen state is normed and projected to
keys and values there (CALM, Schuster et al. 2022, arXiv 2207.07061, propagates exited states the
same way), while its query, attention, output projection and FFN are skipped. A block with every
token active runs densely; a block with none left is not run at all.

Per sequence (``exit_mode: sequence``): a sequence whose aggregated gate probability exceeds the
threshold leaves the batch, and the later blocks run on the remaining rows only.

Both return the hidden state at each token's exit, its exit layer and, per block, the number of
tokens whose block computation ran (the query/FFN work; ``compute_frac`` is their sum over
``L * B * T``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .lm import ByteLM


def active_positions(active: Tensor) -> tuple[Tensor, Tensor]:
    """Gather the active positions of each row: ``[B, T]`` bool -> ``(pos, valid)``, ``[B, M]``.

    ``M`` is the largest number of active tokens in a row; ``pos[b, :count_b]`` are row ``b``'s
    active positions in increasing order and ``valid`` marks them (the rest is padding).
    """
    counts = active.sum(dim=1)  # [B]
    m = int(counts.max()) if active.numel() else 0
    # a stable sort on "inactive" puts the active positions first, in their original order
    order = torch.argsort((~active).to(torch.uint8), dim=1, stable=True)  # [B, T]
    pos = order[:, :m]  # [B, M]
    valid = torch.arange(m, device=active.device)[None, :] < counts[:, None]  # [B, M]
    return pos, valid


def token_exit(
    model: ByteLM, h: Tensor, cos: Tensor, sin: Tensor
) -> tuple[Tensor, Tensor, list[int]]:
    """Per-token early exit from the embeddings ``h`` ``[B, T, D]``.

    Returns ``(h_exit [B, T, D], exit_layer [B, T] (1..L), block_tokens [L])``.
    """
    assert model.exit_gates is not None
    n = model.config.n_layers
    threshold = model.config.exit_threshold
    b, t, _ = h.shape
    active = torch.ones(b, t, dtype=torch.bool, device=h.device)  # [B, T]
    exit_layer = torch.full((b, t), n, dtype=torch.long, device=h.device)  # [B, T]
    block_tokens: list[int] = []
    for layer, block in enumerate(model.blocks, start=1):
        count = int(active.sum())
        block_tokens.append(count)
        if count == 0:
            continue  # every token has exited: the block is not run
        if count == b * t:
            h = block(h, cos, sin)  # [B, T, D] dense: nothing to skip
        else:
            pos, valid = active_positions(active)  # [B, M] each
            h = block(h, cos, sin, pos, valid)  # [B, T, D]: only the active tokens' compute
        if layer == n:
            break
        where = active.nonzero(as_tuple=True)  # the N active tokens
        p = model.exit_gates[layer - 1].probability(h[where])  # [N]: gates on active tokens only
        fire = p > threshold  # [N]
        if bool(fire.any()):
            rows, cols = where[0][fire], where[1][fire]
            exit_layer[rows, cols] = layer
            active[rows, cols] = False
    return h, exit_layer, block_tokens


def sequence_exit(
    model: ByteLM, h: Tensor, cos: Tensor, sin: Tensor
) -> tuple[Tensor, Tensor, list[int]]:
    """Per-sequence early exit: exited sequences leave the batch, later blocks skip them.

    A sequence exits after block ``l`` when ``exit_aggregate`` of its tokens' gate probabilities
    exceeds the threshold. Returns ``(h_exit [B, T, D], exit_layer [B, T], block_tokens [L])``.
    """
    assert model.exit_gates is not None
    n = model.config.n_layers
    b, t, _ = h.shape
    active = torch.arange(b, device=h.device)  # [b'] rows of the batch still running
    final = torch.empty_like(h)  # [B, T, D] hidden state at each sequence's exit
    exit_layer = torch.full((b,), n, dtype=torch.long, device=h.device)  # [B]
    block_tokens: list[int] = []
    for layer, block in enumerate(model.blocks, start=1):
        block_tokens.append(int(active.numel()) * t)
        if active.numel() == 0:
            continue
        h = block(h, cos, sin)  # [b', T, D]
        if layer == n:
            break
        fire = sequence_decision(model, model.exit_gates[layer - 1].probability(h))  # [b']
        if bool(fire.any()):
            done = active[fire]
            final[done] = h[fire]
            exit_layer[done] = layer
            active, h = active[~fire], h[~fire]
    if active.numel() > 0:
        final[active] = h
    return final, exit_layer[:, None].expand(b, t), block_tokens


def sequence_decision(model: ByteLM, p: Tensor) -> Tensor:
    """Which sequences exit: gate probabilities ``[b, T]`` -> ``[b]`` bool (``exit_aggregate``)."""
    cfg = model.config
    if cfg.exit_aggregate == "all":
        return (p > cfg.exit_threshold).all(dim=-1)
    if cfg.exit_aggregate == "last":
        return p[:, -1] > cfg.exit_threshold
    return p.mean(dim=-1) > cfg.exit_threshold
