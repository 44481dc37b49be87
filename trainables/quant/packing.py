"""Lossless packing of ternary codes: ``2bit`` (4 codes a byte) and ``base3`` (5 codes a byte).

``2bit`` stores ``code + 1`` in two bits, as bitnet.cpp I2_S / llama.cpp TQ2_0 do (2 bits/weight).
``base3`` stores five trits as one base-3 number, ``sum_i (c_i + 1) * 3^i <= 242`` since
``3^5 = 243 <= 256`` (1.6 bits/weight, as llama.cpp TQ1_0; the limit is log2(3) = 1.585).
The tail is padded with the code of 0; unpacking rejects out-of-range bytes, non-zero padding and a
length that does not match the shape, so a truncated or tampered buffer never decodes silently.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch
from torch import Tensor

CODES_PER_BYTE: dict[str, int] = {"2bit": 4, "base3": 5}
_LITTLE_ENDIAN = sys.byteorder == "little"


def _byte_tables() -> tuple[Tensor, Tensor]:
    """Decode tables: byte -> its 4 (2bit) or 5 (base3) codes, as int8 rows."""
    byte = torch.arange(256, dtype=torch.int16).unsqueeze(1)  # [256, 1]
    two = ((byte >> torch.tensor([0, 2, 4, 6], dtype=torch.int16)) & 3) - 1  # [256, 4]
    three = (byte // torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16)) % 3 - 1  # [256, 5]
    return two.to(torch.int8).contiguous(), three.to(torch.int8).contiguous()


# Unpacking is one table lookup per byte (a gather of 4 or 5 codes) instead of shifts or
# divisions over every code. The 2-bit table holds a byte's 4 codes as one int32 word.
_DECODE_2BIT, _DECODE_BASE3 = _byte_tables()
_DECODE_2BIT_WORDS = _DECODE_2BIT.view(torch.int32).reshape(256)


def _codes_per_byte(scheme: str) -> int:
    try:
        return CODES_PER_BYTE[scheme]
    except KeyError:
        raise ValueError(
            f"unknown packing scheme {scheme!r}; valid: {', '.join(CODES_PER_BYTE)}"
        ) from None


def packed_length(numel: int, scheme: str) -> int:
    """Bytes needed to pack ``numel`` ternary codes: ``ceil(numel / codes_per_byte)``."""
    return math.ceil(numel / _codes_per_byte(scheme))


def pack_ternary(q: Tensor, scheme: str = "2bit") -> Tensor:
    """Pack a tensor of ternary codes (any shape, values in {-1, 0, 1}) into a 1-D uint8 tensor."""
    per_byte = _codes_per_byte(scheme)
    if q.dtype.is_floating_point or q.dtype == torch.bool or q.is_complex():
        raise ValueError(f"pack_ternary needs an integer tensor of codes, got {q.dtype}")
    flat = q.detach().reshape(-1).cpu()  # [n]
    if flat.numel():
        lo, hi = torch.aminmax(flat)
        if lo < -1 or hi > 1:
            raise ValueError("pack_ternary needs codes in {-1, 0, 1}")
    n = flat.numel()
    nbytes = packed_length(n, scheme)
    # digits code + 1 in 0..2, in uint8 (torch vectorizes uint8 arithmetic, int8 much less);
    # int8 -1 viewed as uint8 is 255, and 255 + 1 wraps to 0
    digits = torch.empty(nbytes * per_byte, dtype=torch.uint8)
    digits[n:] = 1  # padding: the code of 0
    torch.add(flat.to(torch.int8).view(torch.uint8), 1, out=digits[:n])
    if scheme == "2bit":
        if _LITTLE_ENDIAN:
            # one int32 word holds a byte's 4 digits d0 + d1 << 8 + d2 << 16 + d3 << 24;
            # d0 | d1 << 2 | d2 << 4 | d3 << 6 is then four shifts and ors of whole words
            w = digits.view(torch.int32)
            packed = w | (w >> 6)
            packed |= w >> 12
            packed |= w >> 18
            return (packed & 0xFF).to(torch.uint8)
        groups = digits.view(-1, 4)
        return (groups << torch.tensor([0, 2, 4, 6], dtype=torch.uint8)).sum(1, dtype=torch.uint8)
    # base 3, Horner's rule over the five digit columns: ((((d4) 3 + d3) 3 + d2) 3 + d1) 3 + d0,
    # at most 242, so uint8 never overflows
    groups = digits.view(-1, 5)  # [bytes, 5]
    packed = groups[:, 4] * 3
    for i in (3, 2, 1):
        packed += groups[:, i]
        packed *= 3
    packed += groups[:, 0]
    return packed


def unpack_ternary(packed: Tensor, shape: Sequence[int], scheme: str = "2bit") -> Tensor:
    """Invert :func:`pack_ternary`: an int8 tensor of ``shape`` with values in {-1, 0, 1}.

    Raises ValueError for a wrong dtype, a length that does not match ``shape``, a byte that no
    packing produces, or non-zero padding.
    """
    _codes_per_byte(scheme)  # validates the scheme name
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"unpack_ternary: invalid shape {shape}")
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(
            f"unpack_ternary needs a 1-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}"
        )
    n = math.prod(shape)
    expected = packed_length(n, scheme)
    if packed.numel() != expected:
        raise ValueError(
            f"packed buffer has {packed.numel()} bytes but shape {shape} with {scheme!r} packing "
            f"needs {expected}: the data is truncated or belongs to another tensor"
        )
    data = packed.cpu().contiguous()
    if scheme == "2bit":
        if _has_two_bit_three(data):
            raise ValueError("packed buffer holds a 2-bit value 3, which no ternary code packs to")
        flat = torch.index_select(_DECODE_2BIT_WORDS, 0, data.long()).view(torch.int8)
    else:
        if data.numel() and int(data.max()) > 242:
            raise ValueError("packed buffer holds a byte above 242, which no base-3 group packs to")
        flat = torch.index_select(_DECODE_BASE3, 0, data.long()).reshape(-1)
    if bool(flat[n:].any()):  # padding decodes to code 0
        raise ValueError("packed buffer has non-zero padding: it is corrupt or mislabeled")
    return flat[:n].reshape(shape)


def _has_two_bit_three(data: Tensor) -> bool:
    """Whether any 2-bit field of the bytes is 3 (``b & (b >> 1)`` has a bit at an even place)."""
    whole = data.numel() // 4 * 4
    if _LITTLE_ENDIAN and whole:
        if data.storage_offset() % 4:
            data = data.clone()  # an int32 view needs 4-byte alignment
        # int32 words: torch's uint8 shifts by a scalar are ~100x slower than int32 ones
        w = data[:whole].view(torch.int32)
        if bool((w & (w >> 1) & 0x55555555).any()):
            return True
        data = data[whole:]
    return any(b & (b >> 1) & 0x55 for b in data.tolist())
