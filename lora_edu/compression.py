"""Compressing a model with truncated SVDs, the other use of low rank (guide §8.1.1, §9.5).

    info = compress_feed_forward(model, rank=64)   # every feed-forward W ≈ U_r S_r V_rᵀ

LoRA adds a low-rank ΔW to a frozen W; compression replaces W itself by its best rank-r
approximation (Eckart–Young), stored as two thin layers: ``x → V_rᵀ x`` (r numbers) →
``U_r S_r (·) + b``. A (d_out × d_in) layer then holds r (d_in + d_out) weights instead of
d_out d_in, fewer when r < d_in d_out / (d_in + d_out). What the truncation loses, a LoRA adapter
trained afterwards can partly win back.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

#: The feed-forward layers of a BERT-style encoder (MiniLM): W₁ (intermediate.dense) and W₂
#: (output.dense), and not the attention's own output.dense.
FEED_FORWARD = r".*layer\.\d+\.(intermediate|output)\.dense"


class LowRankLinear(nn.Module):
    """``y = up(down(x))``: ``down`` (r × d_in, no bias) then ``up`` (d_out × r, with the bias),
    the rank-r truncated SVD of a linear layer's weight."""

    def __init__(self, layer: nn.Linear, rank: int) -> None:
        super().__init__()
        d_out, d_in = layer.weight.shape
        if not 1 <= rank <= min(d_out, d_in):
            raise ValueError(
                f"rank must be in 1..{min(d_out, d_in)} for a {d_out}×{d_in} layer, got {rank}"
            )
        self.in_features, self.out_features, self.rank = d_in, d_out, rank
        U, S, Vh = torch.linalg.svd(layer.weight.detach().float(), full_matrices=False)
        #: ‖W − W_r‖_F / ‖W‖_F: the share of the weight the truncation drops
        self.relative_error = float(S[rank:].norm() / S.norm())
        like = {"device": layer.weight.device, "dtype": layer.weight.dtype}
        self.down = nn.Linear(d_in, rank, bias=False, **like)
        self.up = nn.Linear(rank, d_out, bias=layer.bias is not None, **like)
        with torch.no_grad():
            self.down.weight.copy_(Vh[:rank])
            self.up.weight.copy_(U[:, :rank] * S[:rank])
            if layer.bias is not None:
                self.up.bias.copy_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def compress_feed_forward(
    model: nn.Module, rank: int, pattern: str = FEED_FORWARD
) -> dict[str, Any]:
    """Replace every ``nn.Linear`` whose full name matches ``pattern`` by its rank-``rank``
    ``LowRankLinear``, in place. Returns the layers replaced and the parameter counts:
    ``{"layers", "params_before", "params_after", "relative_error"}``, where
    ``relative_error`` is each layer's ‖W − W_r‖_F / ‖W‖_F (its discarded singular values)."""
    regex = re.compile(pattern)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and regex.fullmatch(n)]
    if not names:
        raise ValueError(f"no nn.Linear of this {type(model).__name__} matches {pattern!r}")
    before = sum(p.numel() for p in model.parameters())
    errors = {}
    for name in names:
        low_rank = LowRankLinear(model.get_submodule(name), rank)
        errors[name] = low_rank.relative_error
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, low_rank)
    after = sum(p.numel() for p in model.parameters())
    return {
        "layers": names,
        "params_before": before,
        "params_after": after,
        "relative_error": errors,
    }
