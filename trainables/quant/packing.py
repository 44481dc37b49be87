"""Lossless packing of ternary codes: ``2bit`` (4 codes a byte) and ``base3`` (5 codes a byte).

``2bit`` stores ``code + 1`` in two bits, as bitnet.cpp I2_S / llama.cpp TQ2_0 do (2 bits/weight).
``base3`` stores five trits as one base-3 number, ``sum_i (c_i + 1) * 3^i <= 242`` since
``3^5 = 243 <= 256`` (1.6 bits/weight, as llama.cpp TQ1_0; the limit is log2(3) = 1.585).
The tail is padded with the code of 0; unpacking rejects out-of-range bytes, non-zero padding and a
length that does not match the shape, so a truncated or tampered buffer never decodes silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

CODES_PER_BYTE: dict[str, int] = {"2bit": 4, "base3": 5}
_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16)
_SHIFT2 = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)


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
    flat = q.detach().reshape(-1).to(torch.int16).cpu()  # [n]
    if flat.numel() and (flat.min() < -1 or flat.max() > 1):
        raise ValueError("pack_ternary needs codes in {-1, 0, 1}")
    n = flat.numel()
    digits = torch.ones(packed_length(n, scheme) * per_byte, dtype=torch.int16)  # pad: code of 0
    digits[:n] = flat + 1
    groups = digits.view(-1, per_byte)  # [bytes, per_byte] in 0..2
    if scheme == "2bit":
        packed = (groups.to(torch.uint8) << _SHIFT2).sum(dim=1, dtype=torch.uint8)
    else:
        packed = (groups * _POW3).sum(dim=1).to(torch.uint8)
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
    data = packed.cpu()
    if scheme == "2bit":
        digits = ((data.unsqueeze(1) >> _SHIFT2) & 3).to(torch.int16)  # [bytes, 4]
        if bool((digits == 3).any()):
            raise ValueError("packed buffer holds a 2-bit value 3, which no ternary code packs to")
    else:
        if data.numel() and int(data.max()) > 242:
            raise ValueError("packed buffer holds a byte above 242, which no base-3 group packs to")
        digits = (data.to(torch.int16).unsqueeze(1) // _POW3) % 3  # [bytes, 5]
    flat = digits.reshape(-1)
    if bool((flat[n:] != 1).any()):
        raise ValueError("packed buffer has non-zero padding: it is corrupt or mislabeled")
    return (flat[:n] - 1).to(torch.int8).reshape(shape)
