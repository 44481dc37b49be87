"""Distillation ("collapse", seed 004) of a trained bit LM into a smaller one.

1. Summarize each candidate sequence by the teacher's mean final hidden state ``[D]``.
2. Cluster the summaries with k-means (Lloyd 1982, k-means++ seeding of Arthur & Vassilvitskii
   2007) and keep, per cluster, the sequence nearest its centroid: ``k`` distinct representatives
   that cover the activation space (the seed's ``TelemetrySynthesizer.cluster``).
3. Train a narrower student on them with the task cross-entropy plus the knowledge-distillation
   term ``KL(teacher || student)`` of the next-bit distributions (Hinton et al. 2015), and
   measure its telemetry against the floors; when a floor is not met, rebuild the student once,
   ``width_scale`` times wider, and train it again (the seed's ``collapse_submodel``).

Pure single-device torch: the caller supplies how students are built and measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BatchFn = Callable[[int], tuple[Tensor, Tensor]]  # step -> (inputs [B, T], targets [B, T])


@torch.no_grad()
def activation_summaries(model: nn.Module, sequences: Tensor, batch_size: int = 32) -> Tensor:
    """Mean final hidden state of each sequence: ``[N, T]`` bits -> ``[N, D]``."""
    was_training = model.training
    model.eval()
    try:
        parts = [
            model.hidden_states(sequences[i : i + batch_size]).float().mean(dim=1)  # [b, D]
            for i in range(0, sequences.shape[0], batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def kmeans(
    x: Tensor, k: int, *, generator: torch.Generator, iters: int = 50, restarts: int = 4
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding: ``x [N, D]`` -> ``(centroids [k, D], labels [N])``.

    The best of ``restarts`` seedings (least within-cluster squared distance) is kept, as
    scikit-learn's ``n_init`` does: one seeding can leave two centres in one cluster.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} points, got k={k}")
    x = x.detach().float().cpu()  # small; on the CPU, where the generator draws
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(restarts):
        c, labels = _lloyd(x, _seed_centroids(x, k, generator), iters)
        inertia = float(((x - c[labels]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, c, labels)
    assert best is not None
    return best[1], best[2]


def _seed_centroids(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ (Arthur & Vassilvitskii 2007): each next centre drawn with probability ~ d^2."""
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    for _ in range(1, k):
        d2 = torch.cdist(x, x[chosen]).min(dim=1).values ** 2  # [N]
        if float(d2.sum()) <= 0:  # fewer distinct points than k: any point not chosen yet
            d2 = torch.ones(n)
            d2[chosen] = 0
        chosen.append(int(torch.multinomial(d2 / d2.sum(), 1, generator=generator)))
    return x[chosen].clone()  # [k, D]


def _lloyd(x: Tensor, c: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    labels = torch.cdist(x, c).argmin(dim=1)  # [N]
    for _ in range(iters):
        updated = c.clone()
        for j in range(c.shape[0]):
            members = x[labels == j]
            if members.shape[0]:
                updated[j] = members.mean(dim=0)
        c = updated
        new_labels = torch.cdist(x, c).argmin(dim=1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return c, labels


def representatives(summaries: Tensor, k: int, *, generator: torch.Generator) -> Tensor:
    """Indices ``[k]`` of ``k`` distinct sequences: per k-means cluster, the one nearest its centre.

    An empty cluster (or one whose nearest member was taken) gets the nearest unused sequence.
    """
    centroids, _ = kmeans(summaries, k, generator=generator)
    distances = torch.cdist(centroids, summaries.detach().float().cpu())  # [k, N]
    chosen: list[int] = []
    for j in range(k):
        for index in distances[j].argsort().tolist():
            if index not in chosen:
                chosen.append(index)
                break
    return torch.tensor(chosen, dtype=torch.long)


def train_student(
    student: nn.Module,
    teacher: nn.Module,
    batch_fn: BatchFn,
    *,
    steps: int,
    lr: float,
    kd_weight: float = 0.5,
) -> float:
    """Train ``student`` for ``steps`` on ``batch_fn``'s batches: CE + ``kd_weight`` * KL(teacher).

    Returns the last step's loss. The teacher is frozen (evaluation mode, no gradients).
    """
    teacher.eval()
    student.train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)
    loss = torch.zeros(())
    for step in range(steps):
        inputs, targets = batch_fn(step)
        out = student(inputs, targets=targets)
        with torch.no_grad():
            teacher_logp = F.log_softmax(teacher(inputs).logits.float(), dim=-1)  # [B, T, 2]
        student_logp = F.log_softmax(out.logits.float(), dim=-1)
        kd = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="none").sum(-1)
        loss = out.task_loss + kd_weight * kd.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
    student.eval()
    return float(loss.detach())


def scaled_width(d_model: int, scale: float, n_heads: int) -> int:
    """``d_model * scale`` rounded up to a width the bit LM accepts (even, divisible by heads)."""
    unit = math.lcm(2, n_heads)
    return max(unit, math.ceil(d_model * scale / unit) * unit)


def collapse(
    teacher: nn.Module,
    batch_fn: BatchFn,
    *,
    make_student: Callable[[int], nn.Module],
    measure: Callable[[nn.Module], Mapping[str, float]],
    floors: Mapping[str, float],
    widths: tuple[int, int],
    steps: int,
    lr: float,
) -> list[dict[str, Any]]:
    """Distill ``teacher`` into a student of ``widths[0]``; retry once at ``widths[1]`` if needed.

    Args:
        teacher: the trained model.
        batch_fn: the representatives' training batches.
        make_student: a fresh student of the given ``d_model``.
        measure: the student's telemetry (must include every key of ``floors``).
        floors: the least acceptable values, e.g. ``{"C": 0.3, "S": 0.5}``.
        widths: the student widths of the first attempt and of the retry.
        steps: training steps per attempt.
        lr: the students' learning rate.

    Returns:
        One record per attempt: width, parameters, final loss, measured metrics, floors, passed.
    """
    attempts: list[dict[str, Any]] = []
    for attempt, width in enumerate(widths, start=1):
        student = make_student(width)
        loss = train_student(student, teacher, batch_fn, steps=steps, lr=lr)
        achieved = {key: float(value) for key, value in measure(student).items()}
        passed = all(achieved[key] >= floor for key, floor in floors.items())
        attempts.append(
            {
                "attempt": attempt,
                "d_model": width,
                "params": sum(p.numel() for p in student.parameters()),
                "loss": loss,
                "achieved": achieved,
                "floors": dict(floors),
                "passed": passed,
            }
        )
        if passed:
            break
    return attempts
