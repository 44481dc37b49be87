"""Bits with parity: encode/decode round trip, parity, and byte-aligned bit windows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainables.data import (
    BitCorpus,
    ByteCorpus,
    DataError,
    bits_to_bytes,
    bytes_to_bits,
    parity_bits,
    parity_positions,
)


def test_known_encoding_msb_first_then_even_parity() -> None:
    bits = bytes_to_bits(torch.tensor([65, 200, 0, 255], dtype=torch.uint8))
    assert bits.dtype == torch.int64
    assert bits.tolist() == (
        [0, 1, 0, 0, 0, 0, 0, 1, 0]  # 'A' = 0b01000001, two ones: parity 0
        + [1, 1, 0, 0, 1, 0, 0, 0, 1]  # 200 = 0b11001000, three ones: parity 1
        + [0] * 9
        + [1] * 8 + [0]
    )  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=40), st.integers(1, 3))
def test_round_trip_and_parity_is_even(values: list[int], rows: int) -> None:
    data = torch.tensor([values] * rows)  # [rows, N]
    bits = bytes_to_bits(data)  # [rows, 9N]
    assert bits.shape == (rows, 9 * len(values))
    decoded, ok = bits_to_bytes(bits)
    assert decoded.tolist() == data.tolist()
    assert bool(ok.all())
    assert (bits.view(rows, -1, 9).sum(-1) % 2 == 0).all()  # every byte's 9 bits: even ones


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=20), st.data())
def test_a_flipped_bit_breaks_exactly_that_bytes_parity(values: list[int], data) -> None:
    bits = bytes_to_bits(torch.tensor(values))
    i = data.draw(st.integers(0, bits.numel() - 1))
    bits[i] ^= 1
    _, ok = bits_to_bytes(bits)
    assert (~ok).nonzero().flatten().tolist() == [i // 9]


def test_parity_bits_and_positions() -> None:
    assert parity_bits(torch.tensor([[1, 0, 1, 1, 0, 0, 0, 0]])).tolist() == [1]
    with pytest.raises(ValueError):
        parity_bits(torch.zeros(7))
    with pytest.raises(ValueError, match="multiple of 9"):
        bits_to_bytes(torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        bytes_to_bits(torch.tensor([256]))
    assert parity_positions(18).nonzero().flatten().tolist() == [8, 17]
    assert parity_positions(18, offset=1).nonzero().flatten().tolist() == [7, 16]


def _corpus() -> BitCorpus:
    raw = bytes(range(256)) * 8
    return BitCorpus.from_corpus(ByteCorpus.from_bytes(raw, val_frac=0.25))


def test_training_windows_are_byte_aligned_next_bit_pairs() -> None:
    corpus = _corpus()
    g = torch.Generator().manual_seed(0)
    x, y = corpus.get_batch("train", 4, 36, g)
    assert x.shape == y.shape == (4, 36)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one bit
    decoded, ok = bits_to_bytes(x)  # inputs start on a byte boundary: they decode to whole bytes
    assert bool(ok.all())
    assert ((decoded[:, 1:] - decoded[:, :-1]) % 256 == 1).all()  # consecutive bytes of the text
    # the same generator draws the same windows as a byte LM of 36 / 9 = 4 bytes
    xb, yb = ByteCorpus.get_batch(corpus, "train", 4, 4, torch.Generator().manual_seed(0))
    assert torch.equal(decoded, xb)
    assert torch.equal(y[:, -1], bytes_to_bits(yb[:, -1:])[:, 0])  # next byte's first bit


def test_eval_windows_cover_the_split_and_bad_lengths_name_the_key() -> None:
    corpus = _corpus()
    batches = list(corpus.iter_eval_batches("val", batch_size=8, seq_len=27))
    assert sum(x.shape[0] for x, _ in batches) == (corpus.num_bytes("val") - 1) // 3
    assert corpus.num_bits("val") == 9 * corpus.num_bytes("val")
    with pytest.raises(DataError, match=r"model\.seq_len"):
        corpus.get_batch("train", 2, 20, torch.Generator())
