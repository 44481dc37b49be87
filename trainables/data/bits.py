"""Bits with parity for the bit-level language model (BitTransformerLM, seed 004).

Every byte becomes 9 bits: its 8 data bits, most significant first, then an even-parity bit (the
parity bit makes the number of ones in the 9 bits even, so it equals the XOR of the data bits).
:class:`BitCorpus` serves bit windows cut at byte boundaries from a :class:`ByteCorpus`, so a
window of ``9 n`` input bits predicts exactly ``n`` bytes' worth of bits, and the per-byte cost
(the sum of 9 bit cross-entropies) is directly comparable with a byte LM's bits per byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from trainables.data.bytes import ByteCorpus, Split
from trainables.data.errors import DataError

BITS_PER_BYTE = 9
DATA_BITS = 8
_SHIFTS = torch.arange(DATA_BITS - 1, -1, -1)  # [8]: MSB first


def parity_bits(data_bits: Tensor) -> Tensor:
    """Even parity of groups of 8 data bits: ``[..., 8]`` (0/1) -> ``[...]`` int64 (XOR of them)."""
    if data_bits.shape[-1] != DATA_BITS:
        raise ValueError(
            f"parity_bits needs [..., 8] data bits, got shape {tuple(data_bits.shape)}"
        )
    return data_bits.long().sum(dim=-1) % 2


def bytes_to_bits(data: Tensor) -> Tensor:
    """Bytes ``[..., N]`` (uint8 or int64 in 0..255) -> bits ``[..., 9 N]`` int64 in {0, 1}.

    Each byte contributes its 8 data bits, most significant first, then its even-parity bit.
    """
    values = data.long()
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > 255):
        raise ValueError("bytes_to_bits needs values in 0..255")
    shifts = _SHIFTS.to(values.device)
    data_bits = (values.unsqueeze(-1) >> shifts) & 1  # [..., N, 8]
    parity = parity_bits(data_bits).unsqueeze(-1)  # [..., N, 1]
    bits = torch.cat((data_bits, parity), dim=-1)  # [..., N, 9]
    return bits.flatten(-2)  # [..., 9N]


def bits_to_bytes(bits: Tensor) -> tuple[Tensor, Tensor]:
    """Bits ``[..., 9 N]`` -> ``(bytes [..., N] int64, parity_ok [..., N] bool)``.

    The bytes are read from the 8 data bits; ``parity_ok`` says whether each byte's 9th bit is its
    even parity. Raises ValueError when the last dimension is not a multiple of 9.
    """
    if bits.shape[-1] % BITS_PER_BYTE:
        raise ValueError(f"bits_to_bytes needs a multiple of 9 bits, got {bits.shape[-1]}")
    grouped = bits.long().unflatten(-1, (-1, BITS_PER_BYTE))  # [..., N, 9]
    data_bits = grouped[..., :DATA_BITS]  # [..., N, 8]
    values = (data_bits << _SHIFTS.to(bits.device)).sum(dim=-1)  # [..., N]
    parity_ok = parity_bits(data_bits) == grouped[..., DATA_BITS]  # [..., N]
    return values, parity_ok


def parity_positions(length: int, offset: int = 0) -> Tensor:
    """Mask ``[length]`` of the positions holding a parity bit, for a stream starting at bit
    ``offset`` of a byte-aligned sequence (a next-bit target window has ``offset = 1``)."""
    return (torch.arange(length) + offset) % BITS_PER_BYTE == BITS_PER_BYTE - 1


@dataclass(frozen=True, kw_only=True, eq=False)
class BitCorpus(ByteCorpus):
    """A :class:`ByteCorpus` served as bits: windows of ``seq_len`` bits cut at byte boundaries.

    ``seq_len`` (the model's, in bits) must be a multiple of 9. A window of ``n = seq_len / 9``
    bytes is read with its next byte; the inputs are the first ``9 n`` bits and the targets the same
    bits shifted by one, so the last target is the first bit of the next byte. The same generator
    draws the same byte windows as a byte LM of ``n`` bytes.
    """

    @classmethod
    def from_corpus(cls, corpus: ByteCorpus) -> BitCorpus:
        """The bit view of a loaded byte corpus (shares its tensors)."""
        return cls(train=corpus.train, val=corpus.val, source=corpus.source)

    def num_bits(self, split: Split) -> int:
        """Bits in one split (9 per byte)."""
        return BITS_PER_BYTE * self.num_bytes(split)

    def get_batch(
        self, split: Split, batch_size: int, seq_len: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``batch_size`` random bit windows ``(x, y)``, int64 ``[batch_size, seq_len]`` each.

        Raises:
            DataError: naming ``model.seq_len`` when it is not a multiple of 9 or too long.
        """
        n = self._bytes_per_window(seq_len)
        xb, yb = super().get_batch(split, batch_size, n, generator)  # [B, n] bytes each
        return self._bit_pair(xb, yb)

    def iter_eval_batches(
        self,
        split: Split = "val",
        *,
        batch_size: int,
        seq_len: int,
        max_batches: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """The byte corpus's fixed evaluation windows, as bits (see :meth:`get_batch`)."""
        n = self._bytes_per_window(seq_len)
        for xb, yb in super().iter_eval_batches(
            split, batch_size=batch_size, seq_len=n, max_batches=max_batches
        ):
            yield self._bit_pair(xb, yb)

    @staticmethod
    def _bit_pair(xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        window = torch.cat((xb, yb[:, -1:]), dim=1)  # [B, n + 1] bytes
        bits = bytes_to_bits(window)  # [B, 9 (n + 1)]
        t = BITS_PER_BYTE * xb.shape[1]
        return bits[:, :t], bits[:, 1 : t + 1]  # [B, 9n] each, targets shifted by one bit

    @staticmethod
    def _bytes_per_window(seq_len: int) -> int:
        if seq_len < BITS_PER_BYTE or seq_len % BITS_PER_BYTE:
            raise DataError(
                "model.seq_len",
                f"{seq_len} bits is not a positive multiple of {BITS_PER_BYTE}",
                "give the bit LM a sequence length of whole bytes (9 bits each), e.g. 144",
            )
        return seq_len // BITS_PER_BYTE
