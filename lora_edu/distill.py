"""Knowledge distillation: a student learns from a teacher's soft labels (Hinton et al. 2015).

    soft = soft_targets(teacher_logits, temperature=2.0)          # (N, C) probabilities
    loss = distillation_loss(2.0)(student_logits, soft[batch])    # T² · CE(p_T, softmax(z / T))

The teacher's probabilities at temperature T keep what the hard label throws away: how sure it
is, and which wrong class it finds closest. Multiplying by T² keeps the gradient's size
independent of T (the gradient of the softened cross-entropy shrinks like 1/T²).
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


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
