"""What every LoRA variant may change (plain LoRA's behaviour as the default), and the registry
through which the layer finds a variant by name.

=====================  ======================================  =================================
hook                   plain LoRA (this class)                 overridden by
=====================  ======================================  =================================
``forward``            ``y + scaling · B A x``                 DoRA, VeRA, AdaLoRA
``delta_weight``       ``ΔW = scaling · B A``                  VeRA (``Λ_b B Λ_d A``), AdaLoRA
``merge``/``unmerge``  ``W ← W ± ΔW``                          DoRA (rescales the rows)
``frozen``             A and B train                           LoRA-FA (A frozen), VeRA (both)
``allocator``          nothing beside the optimizer            AdaLoRA (``RankAllocator``)
``lr_factors``         one learning rate                       LoRA+ (B learns 16× faster)
``saves_lora``         A and B go into the adapter file        VeRA (shared, saved once)
``peft_config``        PEFT's LORA fields                      DoRA (``use_dora``), VeRA, AdaLoRA
``tie``                nothing                                 VeRA (A, B: views of one pair)
=====================  ======================================  =================================

Parameters a variant adds (DoRA's magnitude, VeRA's vectors) train and are saved with the adapter
under the PEFT key each names in ``peft_keys``. A variant module registers its class with
``@register_variant("dora")``; the layer calls ``variant_class("dora")`` and imports no variant.
Importing this module runs the package's ``__init__`` first, which imports every variant module,
so the registry is complete whenever it can be read. Imports torch only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import nn


class LoRALayer(Protocol):
    """What a variant reads from its layer, a ``lora_layer.LoRALinear``."""

    base_layer: nn.Module  # W (d_out, d_in) = base_layer.weight, b = base_layer.bias
    in_features: int
    out_features: int
    r: int
    alpha: float
    scaling: float
    init: str
    training: bool
    lora_A: nn.Parameter  # (r, d_in)
    lora_B: nn.Parameter  # (d_out, r)
    lora_dropout: nn.Module
    variant: Variant | None

    def lora_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...
    def lora_delta_weight(self) -> torch.Tensor: ...
    def delta_weight(self) -> torch.Tensor: ...


class Variant(nn.Module):
    """Plain LoRA; subclasses override the hooks their method changes."""

    name: ClassVar[str] = ""  # as registered (``LoRAConfig.variant``), set by register_variant
    #: this module's parameters → the names PEFT's adapter files use for them
    peft_keys: ClassVar[dict[str, str]] = {}
    #: the layer's parameters ("lora_A", "lora_B") that stay frozen during training
    frozen: ClassVar[tuple[str, ...]] = ()
    #: the layer's parameters that learn at ``factor × lr`` (read by ``optimizer_param_groups``)
    lr_factors: ClassVar[dict[str, float]] = {}
    #: whether the layer's A and B are written into the adapter file
    saves_lora: ClassVar[bool] = True
    #: the suffix of A's and B's keys in PEFT's files (``lora_A.weight``; AdaLoRA: none)
    lora_key_suffix: ClassVar[str] = ".weight"

    def __init__(self, layer: LoRALayer, **shared: Any) -> None:
        super().__init__()

    @classmethod
    def shared_state(cls, layers: list[nn.Module], r: int) -> dict[str, Any]:
        """State shared by every adapted layer of a model (VeRA's random matrices), built once
        by ``apply_lora`` from the layers about to be wrapped and passed to each constructor."""
        return {}

    @classmethod
    def peft_config(cls, lora_fields: dict[str, Any]) -> dict[str, Any]:
        """The variant's ``adapter_config.json`` fields, from plain LoRA's (``peft_type``, ...)."""
        return lora_fields

    @classmethod
    def allocator(cls, layers: dict[str, LoRALayer], total_steps: int, **settings: Any) -> Any:
        """What runs beside the optimizer for these layers, or None (plain LoRA); AdaLoRA's
        ``RankAllocator`` (``lora_model.Allocator``: ``regularizer``, ``step``, ``ranks``)."""
        return None

    def forward(self, layer: LoRALayer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adapted output from the input ``x`` and the base output ``y``, in ``y``'s dtype."""
        return layer.lora_forward(x, y)

    def delta_weight(self, layer: LoRALayer) -> torch.Tensor:
        """ΔW (d_out, d_in): what ``merge`` adds to W."""
        return layer.lora_delta_weight()

    @torch.no_grad()
    def merge(self, layer: LoRALayer) -> None:
        layer.base_layer.weight += layer.delta_weight()

    @torch.no_grad()
    def unmerge(self, layer: LoRALayer) -> None:
        layer.base_layer.weight -= layer.delta_weight()

    def check_unmerge(self, layer: LoRALayer) -> None:
        """Raise ValueError if ``unmerge`` cannot restore W; ``unmerge_lora`` asks every layer."""

    def tie(self, layer: LoRALayer) -> None:
        """Point the layer at what it shares with other layers; the layer calls this after every
        conversion (``model.to(...)``, ``.half()``), which copies each tensor on its own."""

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved once per model, not per layer (keys relative to ``base_model.``)."""
        return {}


#: variant name → its class, built as ``cls(layer, **shared)``, in the order of registration
VARIANTS: dict[str, type[Variant]] = {}
V = TypeVar("V", bound=type[Variant])


def register_variant(name: str) -> Callable[[V], V]:
    """Class decorator: ``@register_variant("dora")`` makes ``LoRAConfig(variant="dora")`` build
    the class. A name taken by another class raises ValueError."""

    def register(cls: V) -> V:
        known = VARIANTS.get(name, cls)
        where = f"{known.__module__}.{known.__qualname__}"
        if where != f"{cls.__module__}.{cls.__qualname__}":  # the same class may register again
            raise ValueError(f"variant name {name!r} is taken by {where}; pick another name")
        cls.name = name
        VARIANTS[name] = cls
        return cls

    return register


def variant_class(name: str) -> type[Variant]:
    """The variant class registered as ``name`` (``"dora"``, ``"vera"``, ...)."""
    if name not in VARIANTS:
        registered = ", ".join(map(repr, VARIANTS))
        raise ValueError(f"no LoRA variant named {name!r}; registered: {registered}")
    return VARIANTS[name]
