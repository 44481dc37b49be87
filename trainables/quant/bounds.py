"""Bounds of the scheme options, torch-free: the run config validates against them without
loading the layers (``bitsweep validate`` imports no torch)."""

from __future__ import annotations

from typing import Literal

MIN_BITS, MAX_BITS = 2, 8  # LSQ / adaptive bit-widths
DEFAULT_EPS = 1e-5  # guards the absmean / absmax scales of the ternary quantizers
MIN_BLOCK = 8  # smallest Hadamard block worth a transform (smaller ones barely mix)

Signedness = bool | Literal["auto"]


def check_bits(bits: int, name: str = "bits") -> int:
    """Validate a bit-width of LSQ / adaptive quantization: an integer in 2..8."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{name} must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return bits


def check_bit_range(init_bits: float, min_bits: int, max_bits: int) -> None:
    """Validate an adaptive bit-width setting: bounds in 2..8, ``min <= init <= max``."""
    check_bits(min_bits, "min_bits")
    check_bits(max_bits, "max_bits")
    if min_bits > max_bits:
        raise ValueError(f"min_bits must be <= max_bits, got min_bits={min_bits} > {max_bits}")
    if not min_bits <= init_bits <= max_bits:
        raise ValueError(
            f"init_bits must be in [min_bits, max_bits] = [{min_bits}, {max_bits}], got {init_bits}"
        )


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return n > 0 and n & (n - 1) == 0
