"""The normalized Walsh–Hadamard transform used by H-BitLinear (BitNet v2, arXiv 2504.18415).

The Sylvester Hadamard matrix ``H_n / sqrt(n)`` is orthonormal and symmetric, hence its own
inverse: ``(W H)(H x) = W x``. Sizes that are not a power of two use a block-diagonal transform over
the largest power-of-two block that divides the size; a size with no such block of at least
``MIN_BLOCK`` raises.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from .bounds import MIN_BLOCK, is_power_of_two


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

    The butterflies ``(a + b, a - b)`` run level by level (``h = 1, 2, 4, ...``) between two
    preallocated buffers, then the result is scaled by ``1 / sqrt(block)``; the gradient is the
    same transform of the incoming gradient (``H`` is symmetric), so autograd records one node.
    """
    n = x.shape[-1]
    block = n if block is None else block
    if not is_power_of_two(block) or n % block:
        raise ValueError(f"fwht needs a power-of-two block dividing {n}, got {block}")
    if x.requires_grad and torch.is_grad_enabled():
        return _FWHTFunction.apply(x, block)
    return _fwht_values(x, block)


def _fwht_values(x: Tensor, block: int) -> Tensor:
    """The butterflies of :func:`fwht` with ``out=`` buffers: no autograd, two temporaries."""
    if x.numel() == 0:
        return x * (1.0 / math.sqrt(block))
    if not x.is_floating_point():  # integer input: a float result, as x * (1 / sqrt(n)) gives
        x = x.to(torch.get_default_dtype())
    rows = x.numel() // block
    src = x.reshape(rows, block)
    if block == 1:
        return (src * 1.0).reshape(x.shape)  # a copy, as the general path returns
    buffers = (torch.empty_like(src), torch.empty_like(src))
    h, level = 1, 0
    while h < block:
        cur = src.view(rows, block // (2 * h), 2, h)  # [rows, pairs, 2, h]
        out = buffers[level % 2]
        nxt = out.view(rows, block // (2 * h), 2, h)
        torch.add(cur[:, :, 0], cur[:, :, 1], out=nxt[:, :, 0])
        torch.sub(cur[:, :, 0], cur[:, :, 1], out=nxt[:, :, 1])
        src, h, level = out, 2 * h, level + 1
    return src.mul_(1.0 / math.sqrt(block)).reshape(x.shape)


class _FWHTFunction(torch.autograd.Function):
    """:func:`fwht` with its gradient: ``H`` is symmetric, so ``dL/dx = H (dL/dy)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, block: int) -> Tensor:
        ctx.block = block
        return _fwht_values(x, block)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _fwht_values(grad.contiguous(), ctx.block), None


# Largest Kronecker factor of the factored transform: blocks up to 2^14 take two factors (the
# H-BitLinear widths of benchmark 1: 16 x 16, 32 x 16, 32 x 32), larger ones three or more.
MAX_FACTOR = 128


def hadamard_factors(block: int) -> tuple[int, ...]:
    """Powers of two whose product is ``block``, each at most ``MAX_FACTOR``, near-equal.

    ``H_block = H_f1 ⊗ H_f2 ⊗ ...`` (Sylvester construction), so the transform of a row is a few
    small dense matmuls: ``O(n * sum(f_i))`` multiply-adds instead of ``O(n^2)``.
    """
    if not is_power_of_two(block):
        raise ValueError(f"Hadamard block must be a power of two, got {block}")
    k = block.bit_length() - 1
    max_log = MAX_FACTOR.bit_length() - 1
    parts = max(1, -(-k // max_log))
    base, extra = divmod(k, parts)
    return tuple(2 ** (base + (1 if i < extra else 0)) for i in range(parts))


@functools.lru_cache(maxsize=64)
def _cached_matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # normal (not inference-mode) tensors: a factor made under torch.inference_mode() must still
    # be usable, and saved for backward, by a later training forward
    with torch.inference_mode(False), torch.no_grad():
        return hadamard_matrix(n, dtype).to(device)


def _factor_matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    if torch.compiler.is_compiling() or device.type == "meta":
        return hadamard_matrix(n, dtype).to(device)  # never cache a traced or fake tensor
    return _cached_matrix(n, dtype, device)


def hadamard_transform(x: Tensor, block: int, dense: Tensor | None = None) -> Tensor:
    """Apply the block-diagonal normalized Hadamard transform to the last dimension of ``x``.

    With ``dense`` (the ``[block, block]`` matrix) one matmul is used. Otherwise the transform is
    factored as ``H_block = H_f1 ⊗ ... ⊗ H_fr`` (see :func:`hadamard_factors`): each row, viewed
    as an ``f1 x ... x fr`` array, is multiplied by the small normalized ``H_fi`` along each axis.
    All paths give the same values to float rounding (the factored one agrees with a float64
    reference to about 1e-6 on unit-scale inputs, closer than the dense float32 matmul).
    """
    if dense is not None:
        n = x.shape[-1]
        y = x.reshape(*x.shape[:-1], n // block, block) @ dense.to(x.dtype)  # H is symmetric
        return y.reshape(x.shape)
    n = x.shape[-1]
    if not is_power_of_two(block) or n % block:
        raise ValueError(
            f"the Hadamard transform needs a power-of-two block dividing {n}, got {block}"
        )
    y = x.reshape(-1, block)
    after = block
    for f in hadamard_factors(block):
        h = _factor_matrix(f, x.dtype, x.device)
        after //= f
        # the last axis: one plain matmul over all rows; an inner one: H_f times each
        # [f, after] slice (batched)
        y = y.reshape(-1, f) @ h if after == 1 else torch.matmul(h, y.reshape(-1, f, after))
    return y.reshape(x.shape)
