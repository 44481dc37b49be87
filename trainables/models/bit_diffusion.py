"""Diffusion mode of the bit LM (seed 004): a non-causal denoiser over bits and its sampler.

Training (``model.causal: false``): each sequence of a batch draws a diffusion time ``t`` in
[0, 1], its noise level is ``schedule(t)`` and that fraction of its bits is corrupted, either
replaced by the ``MASK`` symbol (``noise="mask"``, absorbing diffusion, Austin et al. 2021
"Structured Denoising Diffusion Models in Discrete State-Spaces") or resampled from a fair coin
(``noise="flip"``, D3PM's uniform transition). The loss is the cross-entropy of the clean bits at
the corrupted positions only (targets elsewhere are ``IGNORE``).

Schedules (level at time ``t``; all monotone with level(0) = 0 and level(1) = 1):

- ``linear``: ``t``
- ``cosine``: ``1 - f(t) / f(0)``, ``f(t) = cos^2(pi/2 (t + s) / (1 + s))``, ``s = 0.008``
  (Nichol & Dhariwal 2021): little noise is added early, most late.
- ``exp``: ``(exp(k t) - 1) / (exp(k) - 1)``, ``k = 5``: an exponential ramp.

Curriculum: over training, the time is drawn from a window that slides from high noise (t near 1)
to low noise (t near 0); a share ``CURRICULUM_RANDOM`` of sequences keeps a uniform t, the seed's
"random-noise fallback".

Sampling (:func:`diffusion_sample`): start from pure noise (all ``MASK``, or coin flips) and run
``steps`` denoising steps from t = 1 to t = 0. At each step the model predicts every bit; the
bits still noisy are drawn from its prediction and the sequence is re-noised to the next, lower
level (for ``mask``: the least confident drawn bits are masked again, as in MaskGIT, Chang et al.
2022). Last, :func:`enforce_parity` sets each byte's parity bit (the seed's post-sampling parity
correction) and counts how many it fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

MASK = 2  # the absorbing "unknown bit" symbol of mask noise (inputs are then 0, 1 or 2)
IGNORE = -100  # target value the cross-entropy skips (torch's default ignore_index)
BITS_PER_BYTE = 9  # 8 data bits, most significant first, then an even-parity bit
COSINE_S = 0.008
EXP_K = 5.0
CURRICULUM_WIDTH = 0.3  # width of the sliding window of diffusion times
CURRICULUM_RANDOM = 0.25  # share of sequences that keep a uniformly drawn time

Schedule = Literal["linear", "cosine", "exp"]
Noise = Literal["mask", "flip"]
SCHEDULES: tuple[str, ...] = ("linear", "cosine", "exp")
NOISES: tuple[str, ...] = ("mask", "flip")


def noise_level(t: Tensor | float, schedule: Schedule) -> Tensor:
    """The share of corrupted bits at diffusion time ``t`` in [0, 1] (formulas: module doc)."""
    t = torch.as_tensor(t, dtype=torch.float32).clamp(0.0, 1.0)
    if schedule == "linear":
        return t
    if schedule == "cosine":

        def f(u: Tensor) -> Tensor:
            return torch.cos((u + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2

        return (1.0 - f(t) / f(torch.zeros(()))).clamp(0.0, 1.0)
    if schedule == "exp":
        return torch.expm1(EXP_K * t) / math.expm1(EXP_K)
    raise ValueError(f"diffusion.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def draw_times(batch: int, generator: torch.Generator, *, progress: float | None = None) -> Tensor:
    """Diffusion times ``[batch]``: uniform, or with a curriculum at training ``progress`` in [0,1].

    With a curriculum the window ``[hi - CURRICULUM_WIDTH, hi]`` slides from ``hi = 1`` at the
    start of training to ``hi = CURRICULUM_WIDTH`` at the end (high noise first); a share
    ``CURRICULUM_RANDOM`` of the sequences draws uniformly instead.
    """
    u = torch.rand(batch, generator=generator)
    if progress is None:
        return u
    hi = 1.0 - (1.0 - CURRICULUM_WIDTH) * min(max(progress, 0.0), 1.0)
    windowed = hi - CURRICULUM_WIDTH * torch.rand(batch, generator=generator)
    fallback = torch.rand(batch, generator=generator) < CURRICULUM_RANDOM
    return torch.where(fallback, u, windowed)


def corrupt(
    bits: Tensor, level: Tensor | float, noise: Noise, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Corrupt a share ``level`` of ``bits`` ``[B, T]`` (``level`` scalar or ``[B]``).

    Returns ``(inputs [B, T], corrupted [B, T] bool)``. Each bit is corrupted independently with
    probability ``level`` (its row's), and at least one bit per row, so every row has a loss.
    """
    batch, length = bits.shape
    level = torch.as_tensor(level, dtype=torch.float32).reshape(-1).expand(batch).to(bits.device)
    draws = torch.rand(batch, length, generator=generator).to(bits.device)
    corrupted = draws < level[:, None]
    # a row whose draw corrupted nothing gets its least-likely-to-be-kept bit corrupted
    empty = ~corrupted.any(dim=1)
    if bool(empty.any()):
        corrupted[empty, draws[empty].argmin(dim=1)] = True
    if noise == "mask":
        inputs = torch.where(corrupted, torch.full_like(bits, MASK), bits)
    elif noise == "flip":
        coins = torch.randint(0, 2, bits.shape, generator=generator).to(bits.device, bits.dtype)
        inputs = torch.where(corrupted, coins, bits)
    else:
        raise ValueError(f"diffusion.noise must be one of {', '.join(NOISES)}, got {noise!r}")
    return inputs, corrupted


def denoising_batch(
    bits: Tensor,
    *,
    schedule: Schedule,
    noise: Noise,
    generator: torch.Generator,
    progress: float | None = None,
) -> tuple[Tensor, Tensor]:
    """A training pair from clean ``bits`` ``[B, T]``: ``(inputs, targets)``, both ``[B, T]``.

    ``targets`` holds the clean bit at corrupted positions and :data:`IGNORE` elsewhere, so the
    model's ordinary cross-entropy scores the corrupted positions only.
    """
    times = draw_times(bits.shape[0], generator, progress=progress)
    inputs, corrupted = corrupt(bits, noise_level(times, schedule), noise, generator)
    targets = torch.where(corrupted, bits, torch.full_like(bits, IGNORE))
    return inputs, targets


def enforce_parity(bits: Tensor) -> tuple[Tensor, int]:
    """Set every byte's parity bit so its 9 bits have even parity: ``(fixed bits, fixes)``.

    ``bits`` ``[..., 9N]`` (0/1); ``fixes`` is the number of bytes whose parity bit was wrong.
    """
    if bits.shape[-1] % BITS_PER_BYTE:
        raise ValueError(f"{bits.shape[-1]} bits are not whole {BITS_PER_BYTE}-bit bytes")
    grouped = bits.reshape(*bits.shape[:-1], -1, BITS_PER_BYTE)  # [..., N, 9]
    parity = grouped[..., :8].sum(dim=-1) % 2  # [..., N]
    wrong = grouped[..., 8] != parity
    fixed = grouped.clone()
    fixed[..., 8] = parity
    return fixed.reshape(bits.shape), int(wrong.sum())


def bits_to_text(bits: Tensor) -> bytes:
    """The bytes of 9-bit groups ``[9N]`` (data bits only, most significant first)."""
    grouped = bits.reshape(-1, BITS_PER_BYTE)[:, :8].long()
    weights = 2 ** torch.arange(7, -1, -1)
    return bytes((grouped * weights).sum(dim=-1).tolist())


@torch.no_grad()
def diffusion_sample(
    predict: Callable[[Tensor], Tensor],
    n_bytes: int,
    *,
    steps: int,
    schedule: Schedule,
    noise: Noise,
    generator: torch.Generator,
    batch: int = 1,
    temperature: float = 1.0,
    device: torch.device | None = None,
) -> tuple[Tensor, int]:
    """Denoise ``batch`` sequences of ``n_bytes`` bytes from pure noise in ``steps`` steps.

    Args:
        predict: the non-causal model, inputs ``[B, T]`` -> logits ``[B, T, 2]``.
        n_bytes: bytes per sequence (``9 * n_bytes`` bits).
        steps: denoising steps (the seed uses 8 to 16).
        schedule: the noise schedule the model was trained with.
        noise: ``mask`` or ``flip``, as in training.
        generator: the random source (sampling is reproducible from it).
        temperature: divides the logits before sampling.

    Returns:
        ``(bits [batch, 9 * n_bytes], parity_fixes)``: valid bytes after the parity correction.
    """
    length = BITS_PER_BYTE * n_bytes
    device = device or torch.device("cpu")
    if noise == "mask":
        x = torch.full((batch, length), MASK, dtype=torch.long, device=device)
    else:
        x = torch.randint(0, 2, (batch, length), generator=generator).to(device)
    noisy = torch.ones(batch, length, dtype=torch.bool, device=device)
    for step in range(steps, 0, -1):
        logits = predict(x).float() / max(temperature, 1e-6)  # [B, T, 2]
        probs = torch.softmax(logits, dim=-1)[..., 1].cpu()
        drawn = (torch.rand(probs.shape, generator=generator) < probs).long().to(device)
        clean = torch.where(noisy, drawn, x) if noise == "mask" else drawn
        level = float(noise_level((step - 1) / steps, schedule))
        keep_noisy = round(level * length)
        if keep_noisy == 0:
            x, noisy = clean, torch.zeros_like(noisy)
            break
        if noise == "mask":
            # re-mask the least confident of the bits drawn this step (MaskGIT)
            confidence = torch.where(noisy, (probs - 0.5).abs().to(device), 2.0)
            confidence = confidence + 1e-4 * torch.rand(confidence.shape, generator=generator).to(
                device
            )  # random tie-break
            order = confidence.argsort(dim=1)[:, :keep_noisy]
            noisy = torch.zeros_like(noisy).scatter_(1, order, True)
            x = torch.where(noisy, torch.full_like(clean, MASK), clean)
        else:
            x, noisy = corrupt(clean, level, "flip", generator)
    return enforce_parity(x)
