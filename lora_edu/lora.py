"""LoRA in PyTorch: a layer, injection into real models by name, merging, PEFT adapter files.

Shapes (the LoRA paper's names, which PEFT uses too)::

    x (..., d_in)    W (d_out, d_in)    b (d_out,)    A (r, d_in)    B (d_out, r)

    y = x Wᵀ + b + scaling · (x Aᵀ) Bᵀ        scaling = alpha / r   (rsLoRA: alpha / √r)

The update ΔW = scaling · B A (d_out, d_in) is never formed in the forward pass: two thin
matmuls cost r · (d_in + d_out) multiply-adds per token instead of d_in · d_out.

The life of a LoRA model::

    names = apply_lora(model, ["query", "value"], r=8, alpha=16)   # wrap nn.Linear layers
    mark_only_lora_trainable(model, modules_to_save=["classifier"])
    ...train...                                                      # only A, B (and the head) learn
    save_adapter(model, "my_adapter")        # PEFT format: peft.PeftModel.from_pretrained reads it
    load_adapter(fresh_model, "my_adapter")  # ...and we read adapters PEFT wrote
    merge_lora(model) / unmerge_lora(model)  # fold ΔW into W for inference, and back
    plain = unload_lora(model)               # plain nn.Linear layers, no lora_edu needed

Nothing here picks a device: new tensors follow the base layer's device and dtype
(``lora_edu.config.device()`` is where a device is chosen).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.quant import KINDS as QUANT_KINDS
from lora_edu.quant import QuantizedLinear, quantize_model
from lora_edu.variants import VARIANTS, AdaLoRA, RankAllocator
from lora_edu.variants.vera import D_INITIAL, PROJECTION_PRNG_KEY

INITS = ("kaiming", "gaussian", "pissa")
#: The layers LoRA adapts: linear layers, in full precision or in 4 bits (QLoRA).
LINEAR_TYPES = (nn.Linear, QuantizedLinear)
BIAS_MODES = ("none", "all", "lora_only")
ALL_LINEAR = "all-linear"
#: Last name components of output heads that "all-linear" leaves alone (PEFT's
#: SEQ_CLS_HEAD_NAMES plus the usual language-model head), with ``get_output_embeddings()``.
HEAD_NAMES = ("classifier", "score", "lm_head")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: PEFT stores every key relative to ``PeftModel.base_model.model`` (the wrapped model).
PEFT_PREFIX = "base_model.model."
#: init name here → PEFT's ``init_lora_weights``.
PEFT_INIT = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa"}
#: PEFT features we do not implement: an adapter using any of them is refused, not misread.
PEFT_UNSUPPORTED = (
    "fan_in_fan_out",
    "lora_bias",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "exclude_modules",
    "layer_replication",
    "target_parameters",
    "trainable_token_indices",
    "use_qalora",
    "use_bdlora",
    "megatron_config",
    "loftq_config",
    "eva_config",
    "corda_config",
    "arrow_config",
    "alora_invocation_tokens",
)


# --------------------------------------------------------------------------------------------
# Pure functions


def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """``alpha / r`` (Hu et al. 2021), or ``alpha / √r`` with rsLoRA (Kalajdzievski 2023).

    Dividing by r keeps the size of ΔW roughly independent of r at initialisation, so alpha need
    not be retuned when r changes; rsLoRA's √r keeps learning from slowing down at large r.
    """
    _check_rank_and_alpha(r, alpha)
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def pissa_init(
    W: torch.Tensor, r: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PiSSA (Meng et al. 2024): start A and B on W's principal singular directions.

    With the SVD ``W = U S Vh`` and its top-r part ``U_r, S_r, Vh_r``::

        A = diag(√(S_r / scaling)) Vh_r        (r, d_in)
        B = U_r diag(√(S_r / scaling))         (d_out, r)
        W_res = W − scaling · B A              (d_out, d_in)

    so ``scaling · B A = U_r S_r Vh_r`` is the best rank-r approximation of W and
    ``W_res + scaling · B A = W``: the layer's output at step 0 is unchanged. These are PEFT's
    formulas (``init_lora_weights="pissa"``), computed in float32 like PEFT (float64 for float64
    weights); all three results come back in W's dtype.
    """
    _check_rank_and_alpha(r, scaling, "scaling")
    d_out, d_in = W.shape
    if r > min(d_out, d_in):
        raise ValueError(
            f"PiSSA needs r <= min(d_out, d_in) = {min(d_out, d_in)} for W of shape "
            f"{tuple(W.shape)}, got r={r}; W has no more singular directions. Use a smaller r."
        )
    work = W.detach().to(torch.float64 if W.dtype == torch.float64 else torch.float32)
    U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    root = torch.diag(torch.sqrt(S[:r] / scaling))
    A = root @ Vh[:r]
    B = U[:, :r] @ root
    residual = work - scaling * B @ A
    return A.to(W.dtype), B.to(W.dtype), residual.to(W.dtype)


def _check_rank_and_alpha(r: Any, alpha: Any, name: str = "alpha") -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r (the rank) must be a positive int, got {r!r}; typical: 4, 8, 16")
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not 0 < alpha < math.inf  # also refuses NaN
    ):
        raise ValueError(
            f"{name} must be a positive finite number, got {alpha!r}; a common alpha: 2 * r"
        )


def _check_hyperparameters(r: Any, alpha: Any, dropout: Any, init: Any) -> None:
    _check_rank_and_alpha(r, alpha)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}; LoRA commonly uses 0 to 0.1")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}")


def _check_quantize(quantize: Any) -> None:
    if quantize is not None and quantize not in QUANT_KINDS:
        raise ValueError(
            f"quantize must be None (a full-precision base) or one of "
            f"{', '.join(map(repr, QUANT_KINDS))}, got {quantize!r}"
        )


def _check_variant(variant: Any) -> None:
    if variant is not None and variant not in VARIANTS:
        raise ValueError(
            f"variant must be None (plain LoRA) or one of {', '.join(map(repr, VARIANTS))}, "
            f"got {variant!r}"
        )


# --------------------------------------------------------------------------------------------
# The layer


class LoRALinear(nn.Module):
    """``y = base(x) + scaling · B(A(dropout(x)))``: an ``nn.Linear`` plus a trainable low-rank update.

    Args:
        base: the layer to adapt, kept as ``self.base_layer`` (W (d_out, d_in), b (d_out,)).
        r: rank of the update; ``lora_A`` is (r, d_in), ``lora_B`` is (d_out, r).
        alpha: ``scaling = alpha / r`` (``alpha / √r`` with ``use_rslora``).
        dropout: dropout on the input of the LoRA path only (the base path never sees it).
        init: ``"kaiming"`` (A as nn.Linear initialises its weight, B = 0; PEFT's default),
            ``"gaussian"`` (A ~ N(0, (1/r)²), i.e. std 1/r as PEFT does, B = 0), or ``"pissa"``
            (A, B from W's top-r SVD and W replaced by the residual, see ``pissa_init``). All
            three leave the layer's output unchanged at step 0.
        use_rslora: rank-stabilised scaling ``alpha / √r``.
        variant: a LoRA descendant (``"dora"``, ``"vera"``, ``"adalora"``, ``"lora-fa"``,
            ``"lora-plus"``, see
            ``lora_edu.variants``), kept as ``self.variant``; None for plain LoRA.
        shared: state every adapted layer of a model shares (VeRA's random matrices), built by
            ``apply_lora`` with the variant's ``shared_state``.

    ``lora_A`` and ``lora_B`` are created on the base weight's device and dtype. Freezing the
    base layer is ``mark_only_lora_trainable``'s job, not this class's.
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "kaiming",
        use_rslora: bool = False,
        variant: str | None = None,
        shared: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, self._BASE_TYPES):
            raise TypeError(
                f"{type(self).__name__} wraps {self._WRAPS}, got a {type(base).__name__}; for a "
                "whole model use apply_lora(model, target_modules=...)"
            )
        _check_hyperparameters(r, alpha, dropout, init)
        self._check_base(base, init, variant)
        if init == "pissa" and isinstance(base, QuantizedLinear):
            raise ValueError(
                "init='pissa' rewrites W as its residual, and this base layer is quantised to 4 "
                "bits; PiSSA on a quantised base is not implemented: use init='kaiming'"
            )
        self.base_layer = base
        self.in_features, self.out_features = self._features(base)
        self.r, self.alpha, self.dropout_p = r, alpha, float(dropout)
        self.init, self.use_rslora = init, use_rslora
        self.scaling = lora_scaling(r, alpha, use_rslora)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        shape_A, shape_B = self._factor_shapes()
        self.lora_A = nn.Parameter(torch.empty(*shape_A, **like))
        self.lora_B = nn.Parameter(torch.empty(*shape_B, **like))
        # Identity when p = 0, so the common case does no dropout bookkeeping at all.
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False  # set by disable_adapters(): the base layer alone answers
        self._init_lora(init)
        _check_variant(variant)
        # The variant is built last: DoRA's magnitude starts from the initialised W + s·B A
        # (computed while the layer is still plain LoRA).
        self.variant = None
        if variant is not None:
            self.variant = VARIANTS[variant](self, **(shared or {}))

    #: The layer types this class wraps, and how an error message names them.
    _BASE_TYPES: tuple[type, ...] = (nn.Linear, QuantizedLinear)
    _WRAPS = "an nn.Linear (or a 4-bit QuantizedLinear)"

    def _check_base(self, base: nn.Module, init: str, variant: str | None) -> None:
        """Refuse settings this layer type cannot honour (nothing to refuse for nn.Linear)."""

    def _features(self, base: nn.Module) -> tuple[int, int]:
        """(d_in, d_out) of the base layer."""
        return base.in_features, base.out_features

    def _factor_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes of ``lora_A`` (r, d_in) and ``lora_B`` (d_out, r)."""
        return (self.r, self.in_features), (self.out_features, self.r)

    @torch.no_grad()
    def _init_lora(self, init: str) -> None:
        if init == "pissa":
            A, B, residual = pissa_init(self.base_layer.weight, self.r, self.scaling)
            self.lora_A.copy_(A)
            self.lora_B.copy_(B)
            self.base_layer.weight.copy_(residual)
            return
        if init == "kaiming":
            # a = √5 is nn.Linear's own weight init: A starts like a freshly built layer.
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        else:
            nn.init.normal_(self.lora_A, std=1 / self.r)
        # B = 0 makes ΔW = B A = 0: training starts exactly from the pretrained model.
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_in) → (..., d_out), in the base layer's output dtype."""
        y = self.base_layer(x)
        if self.merged or self.disabled:
            return y  # ΔW already lives inside W, or the adapter is switched off
        if self.variant is not None:
            return self.variant(self, x, y)  # e.g. DoRA: the variant applies the update
        return self.lora_forward(x, y)

    def lora_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Plain LoRA's output ``y + scaling · B A dropout(x)``, from the base output ``y``."""
        x = x.to(self.lora_A.dtype)  # a no-op unless A, B are kept in another dtype than W
        h = F.linear(self.lora_dropout(x), self.lora_A)  # (..., r): the bottleneck x Aᵀ
        # scaling · Bᵀ as a contiguous (r, d_out) matrix: the scaling costs d_out·r multiplies
        # instead of a pass over the whole (..., d_out) update, autograd still gives
        # ∂L/∂B = scaling · Gᵀ h, and this layout keeps the backward matmuls on BLAS's fast paths.
        scaled_Bt = (self.lora_B.t() * self.scaling).contiguous()
        if h.dtype != y.dtype:  # LoRA kept in float32 on a bfloat16 base: round the update once
            return y + (h @ scaled_Bt).to(y.dtype)
        # y + h · scaled_Bt as one fused matmul-add (addmm) on 2-D views: no separate add pass.
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, self.r), scaled_Bt)
        return out.view(y.shape)

    def delta_weight(self) -> torch.Tensor:
        """ΔW (d_out, d_in), what ``merge`` adds to W: ``scaling · B A``, or the variant's own."""
        return self.lora_delta_weight() if self.variant is None else self.variant.delta_weight(self)

    def lora_delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B A, shape (d_out, d_in), in the base weight's dtype."""
        A, B = self.lora_A, self.lora_B
        if A.dtype in (torch.float16, torch.bfloat16):
            A, B = A.float(), B.float()  # the product in float32, rounded once at the end
        return (self.scaling * (B @ A)).to(self.base_layer.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + ΔW, so inference costs exactly what the base layer costs.

        Merging twice would add ΔW twice: a second call warns and does nothing (as PEFT does).
        A ΔW holding NaN or Inf (a diverged run) raises ValueError instead of spoiling W.
        """
        if self.merged:
            warnings.warn("LoRALinear is already merged; merge() did nothing", stacklevel=2)
            return
        delta = self.delta_weight()
        if not torch.isfinite(delta).all():
            raise ValueError(
                "ΔW = scaling · B A holds NaN or Inf (training diverged?); refusing to merge it "
                "into the base weight. Inspect lora_A / lora_B, or lower the learning rate."
            )
        if self.variant is not None:
            self.variant.merge(self)
        else:
            self.base_layer.weight += delta
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − ΔW: back to the separate base + LoRA paths (exact up to float rounding).

        Subtracts the *current* ΔW, so change A or B only while unmerged. Unmerging a layer that
        is not merged warns and does nothing.
        """
        if not self.merged:
            warnings.warn("LoRALinear is not merged; unmerge() did nothing", stacklevel=2)
            return
        if self.variant is not None:
            self.variant.unmerge(self)
        else:
            self.base_layer.weight -= self.delta_weight()
        self.merged = False

    def extra_repr(self) -> str:
        rs = ", use_rslora=True" if self.use_rslora else ""
        v = "" if self.variant is None else f", variant={type(self.variant).__name__}"
        return (
            f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}{rs}{v}, "
            f"merged={self.merged}"
        )


# --------------------------------------------------------------------------------------------
# The configuration a model remembers


@dataclass
class LoRAConfig:
    """What apply_lora (and mark_only_lora_trainable) did to a model; kept as ``model.lora_config``.

    save_adapter turns it into PEFT's ``adapter_config.json`` (``alpha`` → ``lora_alpha``,
    ``dropout`` → ``lora_dropout``, ``init`` → ``init_lora_weights``).
    """

    target_modules: list[str] | str = field(
        metadata={"help": "targets as given to apply_lora (save_adapter writes the layers adapted)"}
    )
    r: int = field(default=8, metadata={"help": "rank of the update: A (r, d_in), B (d_out, r)"})
    alpha: float = field(default=16, metadata={"help": "scaling = alpha / r (rsLoRA: alpha / √r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA path's input"})
    init: str = field(default="kaiming", metadata={"help": "kaiming | gaussian | pissa"})
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised scaling"})
    variant: str | None = field(
        default=None,
        metadata={
            "help": "a LoRA descendant: None (plain LoRA) | dora | vera | adalora | lora-fa | "
            "lora-plus"
        },
    )
    quantize: str | None = field(
        default=None,
        metadata={
            "help": "the frozen base's linear layers in 4 bits (QLoRA): None | nf4 | fp4 | int4"
        },
    )
    bias: str = field(
        default="none", metadata={"help": "biases trained too: none | all | lora_only"}
    )
    modules_to_save: list[str] = field(
        default_factory=list,
        metadata={"help": "full names of modules trained in full and saved (e.g. a classifier)"},
    )

    def __post_init__(self) -> None:
        _check_hyperparameters(self.r, self.alpha, self.dropout, self.init)
        _check_variant(self.variant)
        _check_quantize(self.quantize)
        if not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)
        if not self.target_modules:
            raise ValueError("target_modules is empty; name at least one layer (or 'all-linear')")

    @property
    def scaling(self) -> float:
        return lora_scaling(self.r, self.alpha, self.use_rslora)

    def settings(self) -> tuple:
        """The hyperparameters every adapted layer shares."""
        return (self.r, self.alpha, self.dropout, self.init, self.use_rslora, self.variant)

    def record(self) -> dict[str, Any]:
        """The settings a training record stores (``LORA_RECORD_FIELDS``)."""
        return {name: getattr(self, name) for name in LORA_RECORD_FIELDS}


#: The LoRA settings a training record stores: one entry per setting of ``LoRAConfig`` that
#: ``apply_lora`` reads (``bias`` and ``modules_to_save`` are set by mark_only_lora_trainable).
LORA_RECORD_FIELDS = (
    "target_modules", "r", "alpha", "dropout", "init", "use_rslora", "variant", "quantize",
)  # fmt: skip


def _config_of(model: nn.Module) -> LoRAConfig:
    config = getattr(model, "lora_config", None)
    if not isinstance(config, LoRAConfig):
        raise ValueError(
            f"this {type(model).__name__} has no LoRA (no model.lora_config); "
            "call apply_lora(model, target_modules=...) or load_adapter(model, directory) first"
        )
    return config


# --------------------------------------------------------------------------------------------
# Finding modules by name


def _named_modules_outside_lora(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every submodule except the root and the insides of LoRALinear layers
    (their ``base_layer`` is an implementation detail, never a target)."""
    hidden: set[str] = set()
    found = []
    for name, module in model.named_modules():
        if name and name.rpartition(".")[0] in hidden:
            hidden.add(name)
            continue
        if isinstance(module, LoRALinear):
            hidden.add(name)
        if name:
            found.append((name, module))
    return found


def _lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def _require_lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    layers = _lora_layers(model)
    if not layers:
        raise ValueError(
            f"this {type(model).__name__} holds no LoRALinear layer; "
            "call apply_lora(model, target_modules=...) first"
        )
    return layers


def _matches(name: str, target: str, pattern: re.Pattern | None = None) -> bool:
    """PEFT's rule: the exact name or a dotted suffix ("query" matches "...self.query"); plus a
    full regular-expression match when the target came as a single string."""
    if name == target or name.endswith("." + target):
        return True
    return pattern is not None and pattern.fullmatch(name) is not None


def _readable(names: list[str]) -> list[str]:
    """Names with layer numbers shown as '*', deduplicated: 'encoder.layer.*.attention.self.query'."""
    starred = (".".join("*" if part.isdigit() else part for part in n.split(".")) for n in names)
    return list(dict.fromkeys(starred))


def _no_match_error(target: str, kind: str, names: list[str]) -> ValueError:
    shown = _readable(names)
    parts = [n.split(".") for n in shown]
    suffixes = {".".join(p[-k:]) for p in parts for k in range(1, len(p) + 1)}
    close = difflib.get_close_matches(target, sorted(suffixes), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return ValueError(f"no {kind} matches {target!r}{hint} available: {', '.join(shown) or 'none'}")


def _output_heads(model: nn.Module) -> list[str]:
    """Names of the output head(s): ``get_output_embeddings()`` and modules named like a head."""
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    return [
        name
        for name, module in model.named_modules()
        if name and (module is out or name.rpartition(".")[2] in HEAD_NAMES)
    ]


def _resolve_targets(model: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    """The names of the nn.Linear layers apply_lora would wrap (in model order); raises on typos,
    on targets that are not nn.Linear and on layers that already have LoRA."""
    candidates = _named_modules_outside_lora(model)
    linear = [n for n, m in candidates if isinstance(m, LINEAR_TYPES)]

    def bypassed(name: str) -> bool:
        # nn.MultiheadAttention reads out_proj.weight directly and never calls out_proj(x).
        return isinstance(model.get_submodule(name.rpartition(".")[0]), nn.MultiheadAttention)

    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        heads = _output_heads(model)
        chosen = [
            n
            for n in linear
            if not bypassed(n) and not any(n == h or n.startswith(h + ".") for h in heads)
        ]
        if not chosen:
            raise ValueError(
                f"'all-linear' found no nn.Linear outside the output head ({', '.join(heads)}) "
                f"in this {type(model).__name__}"
            )
        return chosen

    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as err:
            raise ValueError(
                f"target_modules={target_modules!r} is a single string, read as a regular "
                f"expression (as PEFT does), but it does not compile ({err}); "
                "pass a list of names instead, e.g. ['query', 'value']"
            ) from None
        targets = [target_modules]
    else:
        pattern = None
        targets = list(target_modules)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(
                f"target_modules must be a str, or a non-empty list of non-empty str, got "
                f"{target_modules!r}; e.g. ['query', 'value'] or 'all-linear'"
            )
    chosen: set[str] = set()
    for target in targets:
        hits = [(n, m) for n, m in candidates if _matches(n, target, pattern)]
        if not hits:
            raise _no_match_error(target, "nn.Linear", linear)
        for name, module in hits:
            if isinstance(module, LoRALinear):
                raise ValueError(
                    f"{name!r} already has LoRA ({module.extra_repr()}); applying it twice would "
                    "stack two adapters on one layer. Call unload_lora(model) first, or target "
                    "other layers."
                )
            if not isinstance(module, (*LINEAR_TYPES, nn.Conv2d)):
                inner = [n[len(name) + 1 :] for n in linear if n.startswith(name + ".")]
                hint = (
                    f"Its nn.Linear layers: {', '.join(_readable(inner))}"
                    if inner
                    else f"Available: {', '.join(_readable(linear))}"
                )
                raise ValueError(
                    f"target {target!r} matches {name!r}, a {type(module).__name__}, not an "
                    f"nn.Linear or nn.Conv2d; LoRA wraps those layers only. {hint}"
                )
            if bypassed(name):
                raise ValueError(
                    f"{name!r} is the out_proj of an nn.MultiheadAttention, which uses its weight "
                    "directly without calling it, so a LoRA wrapper would be silently skipped"
                )
            chosen.add(name)
    return [n for n, _ in candidates if n in chosen]


def _resolve_modules_to_save(
    model: nn.Module, modules_to_save: Sequence[str], strict: bool = True
) -> list[str]:
    """Full names of the modules matching ``modules_to_save`` (exact name or dotted suffix)."""
    candidates = _named_modules_outside_lora(model)
    chosen: list[str] = []
    for target in modules_to_save:
        hits = [n for n, _ in candidates if _matches(n, target)]
        if not hits and strict:
            raise _no_match_error(target, "module", [n for n, _ in candidates])
        for name in hits:
            inner = [n for n, _ in _lora_layers(model.get_submodule(name))]
            if inner:
                raise ValueError(
                    f"modules_to_save entry {name!r} contains LoRA layers ({', '.join(inner)}); "
                    "a module is either trained in full or adapted with LoRA, not both"
                )
            if name not in chosen:
                chosen.append(name)
    return chosen


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _minimal_targets(model: nn.Module, adapted: list[str]) -> list[str]:
    """The shortest dotted suffixes that select exactly the adapted layers (PEFT's list rule):
    ['query', 'value'] rather than every full name, 'attention.output.dense' where 'dense'
    would also catch other layers."""
    everything = [n for n, _ in _named_modules_outside_lora(model)]
    wanted = set(adapted)
    minimal: set[str] = set()
    for name in adapted:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if all(n in wanted for n in everything if _matches(n, suffix)):
                minimal.add(suffix)
                break
    return sorted(minimal)


# --------------------------------------------------------------------------------------------
# Injecting LoRA into a model


def apply_lora(
    model: nn.Module,
    target_modules: str | Sequence[str] | LoRAConfig,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    init: str = "kaiming",
    use_rslora: bool = False,
    variant: str | None = None,
    quantize: str | None = None,
) -> list[str]:
    """Replace the matching ``nn.Linear`` layers of ``model`` by ``LoRALinear``, in place.

    The settings come as keywords (``apply_lora(model, ["query", "value"], r=8, alpha=16)``) or
    as one ``LoRAConfig`` in place of ``target_modules`` (``apply_lora(model, config)``, as
    PEFT's ``get_peft_model(model, config)``; then the keywords must be left out).

    ``target_modules`` (PEFT's conventions):

    - a list of names: each matches a module's full name or a dotted suffix of it
      (``"query"`` matches ``encoder.layer.0.attention.self.query``; ``"attention.output.dense"``
      matches only the attention output projection, not ``intermediate.dense``);
    - a single string: additionally tried as a regular expression over the full name
      (``re.fullmatch``), e.g. ``r".*\\.(query|value)"``;
    - ``"all-linear"``: every nn.Linear except the output head (``classifier``, ``score``,
      ``lm_head``, ``get_output_embeddings()``, and layers inside them).

    A target that matches nothing, matches a module that is not an nn.Linear, or matches a layer
    that already has LoRA raises ValueError saying what is available. Calling apply_lora again on
    other layers is allowed with the same settings. The settings are remembered as
    ``model.lora_config`` (a ``LoRAConfig``) for ``save_adapter``. Returns the adapted names.
    """
    if isinstance(target_modules, LoRAConfig):
        config = target_modules
        fields = ("r", "alpha", "dropout", "init", "use_rslora", "variant", "quantize")
        values = (r, alpha, dropout, init, use_rslora, variant, quantize)
        given = dict(zip(fields, values, strict=True))
        clash = {k: v for k, v in given.items() if v != _APPLY_DEFAULTS[k]}
        if clash:
            raise ValueError(
                f"apply_lora got a LoRAConfig and also {clash}; put every setting in the config "
                f"(dataclasses.replace(config, {', '.join(f'{k}={v!r}' for k, v in clash.items())}))"
            )
        target_modules = config.target_modules
        r, alpha, dropout, init, use_rslora, variant = config.settings()
        quantize = config.quantize
    _check_hyperparameters(r, alpha, dropout, init)
    _check_variant(variant)
    _check_quantize(quantize)
    if quantize is not None and init == "pissa":
        raise ValueError(
            "init='pissa' rewrites W as its residual; on a 4-bit base (quantize) it is not "
            "implemented: use init='kaiming'"
        )
    if isinstance(model, nn.Linear):
        raise ValueError(
            "apply_lora replaces submodules of a model in place; for a single nn.Linear use "
            "LoRALinear(layer, r, alpha)"
        )
    previous = getattr(model, "lora_config", None)
    settings = (r, alpha, dropout, init, use_rslora, variant)
    if isinstance(previous, LoRAConfig) and previous.settings() != settings:
        raise ValueError(
            f"this model already has LoRA with (r, alpha, dropout, init, use_rslora, variant) = "
            f"{previous.settings()}, and one model holds one LoRA configuration (like one PEFT "
            f"adapter); got {settings}. Use the same settings, or unload_lora(model) first."
        )
    names = _resolve_targets(model, target_modules)
    _refuse_aliases(model, names)
    shared: dict[str, Any] = {}
    if variant is not None:
        shared = VARIANTS[variant].shared_state([model.get_submodule(n) for n in names], r)
    if shared and isinstance(previous, LoRAConfig):
        raise ValueError(
            f"variant {variant!r} shares one set of matrices across all its layers, sized for "
            "the layers adapted together; apply it in one apply_lora call with every target "
            "(unload_lora(model) first)"
        )
    if quantize is not None:  # last of the checks: rounding to 4 bits cannot be undone
        # QLoRA: every linear layer of the frozen base in 4 bits, except the output head(s).
        quantize_model(model, quantize, skip=tuple(_output_heads(model)))
    # All or nothing: a layer that fails (e.g. PiSSA with r above what a small layer allows)
    # puts every layer wrapped so far back as it was, weights included.
    wrapped: list[tuple[str, nn.Linear, torch.Tensor | None]] = []
    try:
        for name in names:
            layer = model.get_submodule(name)
            weight = layer.weight.detach().clone() if init == "pissa" else None
            wrapper = _lora_class(layer)
            _set_submodule(model, name, wrapper(layer, *settings, shared=shared))
            wrapped.append((name, layer, weight))
    except Exception:
        for name, layer, weight in reversed(wrapped):
            if weight is not None:
                with torch.no_grad():
                    layer.weight.copy_(weight)
            _set_submodule(model, name, layer)
        raise
    if isinstance(previous, LoRAConfig):
        # A string is one name (or pattern, or "all-linear"), never a list of its characters.
        def as_list(targets: str | Sequence[str]) -> list[str]:
            return [targets] if isinstance(targets, str) else list(targets)

        previous.target_modules = [*as_list(previous.target_modules), *as_list(target_modules)]
    else:
        targets = target_modules if isinstance(target_modules, str) else list(target_modules)
        model.lora_config = LoRAConfig(targets, *settings, quantize=quantize)
    return names


def _lora_class(layer: nn.Module) -> type[LoRALinear]:
    """The LoRA wrapper for a layer: ``LoRAConv2d`` for an nn.Conv2d, else ``LoRALinear``."""
    if isinstance(layer, nn.Conv2d):
        from lora_edu.lora_conv import LoRAConv2d

        return LoRAConv2d
    return LoRALinear


#: apply_lora's keyword defaults: what "not given" means when a LoRAConfig comes instead.
_APPLY_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(apply_lora).parameters.items()
    if p.default is not inspect.Parameter.empty
}


def mark_only_lora_trainable(
    model: nn.Module, bias: str = "none", modules_to_save: Sequence[str] = ()
) -> None:
    """Freeze everything except LoRA's A and B (and what ``bias`` / ``modules_to_save`` add).

    ``bias``: ``"none"``; ``"all"`` (every parameter whose name contains "bias", PEFT's rule);
    ``"lora_only"`` (the biases of the adapted layers). ``modules_to_save``: names or dotted
    suffixes of modules trained in full and stored in the adapter file, e.g. ``["classifier"]``
    for a new classification head. Both are recorded in ``model.lora_config``.
    """
    lora_names = {n for n, _ in _require_lora_layers(model)}
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {', '.join(map(repr, BIAS_MODES))}, got {bias!r}")
    if isinstance(modules_to_save, str):
        modules_to_save = [modules_to_save]
    saved = _resolve_modules_to_save(model, modules_to_save)
    config = _config_of(model)
    config.bias, config.modules_to_save = bias, saved
    frozen = _frozen_by_variants(model)  # e.g. LoRA-FA's A: part of the adapter, not trained
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen and _is_adapter_tensor(name, lora_names, config))


def _frozen_by_variants(model: nn.Module) -> set[str]:
    """Names of the ``lora_A``/``lora_B`` parameters that the layers' variants keep frozen."""
    return {
        f"{name}.{param}"
        for name, layer in _lora_layers(model)
        if layer.variant is not None
        for param in layer.variant.frozen
    }


def adalora_allocator(model: nn.Module, total_steps: int, **schedule: Any) -> RankAllocator | None:
    """The ``RankAllocator`` of a model's AdaLoRA layers for a run of ``total_steps`` optimizer
    steps (settings: ``variants.adalora.AdaLoRASchedule``); None when no layer uses AdaLoRA."""
    layers = {n: layer for n, layer in _lora_layers(model) if isinstance(layer.variant, AdaLoRA)}
    return RankAllocator(layers, total_steps, **schedule) if layers else None


def optimizer_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    *,
    head_lr: float | None = None,
    head: str = "classifier",
) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups: one at ``lr``, and one per learning-rate
    factor a variant asks for (LoRA+: every ``lora_B`` at 16 × lr). With ``head_lr``, the
    trainable parameters of the module named ``head`` (the new output layer that trains beside
    an adapter) get that rate instead. Without either this is one group, the same as passing the
    trainable parameters to the optimizer."""
    factors = {
        id(getattr(layer, param)): factor
        for _, layer in _lora_layers(model)
        if layer.variant is not None
        for param, factor in layer.variant.lr_factors.items()
    }
    if head_lr is not None:
        if not head_lr > 0:
            raise ValueError(f"head_lr must be a positive number, got {head_lr!r}")
        found = [p for n, p in model.named_parameters() if n.startswith(head + ".")]
        if not any(p.requires_grad for p in found):
            raise ValueError(f"head_lr is set but the model has no trainable module {head!r}")
        factors.update({id(p): head_lr / lr for p in found})
    groups: dict[float, list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault(factors.get(id(param), 1.0), []).append(param)
    # The group at lr itself comes first: schedulers and logs read the first group's rate.
    order = sorted(groups, key=lambda factor: (factor != 1.0, factor))
    return [{"params": groups[f], "lr": lr * f, "weight_decay": weight_decay} for f in order]


def _is_adapter_tensor(name: str, lora_names: set[str], config: LoRAConfig) -> bool:
    """Whether the state-dict entry ``name`` belongs to the adapter (trained, and saved);
    ``lora_names`` are the names of the model's LoRALinear layers."""
    owner, _, leaf = name.rpartition(".")
    if owner in lora_names and leaf in ("lora_A", "lora_B"):
        return True
    if _variant_layer(owner, lora_names) is not None:
        return True  # e.g. DoRA's magnitude
    if config.bias == "all" and "bias" in name:
        return True
    if config.bias == "lora_only" and leaf == "bias" and owner.endswith(".base_layer"):
        if owner[: -len(".base_layer")] in lora_names:
            return True
    return any(name.startswith(m + ".") for m in config.modules_to_save)


def _variant_layer(owner: str, lora_names: set[str]) -> str | None:
    """The LoRA layer whose variant module is named ``owner`` (``<layer>.variant``), else None."""
    layer = owner.removesuffix(".variant")
    return layer if layer != owner and layer in lora_names else None


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every ``lora_A`` and ``lora_B`` of the model, in model order."""
    return [p for _, layer in _lora_layers(model) for p in (layer.lora_A, layer.lora_B)]


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """``{"trainable": int, "total": int, "percent": float}``; total includes LoRA's A and B
    (as PEFT's ``print_trainable_parameters`` counts), shared parameters once, and the weights
    of 4-bit ``QuantizedLinear`` layers (stored as codes, not as parameters). VeRA's layers hold
    views of one shared random pair, which PEFT keeps as buffers: they are not counted."""
    shared_views = {
        id(p)
        for _, layer in _lora_layers(model)
        if layer.variant is not None and not layer.variant.saves_lora  # VeRA
        for p in (layer.lora_A, layer.lora_B)
    }
    params = [p for p in model.parameters() if id(p) not in shared_views]
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    total += sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantizedLinear)
    )
    return {"trainable": trainable, "total": total, "percent": 100 * trainable / max(total, 1)}


def lora_plus_param_groups(
    model: nn.Module, lr: float, ratio: float = 16, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """LoRA+ (Hayou et al. 2024): optimizer param groups where every ``lora_B`` learns at
    ``ratio × lr`` and ``lora_A`` and all other trainable parameters at ``lr``.

    B starts at 0 and A at random, so with one learning rate B is updated too slowly for wide
    layers; a larger rate for B (ratio ≈ 16 in the paper) speeds fine-tuning up.
    Use: ``torch.optim.AdamW(lora_plus_param_groups(model, lr=2e-4))``.
    """
    if not lr > 0 or not ratio > 0:
        raise ValueError(f"lr and ratio must be positive, got lr={lr!r}, ratio={ratio!r}")
    b_ids = {id(layer.lora_B) for _, layer in _require_lora_layers(model)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    group_b = [p for p in trainable if id(p) in b_ids]
    others = [p for p in trainable if id(p) not in b_ids]
    if not group_b:
        raise ValueError(
            "no trainable lora_B parameter; call mark_only_lora_trainable(model) before "
            "building the LoRA+ optimizer"
        )
    groups = [{"params": group_b, "lr": lr * ratio, "weight_decay": weight_decay}]
    if others:
        groups.insert(0, {"params": others, "lr": lr, "weight_decay": weight_decay})
    return groups


# --------------------------------------------------------------------------------------------
# Merging


def _refuse_aliases(model: nn.Module, names: list[str]) -> None:
    """One nn.Linear registered under two names is called from two places: wrapping one name
    would adapt one call site only. Refuse, naming both."""
    by_module: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        by_module.setdefault(id(module), []).append(name)
    for name in names:
        others = [n for n in by_module[id(model.get_submodule(name))] if n != name]
        if others:
            raise ValueError(
                f"{name!r} is the same nn.Linear as {others[0]!r} (one module registered under "
                "two names, so called from two places); wrapping one name would adapt one call "
                "site only. Untie the modules first, or leave this layer out of target_modules."
            )


def _shared_weights(model: nn.Module) -> dict[str, list[str]]:
    """For each LoRA layer whose base weight is also another parameter of the model (tied
    embeddings and output layer, two layers sharing one weight): the other parameters' names."""
    by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    shared = {}
    for name, layer in _lora_layers(model):
        own = f"{name}.base_layer.weight"
        others = [n for n in by_tensor.get(id(layer.base_layer.weight), []) if n != own]
        if others:
            shared[name] = others
    return shared


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRALinear (W ← W + ΔW): inference then costs what the base model costs.

    A layer whose W is shared with another part of the model (tied input embeddings and output
    layer, or one weight used by two layers) is refused before anything is merged: adding ΔW to
    W would silently change that other part too. Keep such a model unmerged."""
    layers = _require_lora_layers(model)
    _refuse_shared_weights(model)
    for _, layer in layers:
        layer.merge()
    return model


def _refuse_shared_weights(model: nn.Module) -> None:
    shared = _shared_weights(model)
    if shared:
        name, others = next(iter(shared.items()))
        raise ValueError(
            f"the weight of LoRA layer {name!r} is shared with {others[0]!r} (tied weights); "
            "merging ΔW into it would change that module's output too. Keep this adapter "
            "unmerged, or untie the weights (clone them) before applying LoRA."
        )


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo ``merge_lora`` (W ← W − ΔW) to continue training or swap adapters.

    A layer whose variant cannot restore W (DoRA with a magnitude of 0) raises ValueError
    naming it before any layer is unmerged."""
    layers = _require_lora_layers(model)
    for name, layer in layers:
        if layer.merged and layer.variant is not None:
            try:
                layer.variant.check_unmerge(layer)
            except ValueError as err:
                raise ValueError(f"LoRA layer {name!r}: {err}") from None
    for _, layer in layers:
        layer.unmerge()
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside ``with disable_adapters(model):`` the model computes as its base model (every
    LoRA path skipped), as PEFT's context manager of the same name does; the adapter is back on
    afterwards. Merged layers cannot be switched off this way (ΔW is inside W): unmerge first.

    >>> with disable_adapters(model):        # doctest: +SKIP
    ...     before = generate(model, tokenizer, prompts)
    """
    layers = _require_lora_layers(model)
    merged = [name for name, layer in layers if layer.merged]
    if merged:
        raise ValueError(
            f"{len(merged)} LoRA layer(s) are merged (e.g. {merged[0]}): ΔW is part of W, so the "
            "adapter cannot be switched off; call unmerge_lora(model) first"
        )
    for _, layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for _, layer in layers:
            layer.disabled = False


def unload_lora(model: nn.Module) -> nn.Module:
    """Merge, then put each layer's plain ``nn.Linear`` (holding W + ΔW) back in its place.

    The result needs no lora_edu to run. Returns ``model`` (changed in place); its parameters
    keep the ``requires_grad`` flags they had.
    """
    layers = _require_lora_layers(model)
    if any(not layer.merged for _, layer in layers):
        _refuse_shared_weights(model)
    for name, layer in layers:
        if not layer.merged:
            layer.merge()
        _set_submodule(model, name, layer.base_layer)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


# --------------------------------------------------------------------------------------------
# Adapter files in PEFT's format


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds, under PEFT's keys (live tensors, not copies)::

    base_model.model.<layer>.lora_A.weight    (r, d_in)
    base_model.model.<layer>.lora_B.weight    (d_out, r)
    base_model.model.<layer>.lora_magnitude_vector   (d_out,) with DoRA (a variant's ``peft_keys``)
    base_model.model.<layer>.vera_lambda_b / vera_lambda_d, base_model.vera_A / vera_B   VeRA
    base_model.model.<path>.bias              with bias="all" / "lora_only"
    base_model.model.<module>.<param>         for modules_to_save, e.g. classifier.weight
    """
    layers = _lora_layers(model)
    lora_names = {n for n, _ in layers}
    config = _config_of(model)
    # VeRA: the shared random A and B are saved once, under base_model.vera_A / vera_B.
    unsaved = {
        f"{n}.{p}"
        for n, layer in layers
        if layer.variant is not None and not layer.variant.saves_lora
        for p in ("lora_A", "lora_B")
    }
    suffix = {n: ".weight" if l.variant is None else l.variant.lora_key_suffix for n, l in layers}
    state = {}
    for _, layer in layers:
        if layer.variant is not None:
            for key, tensor in layer.variant.adapter_tensors().items():
                state.setdefault(f"base_model.{key}", tensor)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name not in unsaved and _is_adapter_tensor(name, lora_names, config):
            owner, _, leaf = name.rpartition(".")
            layer = _variant_layer(owner, lora_names)
            if layer is not None:
                keys = type(model.get_submodule(owner)).peft_keys
                state[f"{PEFT_PREFIX}{layer}.{keys[leaf]}"] = tensor
                continue
            is_lora = name.endswith((".lora_A", ".lora_B"))
            state[PEFT_PREFIX + name + (suffix[owner] if is_lora else "")] = tensor
    return state


def _peft_config(
    model: nn.Module, base_model_name_or_path: str | None, task_type: str | None
) -> dict[str, Any]:
    config = _config_of(model)
    adapted = [n for n, _ in _require_lora_layers(model)]
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None)
    # The fields every PEFT adapter type has, then each type's own.
    common = {
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path or None,
        "target_modules": _minimal_targets(model, adapted),
        "bias": config.bias,
        "modules_to_save": list(config.modules_to_save) or None,
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    if config.variant == "adalora":
        # The schedule fields describe no training (PEFT requires them); pruned triplets are
        # saved at full size with their singular value 0, so no rank_pattern is needed.
        own = {"peft_type": "ADALORA", "init_r": config.r, "target_r": config.r, "total_step": 1,
               "tinit": 0, "tfinal": 0, "rank_pattern": None, "init_lora_weights": True,
               "lora_alpha": config.alpha, "lora_dropout": config.dropout}  # fmt: skip
    elif config.variant == "vera":
        own = {"peft_type": "VERA", "r": config.r, "projection_prng_key": PROJECTION_PRNG_KEY,
               "save_projection": True, "vera_dropout": config.dropout, "d_initial": D_INITIAL,
               "init_weights": True}  # fmt: skip
    else:
        own = {"peft_type": "LORA", "r": config.r, "lora_alpha": config.alpha,
               "lora_dropout": config.dropout, "use_rslora": config.use_rslora,
               "init_lora_weights": PEFT_INIT[config.init],
               "use_dora": config.variant == "dora"}  # fmt: skip
    return {**own, **common}


def save_adapter(
    model: nn.Module,
    directory: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` as PEFT does, so that
    ``peft.PeftModel.from_pretrained(base_model, directory)`` and ``load_adapter`` both read it.

    ``target_modules`` in the file lists the layers actually adapted (shortest unambiguous
    suffixes), whatever pattern selected them. ``base_model_name_or_path`` defaults to the
    Hugging Face model's ``config._name_or_path``. ``task_type`` (e.g. ``"SEQ_CLS"``) is only
    recorded; note that for "SEQ_CLS" PEFT itself adds ``classifier``/``score`` to
    ``modules_to_save`` when loading, so save a trained head with ``modules_to_save``.

    PiSSA: A and B are saved as they are, relative to the residual base ``W_res``, with
    ``init_lora_weights="pissa"``, exactly as PEFT saves a PiSSA adapter; both PEFT and
    load_adapter recompute ``W_res`` from the original base model when loading.

    ``dtype`` (e.g. ``torch.float16``) stores the floating-point tensors in that precision (half
    the size); loading casts them back to the model's dtype.

    Returns the directory.
    """
    from safetensors.torch import save_file

    config = _peft_config(model, base_model_name_or_path, task_type)
    if task_type in ("SEQ_CLS", "TOKEN_CLS") and not config["modules_to_save"]:
        warnings.warn(
            f"task_type={task_type!r} but no modules_to_save: the adapter holds no trained head, "
            "and PEFT will use a fresh model's head when loading it",
            stacklevel=2,
        )
    # Copies on the CPU: safetensors refuses tensors that share memory (tied weights).
    tensors = {k: t.detach().to("cpu", copy=True) for k, t in adapter_state_dict(model).items()}
    if dtype is not None:
        tensors = {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def _read_adapter(directory: Path) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """The settings (from PEFT's field names) and tensors of an adapter directory."""
    from safetensors.torch import load_file

    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not config_path.is_file():
        raise FileNotFoundError(
            f"no {ADAPTER_CONFIG} in {directory}; save_adapter (or PEFT's save_pretrained) "
            "writes one next to the weights"
        )
    if not weights_path.is_file():
        if (directory / "adapter_model.bin").is_file():
            raise ValueError(
                f"{directory} holds only adapter_model.bin, a pickle file; lora_edu reads only "
                f"{ADAPTER_WEIGHTS} (loading a pickle can run arbitrary code). If you trust it, "
                "convert it with PEFT: PeftModel.from_pretrained(model, dir).save_pretrained(new_dir)"
            )
        raise FileNotFoundError(f"no {ADAPTER_WEIGHTS} in {directory}")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"{config_path}: a JSON {type(raw).__name__}; expected an object with PEFT's fields "
            "(peft_type, r, lora_alpha, target_modules, ...)"
        )
    peft_type = raw.get("peft_type")
    if peft_type not in ("LORA", "VERA", "ADALORA"):
        raise ValueError(
            f"{config_path} is a {peft_type!r} adapter; lora_edu reads LORA (plain, DoRA), VERA "
            "and ADALORA adapters"
        )
    if peft_type == "VERA":
        raw = _vera_as_lora_fields(raw, config_path)
    rank_pattern = raw.get("rank_pattern") if peft_type == "ADALORA" else None
    if peft_type == "ADALORA":  # the initial rank is the layers' size; the pattern is undone below
        raw = {**raw, "r": raw.get("init_r"), "rank_pattern": None}
    for key in ("r", "lora_alpha", "target_modules"):
        if raw.get(key) is None:
            raise ValueError(f"{config_path}: the field {key!r} is missing or null")
    targets = raw["target_modules"]
    if not (isinstance(targets, str) or (
        isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    )):  # fmt: skip
        raise ValueError(
            f"{config_path}: target_modules is {targets!r}; expected a string or a non-empty "
            "list of module names"
        )
    if raw.get("bias", "none") not in BIAS_MODES:
        raise ValueError(
            f"{config_path}: bias is {raw.get('bias')!r}; expected one of {', '.join(BIAS_MODES)}"
        )
    used = [k for k in PEFT_UNSUPPORTED if raw.get(k)]
    init_value = raw.get("init_lora_weights", True)
    # False means "no init" in PEFT: the file's A and B overwrite whatever we start from.
    init = {True: "kaiming", False: "kaiming", "gaussian": "gaussian", "pissa": "pissa"}.get(
        init_value if isinstance(init_value, (bool, str)) else None
    )
    if used or init is None:
        found = {k: raw[k] for k in used}
        if init is None:
            found["init_lora_weights"] = init_value
        raise ValueError(
            f"{config_path} uses PEFT features lora_edu does not implement: {found}. "
            "Load it with peft.PeftModel.from_pretrained instead."
        )
    dropout = raw.get("lora_dropout", 0.0) or 0.0
    try:
        _check_hyperparameters(raw["r"], raw["lora_alpha"], dropout, init)
    except ValueError as err:
        raise ValueError(f"{config_path}: {err}") from None
    settings = LoRAConfig(
        target_modules=targets,
        r=raw["r"],
        alpha=raw["lora_alpha"],
        dropout=dropout,
        init=init,
        use_rslora=bool(raw.get("use_rslora", False)),
        variant={"VERA": "vera", "ADALORA": "adalora"}.get(peft_type)
        or ("dora" if raw.get("use_dora") else None),
        bias=raw.get("bias", "none"),
        modules_to_save=list(raw.get("modules_to_save") or []),
    )
    try:
        tensors = load_file(weights_path)
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(
            f"{weights_path}: not a readable safetensors file ({type(err).__name__}: {err}); "
            "was it cut off while copying?"
        ) from None
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(
                f"{weights_path}: tensor {key!r} has dtype {tensor.dtype}; adapter weights are "
                "floating point"
            )
        if not torch.isfinite(tensor).all():
            raise ValueError(
                f"{weights_path}: tensor {key!r} holds NaN or Inf (saved from a diverged run?)"
            )
    if rank_pattern:
        tensors = _undo_rank_pattern(tensors, rank_pattern, settings.r)
    return settings, tensors


def _undo_rank_pattern(
    tensors: dict[str, torch.Tensor], rank_pattern: dict[str, list[bool]], r: int
) -> dict[str, torch.Tensor]:
    """PEFT saves a trained AdaLoRA adapter without its pruned triplets (``rank_pattern`` says
    which of the ``r`` remain, per layer). Put each back at full size, with Λ = 0 where pruned:
    the same ΔW, in layers of one size."""
    full = dict(tensors)
    for key, kept in rank_pattern.items():
        layer = PEFT_PREFIX + key.removeprefix(PEFT_PREFIX).removesuffix(".lora_E")
        mask = torch.tensor(kept, dtype=torch.bool)
        if mask.numel() != r:
            raise ValueError(f"rank_pattern of {layer} has {mask.numel()} entries, expected {r}")
        for name, axis in (("lora_E", 0), ("lora_A", 0), ("lora_B", 1)):
            small = tensors[f"{layer}.{name}"]
            shape = list(small.shape)
            shape[axis] = r
            big = small.new_zeros(shape)
            if axis == 0:
                big[mask] = small
            else:
                big[:, mask] = small
            full[f"{layer}.{name}"] = big
    return full


def _vera_as_lora_fields(raw: dict[str, Any], where: Path) -> dict[str, Any]:
    """A VeRA adapter config in LoRA's field names (VeRA has no alpha: scaling does not apply).
    Only the matrices saved in the file are used (``save_projection``); PEFT's default."""
    if not raw.get("save_projection", True):
        raise ValueError(
            f"{where}: a VeRA adapter saved without its shared matrices (save_projection=false); "
            "lora_edu reads VeRA files that hold them: save it again with save_projection=True"
        )
    # d_initial and init_weights set only the starting values, which the file's tensors replace.
    return {**raw, "lora_alpha": raw.get("r"), "lora_dropout": raw.get("vera_dropout", 0.0)}


def _check_fit(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: Path):
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (and {len(keys) - 5} more)" if len(keys) > 5 else "")

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys: {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {few(unexpected)}")
    shapes = [
        f"{k}: file {tuple(found[k].shape)}, model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if found[k].shape != expected[k].shape
    ]
    if shapes:
        problems.append(f"shape mismatches: {few(shapes)}")
    if problems:
        raise ValueError(
            f"the adapter in {where} does not fit this model; {'; '.join(problems)}. "
            "Was it saved from another base model, or with other target_modules / r?"
        )


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, adapter_name: str | None = None
) -> list[str]:
    """Apply LoRA to a base model (without LoRA) from an adapter directory and load its weights.

    Reads ``adapter_config.json`` + ``adapter_model.safetensors`` written by ``save_adapter`` or
    by PEFT (``save_pretrained``); only safetensors, never pickle. Missing or unexpected keys and
    shape mismatches raise ValueError naming them, and leave the model as it was. Afterwards the
    model is ready to train on (as ``mark_only_lora_trainable`` leaves it); call
    ``model.requires_grad_(False)`` for pure inference. Returns the adapted layer names.

    ``adapter_name`` (PEFT's keyword) loads the file as a named adapter beside the model's
    others: ``lora_edu.adapters.load_named_adapter``, whose rules apply (the active adapter
    stays active, the flags of everything outside the adapters are left as they were).
    """
    if adapter_name is not None:
        from lora_edu.adapters import load_named_adapter

        return load_named_adapter(model, directory, adapter_name)
    directory = Path(directory)
    settings, tensors = _read_adapter(directory)
    if _lora_layers(model):
        raise ValueError(
            "load_adapter expects a model without LoRA (e.g. freshly loaded); this one already "
            "has LoRA layers. Call unload_lora(model) first, or load into a fresh model."
        )
    targets = settings.target_modules
    if not isinstance(targets, str):
        # One list often serves several architectures (PEFT saves and reloads such lists):
        # names this model does not have are skipped with a warning, as PEFT does.
        present = [n for n, _ in _named_modules_outside_lora(model)]
        unmatched = [t for t in targets if not any(_matches(n, t) for n in present)]
        if unmatched and len(unmatched) < len(targets):
            warnings.warn(
                f"{directory}: target_modules {unmatched} match no module of this "
                f"{type(model).__name__}; loading the adapter on the others",
                stacklevel=2,
            )
            targets = [t for t in targets if t not in unmatched]
    names = _resolve_targets(model, targets)
    # PEFT lists heads it may add (e.g. 'score' next to 'classifier'); keep the ones present.
    saved = _resolve_modules_to_save(model, settings.modules_to_save, strict=False)
    # PiSSA replaces W by the residual: keep W to restore the model if the file does not fit.
    originals = {}
    if settings.init == "pissa":
        originals = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    apply_lora(model, names, *settings.settings())
    config = _config_of(model)
    config.target_modules = settings.target_modules
    config.bias, config.modules_to_save = settings.bias, saved
    expected = adapter_state_dict(model)
    try:
        _check_fit(expected, tensors, directory)
    except ValueError:
        for name in names:
            base = model.get_submodule(name).base_layer
            if name in originals:
                with torch.no_grad():
                    base.weight.copy_(originals[name])
            _set_submodule(model, name, base)
        del model.lora_config
        raise
    with torch.no_grad():
        for key, tensor in expected.items():
            tensor.copy_(tensors[key])
    mark_only_lora_trainable(model, settings.bias, saved)
    return names
