"""The normalized Walsh–Hadamard transform used by H-BitLinear (BitNet v2, arXiv 2504.18415).

The Sylvester Hadamard matrix ``H_n / sqrt(n)`` is orthonormal and symmetric, hence its own
inverse: ``(W H)(H x) = W x``. Sizes that are not a power of two use a block-diagonal transform over
the largest power-of-two block that divides the size; a size with no such block of at least
``MIN_BLOCK`` raises.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MIN_BLOCK = 8
# Below this size one dense matmul beats log2(n) elementwise passes on CPU.
DENSE_MAX = 256


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return n > 0 and n & (n - 1) == 0


def hadamard_block_size(features: int, max_block: int | None = None) -> int:
    """The block size of the (block-diagonal) Hadamard transform over ``features``.

    The largest power of two dividing ``features`` (capped by ``max_block``). Raises ValueError when
    that block is smaller than ``MIN_BLOCK``: such a transform would barely mix the activations.
    """
    block = features & -features  # largest power of two dividing features
    if max_block is not None:
        if not is_power_of_two(max_block):
            raise ValueError(f"hadamard block_size must be a power of two, got {max_block}")
        block = min(block, max_block)
    if block < MIN_BLOCK:
        raise ValueError(
            f"the Hadamard transform needs in_features divisible by a power of two >= {MIN_BLOCK}, "
            f"got in_features={features} (largest power-of-two block {block}); use a width such as "
            f"{max(MIN_BLOCK, 2 ** round(math.log2(max(features, 1))))} or the 'ternary' scheme"
        )
    return block


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The normalized Sylvester Hadamard matrix ``[n, n]`` (n a power of two)."""
    if not is_power_of_two(n):
        raise ValueError(f"Hadamard matrix size must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return (h / math.sqrt(n)).to(dtype)


def fwht(x: Tensor, block: int | None = None) -> Tensor:
    """Normalized fast Walsh–Hadamard transform of the last dimension, block-diagonal by ``block``.

    ``O(n log n)`` with torch ops, no dense matrix. ``x``: ``[..., n]`` with ``n`` divisible by
    ``block`` (default ``n``, which must then be a power of two). Returns ``[..., n]``.
    """
    n = x.shape[-1]
    block = n if block is None else block
    if not is_power_of_two(block) or n % block:
        raise ValueError(f"fwht needs a power-of-two block dividing {n}, got {block}")
    lead = x.shape[:-1]
    y = x.reshape(*lead, n // block, block)  # [..., nb, block]
    h = 1
    while h < block:
        y = y.reshape(*lead, n // block, block // (2 * h), 2, h)  # [..., nb, pairs, 2, h]
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return y.reshape(x.shape) * (1.0 / math.sqrt(block))


def hadamard_transform(x: Tensor, block: int, dense: Tensor | None = None) -> Tensor:
    """Apply the block-diagonal normalized Hadamard transform to the last dimension of ``x``.

    With ``dense`` (the ``[block, block]`` matrix, for small blocks) one matmul is used; otherwise
    :func:`fwht`. Both give the same values to float rounding.
    """
    if dense is None:
        return fwht(x, block)
    n = x.shape[-1]
    y = x.reshape(*x.shape[:-1], n // block, block) @ dense.to(x.dtype)  # H is symmetric
    return y.reshape(x.shape)
