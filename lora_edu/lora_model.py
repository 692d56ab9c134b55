"""LoRA on a whole model: choose layers by name, wrap them, train only the adapter, merge.

    names = apply_lora(model, ["query", "value"], r=8, alpha=16)   # wrap nn.Linear layers
    mark_only_lora_trainable(model, modules_to_save=["classifier"])
    ...train...                              # only A, B (and the head) learn
    merge_lora(model) / unmerge_lora(model)  # fold ΔW into W for inference, and back
    plain = unload_lora(model)               # plain nn.Linear layers, no lora_edu needed

The settings a model was adapted with are kept as ``model.lora_config`` (a ``LoRAConfig``),
which ``peft_format.save_adapter`` writes as PEFT's ``adapter_config.json``.

Imports the layer (``lora_layer``, ``lora_conv``), ``quant`` (QLoRA's 4-bit base) and the
variant registry (``variants.base``); a variant is looked up by name, never imported.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from lora_edu.lora_conv import LoRAConv2d
from lora_edu.lora_layer import (
    LoRALinear,
    _check_hyperparameters,
    _check_variant,
    lora_scaling,
)
from lora_edu.quant import KINDS as QUANT_KINDS
from lora_edu.quant import QuantizedLinear, quantize_model
from lora_edu.variants.base import variant_class

#: The layers LoRA adapts: linear layers, in full precision or in 4 bits (QLoRA).
LINEAR_TYPES = (nn.Linear, QuantizedLinear)
BIAS_MODES = ("none", "all", "lora_only")
ALL_LINEAR = "all-linear"
#: Last name components of output heads that "all-linear" leaves alone (PEFT's
#: SEQ_CLS_HEAD_NAMES plus the usual language-model head), with ``get_output_embeddings()``.
HEAD_NAMES = ("classifier", "score", "lm_head")


def _check_quantize(quantize: Any) -> None:
    if quantize is not None and quantize not in QUANT_KINDS:
        raise ValueError(
            f"quantize must be None (a full-precision base) or one of "
            f"{', '.join(map(repr, QUANT_KINDS))}, got {quantize!r}"
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
        layers = [model.get_submodule(n) for n in names]
        shared = variant_class(variant).shared_state(layers, r)
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


class Allocator(Protocol):
    """What a training loop calls on a variant's allocator (AdaLoRA's ``RankAllocator``)."""

    def regularizer(self) -> torch.Tensor: ...
    def step(self, step: int) -> None: ...
    def ranks(self) -> dict[str, int]: ...


def adalora_allocator(model: nn.Module, total_steps: int, **schedule: Any) -> Allocator | None:
    """The ``RankAllocator`` of a model's AdaLoRA layers for a run of ``total_steps`` optimizer
    steps (settings: ``variants.rank_allocator.AdaLoRASchedule``); None when no layer uses
    AdaLoRA."""
    adalora = variant_class("adalora")
    layers = {n: layer for n, layer in _lora_layers(model) if isinstance(layer.variant, adalora)}
    return adalora.allocator(layers, total_steps, **schedule) if layers else None


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
        if isinstance(layer.base_layer, QuantizedLinear):
            layer.base_layer.before_merge = None  # no unmerge after unloading: free the codes
        _set_submodule(model, name, layer.base_layer)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model
