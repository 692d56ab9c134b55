"""LoRA in PyTorch: the public names in one place, and ``load_adapter``.

Shapes (the LoRA paper's names, which PEFT uses too)::

    x (..., d_in)    W (d_out, d_in)    b (d_out,)    A (r, d_in)    B (d_out, r)

    y = x Wᵀ + b + scaling · (x Aᵀ) Bᵀ        scaling = alpha / r   (rsLoRA: alpha / √r)

The life of a LoRA model::

    names = apply_lora(model, ["query", "value"], r=8, alpha=16)   # wrap nn.Linear layers
    mark_only_lora_trainable(model, modules_to_save=["classifier"])
    ...train...                                                      # only A, B (and the head) learn
    save_adapter(model, "my_adapter")        # PEFT format: peft.PeftModel.from_pretrained reads it
    load_adapter(fresh_model, "my_adapter")  # ...and we read adapters PEFT wrote
    merge_lora(model) / unmerge_lora(model)  # fold ΔW into W for inference, and back
    plain = unload_lora(model)               # plain nn.Linear layers, no lora_edu needed

Where each part lives (arrows point down only; no module below imports this one)::

    lora.py          these names, and load_adapter (one file, or one of several named adapters)
    adapters.py      many named adapters on one model
    peft_format.py   adapter files in PEFT's format, both ways
    lora_model.py    LoRAConfig, apply_lora, trainable flags, merge/unmerge/unload
    lora_conv.py     LoRAConv2d
    lora_layer.py    LoRALinear, lora_scaling, pissa_init
    variants/        DoRA, VeRA, AdaLoRA, LoRA-FA, LoRA+: registered by name, found by name

Nothing here picks a device: new tensors follow the base layer's device and dtype
(``lora_edu.config.device()`` is where a device is chosen).
"""

from __future__ import annotations

import os

from torch import nn

from lora_edu.adapters import load_named_adapter
from lora_edu.lora_layer import INITS, LoRALinear, lora_scaling, pissa_init
from lora_edu.lora_model import (
    ALL_LINEAR,
    BIAS_MODES,
    HEAD_NAMES,
    LINEAR_TYPES,
    LORA_RECORD_FIELDS,
    LoRAConfig,
    adalora_allocator,
    apply_lora,
    count_parameters,
    disable_adapters,
    lora_parameters,
    lora_plus_param_groups,
    mark_only_lora_trainable,
    merge_lora,
    optimizer_param_groups,
    unload_lora,
    unmerge_lora,
)

# Helpers other modules of the package import from here (bench, diffusion): kept as they were.
from lora_edu.lora_model import _config_of as _config_of
from lora_edu.lora_model import _lora_layers as _lora_layers
from lora_edu.lora_model import _require_lora_layers as _require_lora_layers
from lora_edu.lora_model import _resolve_targets as _resolve_targets
from lora_edu.lora_model import _set_submodule as _set_submodule
from lora_edu.peft_format import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PEFT_INIT,
    PEFT_PREFIX,
    PEFT_UNSUPPORTED,
    adapter_state_dict,
    load_one_adapter,
    save_adapter,
)

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "ALL_LINEAR", "BIAS_MODES", "HEAD_NAMES", "INITS",
    "LINEAR_TYPES", "LORA_RECORD_FIELDS", "PEFT_INIT", "PEFT_PREFIX", "PEFT_UNSUPPORTED",
    "LoRAConfig", "LoRALinear", "adalora_allocator", "adapter_state_dict", "apply_lora",
    "count_parameters", "disable_adapters", "load_adapter", "lora_parameters",
    "lora_plus_param_groups", "lora_scaling", "mark_only_lora_trainable", "merge_lora",
    "optimizer_param_groups", "pissa_init", "save_adapter", "unload_lora", "unmerge_lora",
]  # fmt: skip


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, adapter_name: str | None = None
) -> list[str]:
    """Apply LoRA to a base model (without LoRA) from an adapter directory and load its weights.

    Reads ``adapter_config.json`` + ``adapter_model.safetensors`` written by ``save_adapter`` or
    by PEFT (``save_pretrained``); only safetensors, never pickle. Missing or unexpected keys and
    shape mismatches raise ValueError naming them, and leave the model as it was. Afterwards the
    model is ready to train on (as ``mark_only_lora_trainable`` leaves it); call
    ``model.requires_grad_(False)`` for pure inference. Returns the adapted layer names
    (``peft_format.load_one_adapter``).

    ``adapter_name`` (PEFT's keyword) loads the file as a named adapter beside the model's
    others: ``lora_edu.adapters.load_named_adapter``, whose rules apply (the active adapter
    stays active, the flags of everything outside the adapters are left as they were).
    """
    if adapter_name is not None:
        return load_named_adapter(model, directory, adapter_name)
    return load_one_adapter(model, directory)
