"""Safety telemetry of a bit-level language model (seed 004, BitTransformerLM): K, C and S.

All three metrics lie in [0, 1]. ``p_t`` below is the model's predicted probability that bit
``t`` is 1 (softmax of the ``[..., 2]`` logits), ``H2(p) = -p log2 p - (1-p) log2 (1-p)``.

- **Negentropy K** (order / confidence of the predictions)::

      K = 1 - mean_t H2(p_t)

  Uniform predictions (``p = 1/2``) give K = 0; one-hot predictions give K = 1. The entropy of a
  two-way distribution is normalized by its maximum, ``log2 2 = 1``.

- **Lempel-Ziv complexity C** (novelty of *generated* bits): the LZ76 phrase count ``c(n)`` of a
  bit string of length ``n`` (Lempel & Ziv 1976, "On the complexity of finite sequences", counted
  with the algorithm of Kaspar & Schuster 1987, Phys. Rev. A 36, 842), normalized by its
  asymptotic value for random bits::

      C = min(1, c(n) * log2(n) / n)

  Constant strings give C close to 0, periodic ones stay small, fair coin flips approach 1.

- **Symbiosis S** (agreement with the reference data distribution)::

      S = 1 - JS2(q_model, q_ref)

  where ``q`` is the distribution of ``S_BLOCK``-bit patterns over all sliding windows of a batch
  (the model's ``q`` is *soft*: the probability of a pattern in a window is the product of the
  predicted bit probabilities, so it is differentiable) and ``JS2`` the Jensen-Shannon divergence
  in bits (Lin 1991), which lies in [0, 1]. Matching pattern statistics give S = 1, disjoint ones
  S = 0. For generated bits ``q_model`` is the hard pattern histogram of the sample.

The regularizers (``loss.lambda_K``, ``loss.lambda_C``, ``loss.lambda_S``) are ``1 - metric`` on
the training batch's predictions, so minimizing them raises the metric. C counts phrases of a
sampled string and has no gradient; its differentiable surrogate is the normalized entropy of the
soft ``C_BLOCK``-bit pattern distribution of the predictions (a block-entropy estimate of the
entropy rate, which is what normalized LZ76 complexity converges to for stationary ergodic
sources, Ziv & Lempel 1978). It is 0 for predictions that repeat one pattern and 1 for patterns
that are all equally likely; unlike ``1 - K`` it does not reward uncertain predictions of
varied text, only repetitive ones are penalized.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

EPS = 1e-12
PROB_EPS = 1e-6  # representable next to 1 in float32
S_BLOCK = 4  # pattern length of symbiosis: 16 patterns, well estimated from a few hundred bits
C_BLOCK = 8  # pattern length of the complexity surrogate: byte-scale repetition
TELEMETRY_TERMS = ("K", "C", "S")


def bit_probs(logits: Tensor) -> Tensor:
    """P(bit = 1) from two-way logits: ``[..., 2] -> [...]``."""
    return torch.softmax(logits.float(), dim=-1)[..., 1]


def binary_entropy(p: Tensor) -> Tensor:
    """``H2(p)`` in bits, elementwise (0 at p in {0, 1}, 1 at p = 1/2)."""
    p = p.float().clamp(PROB_EPS, 1.0 - PROB_EPS)  # finite gradients at confident predictions
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1.0 - p, 1.0 - p)) / math.log(2.0)


def negentropy(p: Tensor) -> Tensor:
    """K = 1 - mean H2(p) over all positions of ``p`` (probabilities of a 1) -> scalar in [0, 1]."""
    return 1.0 - binary_entropy(p).mean()


def lz76_phrase_count(bits: Sequence[int] | Tensor) -> int:
    """The number of phrases of the LZ76 parsing of ``bits`` (Kaspar & Schuster 1987).

    ``0001101001000101`` parses as ``0.001.10.100.1000.101``: 6 phrases; a constant string of any
    length n >= 2 has 2, an alternating one 3.
    """
    s = bits.tolist() if isinstance(bits, Tensor) else list(bits)
    n = len(s)
    if n < 2:
        return n
    # i: start of the earlier copy tried; k: length of the current match; start: of the phrase
    i, k, start, c, k_max = 0, 1, 1, 1, 1
    while True:
        if s[i + k - 1] == s[start + k - 1]:
            k += 1
            if start + k > n:  # the last phrase runs to the end of the string
                c += 1
                break
        else:
            k_max = max(k, k_max)
            i += 1
            if i == start:  # no earlier start reproduces more: a new phrase of length k_max
                c += 1
                start += k_max
                if start + 1 > n:
                    break
                i, k, k_max = 0, 1, 1
            else:
                k = 1
    return c


def lz_complexity(bits: Tensor) -> float:
    """Normalized LZ76 complexity C of ``bits`` ``[n]`` or ``[B, n]`` (mean over rows), in [0, 1].

    ``C = min(1, c(n) log2(n) / n)``; strings shorter than 2 bits have C = 0.
    """
    rows = bits.reshape(-1, bits.shape[-1]) if bits.dim() > 1 else bits.reshape(1, -1)
    n = rows.shape[-1]
    if n < 2:
        return 0.0
    values = [min(1.0, lz76_phrase_count(row) * math.log2(n) / n) for row in rows.long().cpu()]
    return float(sum(values) / len(values))


def _patterns(block: int, device: torch.device) -> Tensor:  # -> [2**block, block] of 0/1 floats
    codes = torch.arange(2**block, device=device)
    shifts = torch.arange(block - 1, -1, -1, device=device)
    return ((codes[:, None] >> shifts) & 1).float()


def pattern_distribution(p: Tensor, block: int) -> Tensor:
    """Distribution of ``block``-bit patterns over every sliding window of ``p``, pooled.

    ``p`` ``[B, T]`` (or ``[T]``) holds P(bit = 1) per position; hard bits (0./1.) give the
    empirical histogram. Bits are treated as independent within a window, so a window's pattern
    probabilities are products; returns ``[2**block]`` summing to 1 (differentiable in ``p``).
    """
    p = p.float().reshape(-1, p.shape[-1])
    if p.shape[-1] < block:
        raise ValueError(f"sequences of {p.shape[-1]} bits are shorter than a {block}-bit pattern")
    windows = p.unfold(-1, block, 1)  # [B, W, block]
    log_one = torch.log(windows.clamp_min(EPS))
    log_zero = torch.log((1.0 - windows).clamp_min(EPS))
    patterns = _patterns(block, p.device)  # [P, block]
    log_prob = log_one @ patterns.T + log_zero @ (1.0 - patterns).T  # [B, W, P]
    q = log_prob.exp().mean(dim=(0, 1))  # [P]
    return q / q.sum()


def js_divergence(q: Tensor, r: Tensor) -> Tensor:
    """Jensen-Shannon divergence in bits (base 2) of two distributions ``[P]``: in [0, 1]."""
    m = 0.5 * (q + r)

    def kl(a: Tensor, b: Tensor) -> Tensor:
        return (a * (torch.log2(a.clamp_min(EPS)) - torch.log2(b.clamp_min(EPS)))).sum()

    return (0.5 * kl(q, m) + 0.5 * kl(r, m)).clamp(0.0, 1.0)


def symbiosis(
    p: Tensor, reference: Tensor | None = None, *, q_ref: Tensor | None = None, block: int = S_BLOCK
) -> Tensor:
    """S = 1 - JS2(q_model, q_ref) in [0, 1] (scalar tensor, differentiable in ``p``).

    Args:
        p: P(bit = 1) of the model ``[B, T]`` (predictions) or generated bits as 0./1.
        reference: reference data bits ``[..., T']`` (0/1), pooled into ``q_ref``; or
        q_ref: an already pooled reference pattern distribution ``[2**block]``.
        block: the pattern length.
    """
    if q_ref is None:
        if reference is None:
            raise ValueError("symbiosis needs reference bits or a reference distribution")
        q_ref = pattern_distribution(reference.float(), block)
    return 1.0 - js_divergence(pattern_distribution(p, block), q_ref.to(p.device))


def complexity_surrogate(p: Tensor, block: int = C_BLOCK) -> Tensor:
    """Differentiable stand-in for C: ``H(q) / block`` of the soft pattern distribution, [0, 1]."""
    q = pattern_distribution(p, block)
    return -(q * torch.log2(q.clamp_min(EPS))).sum() / block


def regularizer_terms(
    logits: Tensor, weights: Mapping[str, float], *, q_ref: Tensor | None = None
) -> dict[str, Tensor]:
    """The telemetry loss terms ``{"K": 1 - K, "C": 1 - C~, "S": 1 - S}`` whose weight is > 0.

    Terms with a zero weight are not computed. ``logits`` ``[B, T, 2]``; ``q_ref`` is the
    reference pattern distribution of S (``pattern_distribution`` of the training bits).
    """
    active = [name for name in TELEMETRY_TERMS if weights.get(name, 0.0) > 0]
    if not active:
        return {}
    p = bit_probs(logits)  # [B, T]
    terms: dict[str, Tensor] = {}
    if "K" in active:
        terms["K"] = 1.0 - negentropy(p)
    if "C" in active:
        terms["C"] = 1.0 - complexity_surrogate(p)
    if "S" in active:
        if q_ref is None:
            raise ValueError("loss.lambda_S needs the reference distribution of the data bits")
        terms["S"] = 1.0 - symbiosis(p, q_ref=q_ref)
    return terms


def prediction_telemetry(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """K and S of predictions ``[B, T, 2]`` against the data bits ``targets`` ``[B, T]``."""
    p = bit_probs(logits)
    return {"K": float(negentropy(p)), "S": float(symbiosis(p, targets))}
