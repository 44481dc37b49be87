"""The normalized Walsh–Hadamard transform: orthonormal, involutive, fast path == dense path."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from trainables.quant import fwht, hadamard_block_size, hadamard_matrix, hadamard_transform


@pytest.mark.parametrize("n", [1, 2, 8, 64, 256])
def test_matrix_is_orthonormal_and_symmetric(n: int) -> None:
    h = hadamard_matrix(n, torch.float64)
    torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=torch.float64))
    torch.testing.assert_close(h, h.T)


@given(log_n=st.integers(0, 10), batch=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_fwht_matches_dense_and_preserves_norm(log_n: int, batch: int, seed: int) -> None:
    n = 2**log_n
    x = torch.randn(batch, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = fwht(x)
    torch.testing.assert_close(y, x @ hadamard_matrix(n, torch.float64))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(fwht(y), x)  # its own inverse


@given(blocks=st.integers(1, 4), log_b=st.integers(3, 6), seed=st.integers(0, 2**16))
def test_block_diagonal_transform(blocks: int, log_b: int, seed: int) -> None:
    b = 2**log_b
    x = torch.randn(
        3, blocks * b, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    dense = torch.block_diag(*[hadamard_matrix(b, torch.float64)] * blocks)
    torch.testing.assert_close(fwht(x, b), x @ dense)
    torch.testing.assert_close(
        hadamard_transform(x, b, hadamard_matrix(b, torch.float64)), x @ dense
    )


def test_block_size_rules() -> None:
    assert hadamard_block_size(1024) == 1024
    assert hadamard_block_size(96) == 32  # 96 = 3 * 32: block-diagonal over 32-blocks
    assert hadamard_block_size(1024, max_block=128) == 128
    with pytest.raises(ValueError, match="in_features=100"):
        hadamard_block_size(100)  # largest power-of-two divisor is 4
    with pytest.raises(ValueError, match="power of two"):
        hadamard_block_size(64, max_block=48)
