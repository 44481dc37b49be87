"""The safety gate of the bit LM (seed 004): floors on C and S, soft retries, metric drift.

A generation passes the gate when its Lempel-Ziv complexity ``C`` reaches ``floor_C`` and its
symbiosis ``S`` with the reference data reaches ``floor_S`` (:mod:`.bit_telemetry`; the seed's
floors are C >= 0.3, S >= 0.5). A generation that breaks a floor is *refused* and sampled again,
up to ``retries`` times, with another seed or with a fallback sampler (the diffusion sampler of a
non-causal model). When every attempt is refused the gate does not crash (the seed's
``strict=False``): it returns the attempt closest to the floors, marked as not passed, and logs a
warning.

Metric drift (the seed's ``detect_metric_drift``): a metric drifts when it changed by more than
``thresh`` between the oldest and the newest of the last ``window`` evaluations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from .bit_telemetry import lz_complexity, symbiosis

log = logging.getLogger(__name__)

Sampler = Callable[[int], Tensor]  # a seed -> generated bits [B, n]


@dataclass
class GateResult:
    """The outcome of :func:`safe_generate`.

    Attributes:
        bits: the returned generation ``[B, n]`` (the first that passed, else the closest).
        passed: whether it meets both floors.
        refused: how many generations broke a floor.
        attempts: per attempt ``{"attempt", "seed", "sampler", "C", "S", "passed"}``.
    """

    bits: Tensor
    passed: bool
    refused: int
    attempts: list[dict[str, float | int | str | bool]] = field(default_factory=list)

    @property
    def C(self) -> float:
        """C of the returned generation."""
        return float(self.attempts[self._chosen]["C"])

    @property
    def S(self) -> float:
        """S of the returned generation."""
        return float(self.attempts[self._chosen]["S"])

    _chosen: int = 0


def gate_scores(bits: Tensor, q_ref: Tensor) -> tuple[float, float]:
    """``(C, S)`` of generated bits ``[B, n]`` against the reference pattern distribution."""
    return lz_complexity(bits), float(symbiosis(bits.float(), q_ref=q_ref))


def safe_generate(
    sample: Sampler,
    *,
    q_ref: Tensor,
    floor_C: float,
    floor_S: float,
    retries: int = 3,
    seed: int = 0,
    fallback: Sampler | None = None,
) -> GateResult:
    """Sample, check the floors, and retry a refused generation up to ``retries`` times.

    Args:
        sample: the model's sampler, called with the attempt's seed.
        q_ref: the reference pattern distribution of S (``pattern_distribution`` of data bits).
        floor_C: the least acceptable Lempel-Ziv complexity.
        floor_S: the least acceptable symbiosis.
        retries: how many more attempts a refused generation gets.
        seed: the seed of the first attempt; attempt ``i`` uses ``seed + i``.
        fallback: the sampler of the retries (the diffusion sampler); ``sample`` when None.

    Returns:
        A :class:`GateResult`; ``refused`` counts every attempt that broke a floor.
    """
    result: GateResult | None = None
    best_margin = float("-inf")
    attempts: list[dict[str, float | int | str | bool]] = []
    for attempt in range(retries + 1):
        sampler = sample if attempt == 0 or fallback is None else fallback
        bits = sampler(seed + attempt)
        c, s = gate_scores(bits, q_ref)
        passed = c >= floor_C and s >= floor_S
        attempts.append(
            {"attempt": attempt, "seed": seed + attempt, "C": c, "S": s, "passed": passed,
             "sampler": "primary" if sampler is sample else "fallback"}
        )  # fmt: skip
        margin = min(c - floor_C, s - floor_S)
        if margin > best_margin:
            best_margin = margin
            result = GateResult(bits=bits, passed=passed, refused=0, _chosen=attempt)
        if passed:
            break
    assert result is not None
    result.attempts = attempts
    result.refused = sum(1 for a in attempts if not a["passed"])
    if not result.passed:
        log.warning(
            "safety gate: %d generations broke the floors (C >= %.2f, S >= %.2f); keeping the "
            "closest (C=%.3f, S=%.3f)", result.refused, floor_C, floor_S, result.C, result.S,
        )  # fmt: skip
    return result


def detect_drift(
    history: Sequence[Mapping[str, float]], keys: Sequence[str], *, window: int, thresh: float
) -> dict[str, float]:
    """The metrics of ``keys`` that drifted: ``{key: change}`` with ``|change| > thresh``.

    ``change`` is the newest value minus the oldest of the last ``window`` evaluations in
    ``history`` (oldest first); nothing drifts before ``window`` evaluations exist.
    """
    if window < 2 or len(history) < window:
        return {}
    recent = history[-window:]
    drifted: dict[str, float] = {}
    for key in keys:
        if key in recent[0] and key in recent[-1]:
            change = float(recent[-1][key]) - float(recent[0][key])
            if abs(change) > thresh:
                drifted[key] = change
    return drifted
