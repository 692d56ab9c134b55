"""Knowledge distillation: a student learns from a teacher's soft labels (Hinton et al. 2015).

    soft = soft_targets(teacher_logits, temperature=2.0)          # (N, C) probabilities
    loss = distillation_loss(2.0)(student_logits, soft[batch])    # T² · CE(p_T, softmax(z / T))

The teacher's probabilities at temperature T keep what the hard label throws away: how sure it
is, and which wrong class it finds closest. Multiplying by T² keeps the gradient's size
independent of T (the gradient of the softened cross-entropy shrinks like 1/T²).

Where some examples also have a true label, ``mixed_distillation_loss(T, soft_weight)`` mixes
the two terms, λ · soft + (1 − λ) · hard, and lets an example without a label (label −1: a
sentence of the *transfer set*, which only the teacher has read) learn from the soft term
alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def soft_targets(teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """``softmax(teacher_logits / T)`` row by row: ``(N, C)`` logits → ``(N, C)`` probabilities."""
    _check_temperature(temperature)
    return torch.softmax(teacher_logits.float() / temperature, dim=-1)


def distillation_loss(
    temperature: float = 2.0,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(student_logits (B, C), soft (B, C)) = T² · mean_b Σ_c −soft[b, c] · log softmax(z_b / T)_c``:
    the cross-entropy against the teacher's softened probabilities (KL divergence to them plus the
    teacher's entropy, a constant), scaled by T²."""
    _check_temperature(temperature)

    def loss(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        if soft.shape != logits.shape:
            raise ValueError(
                f"soft targets {tuple(soft.shape)} do not match the logits {tuple(logits.shape)}; "
                "expected one probability row per example"
            )
        log_p = F.log_softmax(logits.float() / temperature, dim=-1)
        return temperature**2 * -(soft * log_p).sum(dim=-1).mean()

    return loss


def mixed_distillation_loss(
    temperature: float = 2.0, soft_weight: float = 0.5
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(student_logits (B, C), targets (B, C + 1))``: ``targets[:, :C]`` the teacher's
    probabilities at ``temperature``, ``targets[:, C]`` the true label (−1: none). Per example,
    λ · T² · CE(soft, softmax(z / T)) + (1 − λ) · CE(label, softmax(z)) with λ = ``soft_weight``
    where a label exists, and the soft term alone (weight 1) where none does; averaged over the
    batch. ``soft_weight=1`` is ``distillation_loss``; ``soft_weight=0`` ignores the teacher on
    labelled examples."""
    _check_temperature(temperature)
    if not 0 <= soft_weight <= 1:
        raise ValueError(f"soft_weight must be in [0, 1], got {soft_weight}")

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n_classes = logits.shape[-1]
        if targets.shape != (*logits.shape[:-1], n_classes + 1):
            raise ValueError(
                f"targets {tuple(targets.shape)} do not match the logits {tuple(logits.shape)}; "
                "expected the teacher's probabilities and the label (−1: none) in one row, "
                f"{n_classes + 1} columns"
            )
        soft, labels = targets[:, :n_classes].float(), targets[:, n_classes].long()
        soft_term = -(soft * F.log_softmax(logits.float() / temperature, dim=-1)).sum(-1)
        hard_term = F.cross_entropy(logits.float(), labels.clamp_min(0), reduction="none")
        labelled = labels >= 0
        w_soft = torch.where(labelled, soft_weight, 1.0)
        w_hard = torch.where(labelled, 1.0 - soft_weight, 0.0)
        return (w_soft * temperature**2 * soft_term + w_hard * hard_term).mean()

    return loss


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
