"""Ternary packing: exact round trips, byte counts, and refusal of corrupt buffers."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from trainables.quant import pack_ternary, packed_length, unpack_ternary

SCHEMES = {"2bit": 4, "base3": 5}


@pytest.mark.parametrize("scheme", SCHEMES)
@given(shape=st.lists(st.integers(0, 13), min_size=0, max_size=4), seed=st.integers(0, 2**16))
def test_round_trip_any_shape(scheme: str, shape: list[int], seed: int) -> None:
    q = torch.randint(-1, 2, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    packed = pack_ternary(q, scheme)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert (
        packed.numel() == math.ceil(q.numel() / SCHEMES[scheme]) == packed_length(q.numel(), scheme)
    )
    assert torch.equal(unpack_ternary(packed, shape, scheme), q)


def test_known_encodings() -> None:
    q = torch.tensor([-1, 0, 1, 1, -1], dtype=torch.int8)
    # 2bit: codes+1 = 0,1,2,2 | 0 (+3 padding codes of value 0 -> 1)
    assert pack_ternary(q, "2bit").tolist() == [
        0 | 1 << 2 | 2 << 4 | 2 << 6,
        0 | 1 << 2 | 1 << 4 | 1 << 6,
    ]
    assert pack_ternary(q, "base3").tolist() == [0 + 1 * 3 + 2 * 9 + 2 * 27 + 0 * 81]


def test_large_layer_bits_per_weight() -> None:
    q = torch.randint(-1, 2, (4096, 4096), dtype=torch.int8)
    assert pack_ternary(q, "base3").numel() * 8 / q.numel() == pytest.approx(1.6, abs=1e-4)
    assert pack_ternary(q, "2bit").numel() * 8 / q.numel() == 2.0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_corrupt_buffers_are_refused(scheme: str) -> None:
    q = torch.randint(-1, 2, (7, 3), dtype=torch.int8)
    packed = pack_ternary(q, scheme)
    with pytest.raises(ValueError, match="truncated"):
        unpack_ternary(packed[:-1], q.shape, scheme)
    with pytest.raises(ValueError, match="needs"):
        unpack_ternary(packed, (10, 3), scheme)
    bad = packed.clone()
    bad[0] = 255  # 2bit: contains the value 3; base3: above 242
    with pytest.raises(ValueError, match="no"):
        unpack_ternary(bad, q.shape, scheme)
    padded = packed.clone()
    padded[-1] = 0  # every digit -1, including the padding
    with pytest.raises(ValueError, match="padding"):
        unpack_ternary(padded, q.shape, scheme)
    with pytest.raises(ValueError, match="uint8"):
        unpack_ternary(packed.to(torch.int16), q.shape, scheme)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown packing scheme 'base4'"):
        pack_ternary(torch.zeros(3, dtype=torch.int8), "base4")
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        pack_ternary(torch.tensor([2], dtype=torch.int8))
    with pytest.raises(ValueError, match="integer"):
        pack_ternary(torch.zeros(3))
