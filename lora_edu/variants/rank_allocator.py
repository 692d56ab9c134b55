"""AdaLoRA's budget allocator (Zhang et al. 2023): the orthogonality regulariser, the importance
scores and the cubic budget schedule, for the ``AdaLoRA`` layers of a model (see ``adalora.py``).
Equal to PEFT's ``RankAllocator``: the same triplets are masked at every step.

Imports only ``variants.base``: ``adalora.py`` builds the allocator, so nothing here imports it back
(a layer's singular values are read as ``layer.variant.lora_E``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lora_edu.variants.base import LoRALayer


@dataclass
class AdaLoRASchedule:
    """The allocator's settings (PEFT's names); ``tinit``/``tfinal`` as fractions of training,
    ``target_r`` None for ⅔ of the initial rank (PEFT's defaults: 12 → 8)."""

    target_r: int | None = None
    tinit: float = 0.1
    tfinal: float = 0.3
    deltaT: int = 10
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5


def orthogonality(layer: LoRALayer) -> torch.Tensor:
    """‖Q Qᵀ − I‖_F + ‖Pᵀ P − I‖_F for one layer (Q = lora_A (r, d_in), P = lora_B (d_out, r))."""
    A, B = layer.lora_A, layer.lora_B
    eye = torch.eye(layer.r, device=A.device, dtype=A.dtype)
    return torch.linalg.norm(A @ A.T - eye) + torch.linalg.norm(B.T @ B - eye)


class RankAllocator:
    """Scores every triplet and masks the weakest to follow the budget (PEFT's algorithm).

    In the loop: ``loss + allocator.regularizer()`` before ``backward``; after
    ``optimizer.step()``, while the gradients are still there, ``allocator.step(step)`` with the
    number of optimizer steps done (1, 2, ..., ``total_step``).
    """

    def __init__(self, layers: dict[str, LoRALayer], total_step: int, **settings: float) -> None:
        s = AdaLoRASchedule(**settings)
        self.layers, self.total_step, self.s = layers, total_step, s
        self.tinit, self.tfinal = int(s.tinit * total_step), int(s.tfinal * total_step)
        if not self.tinit < total_step - self.tfinal:
            raise ValueError(
                f"AdaLoRA needs tinit < total − tfinal, got {self.tinit}, {total_step}"
            )
        self.init_bgt = sum(layer.r for layer in layers.values())
        ranks = {layer.r for layer in layers.values()}
        target_r = s.target_r if s.target_r is not None else max(1, round(2 * max(ranks) / 3))
        self.target_bgt = target_r * len(layers)
        self.ipt: dict[str, torch.Tensor] = {}
        self.avg_ipt: dict[str, torch.Tensor] = {}
        self.avg_unc: dict[str, torch.Tensor] = {}
        self.rank_pattern: dict[str, torch.Tensor] | None = None

    def _params(self, name: str, layer: LoRALayer) -> dict[str, nn.Parameter]:
        return {
            f"{name}.A": layer.lora_A,
            f"{name}.B": layer.lora_B,
            f"{name}.E": layer.variant.lora_E,
        }

    def regularizer(self) -> torch.Tensor:
        """orth_reg_weight × the mean of ‖Q Qᵀ − I‖_F and ‖Pᵀ P − I‖_F over every P and Q."""
        total = sum(orthogonality(layer) for layer in self.layers.values())
        return self.s.orth_reg_weight * total / (2 * len(self.layers))

    def budget(self, step: int) -> tuple[int, bool]:
        """(total rank allowed at ``step``, whether to mask at this step): the cubic schedule."""
        if step <= self.tinit:
            return self.init_bgt, False
        if step > self.total_step - self.tfinal:
            return self.target_bgt, True
        left = 1 - (step - self.tinit) / (self.total_step - self.tfinal - self.tinit)
        budget = int((self.init_bgt - self.target_bgt) * left**3 + self.target_bgt)
        return budget, step % self.s.deltaT == 0

    @torch.no_grad()
    def _update_scores(self) -> None:
        b1, b2 = self.s.beta1, self.s.beta2
        for name, layer in self.layers.items():
            for key, p in self._params(name, layer).items():
                if key not in self.ipt:
                    self.avg_ipt[key], self.avg_unc[key] = torch.zeros_like(p), torch.zeros_like(p)
                self.ipt[key] = (p * p.grad).abs()
                self.avg_ipt[key] = b1 * self.avg_ipt[key] + (1 - b1) * self.ipt[key]
                self.avg_unc[key] = (
                    b2 * self.avg_unc[key] + (1 - b2) * (self.ipt[key] - self.avg_ipt[key]).abs()
                )

    @torch.no_grad()
    def _mask_to_budget(self, budget: int) -> dict[str, torch.Tensor]:
        score = {k: self.avg_ipt[k] * self.avg_unc[k] for k in self.avg_ipt}
        triplet = {
            name: score[f"{name}.E"].view(-1)
            + score[f"{name}.A"].mean(dim=1)
            + score[f"{name}.B"].mean(dim=0)
            for name in self.layers
        }
        if budget >= self.init_bgt:  # nothing to remove yet
            return {name: torch.ones_like(t, dtype=torch.bool) for name, t in triplet.items()}
        threshold = torch.kthvalue(torch.cat(list(triplet.values())), self.init_bgt - budget)[0]
        pattern = {}
        for name, layer in self.layers.items():
            layer.variant.lora_E.masked_fill_((triplet[name] <= threshold).view(-1, 1), 0.0)
            pattern[name] = triplet[name] > threshold
        return pattern

    @torch.no_grad()
    def step(self, step: int) -> None:
        """Update the scores and, when the schedule says so, mask to the budget."""
        final = self.total_step - self.tfinal
        if step < final:
            self._update_scores()
            budget, mask = self.budget(step)
            if mask:
                self.rank_pattern = self._mask_to_budget(budget)
        elif step == final:  # the final pattern, from the scores so far (as PEFT)
            self.rank_pattern = self._mask_to_budget(self.budget(step)[0])
            self.ipt, self.avg_ipt, self.avg_unc = {}, {}, {}
        else:
            for name, layer in self.layers.items():
                layer.variant.lora_E.masked_fill_(~self.rank_pattern[name].view(-1, 1), 0.0)

    def ranks(self) -> dict[str, int]:
        """The rank each layer uses now."""
        return {name: layer.variant.rank() for name, layer in self.layers.items()}
