"""One frozen base, many named adapters: PEFT's multi-adapter API on ``LoRALinear``.

    add_adapter(model, "sst2", LoRAConfig(["query", "value"], r=8))   # one more adapter
    set_adapter(model, "sst2")                  # switch: the active adapter's layers plug in
    with mixed_batch(model, ["sst2", "ner", "__base__"]):   # one adapter per example
        out = model(**batch)
    combine_adapters(model, ["sst2", "ner"], [0.5, 0.5], "both", method="cat")
    save_adapters(model, "out/")                # PEFT's layout: default in out/, others in out/<name>/

How it works: every adapter is its own set of ``LoRALinear`` layers wrapping the *same* base
layers, so the base weights exist once. The active adapter's layers sit in the model; the others
are kept aside (``model.lora_adapters``). Switching swaps a few module references and copies no
weight. The adapters set aside still follow the model: ``model.to(torch.bfloat16)`` or
``model.to("cuda")`` converts them too. The names follow PEFT: the adapter of ``apply_lora`` or
``load_adapter`` is ``"default"``, ``"__base__"`` routes an example around every adapter. Adapters
here carry LoRA layers only (no ``bias`` training, no ``modules_to_save``): task heads live beside
the encoder.

Imports the layer (``lora_layer``), the model-level code (``lora_model``) and the file format
(``peft_format``); ``lora.load_adapter(..., adapter_name=...)`` is the one caller above it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lora_edu.lora_layer import LoRALinear
from lora_edu.lora_model import LoRAConfig, _config_of, _lora_layers, _set_submodule, apply_lora
from lora_edu.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_one_adapter, save_adapter

DEFAULT = "default"  # PEFT's name for the first adapter
BASE = "__base__"  # PEFT's name, in adapter_names, for "no adapter"
METHODS = ("cat", "linear", "svd")


@dataclass
class _Adapter:
    config: LoRAConfig
    layers: dict[str, LoRALinear] = field(default_factory=dict)


class _Registry(nn.Module):
    """A model's adapters by name, and which one is active; the model's submodule
    ``lora_adapters``.

    The adapters set aside are plain attributes here, not submodules: their weights are not the
    model's (not in its state dict, not in ``model.parameters()``). The registry itself is a
    submodule so that every conversion of the model (``.to(dtype or device)``, ``.half()``,
    ``.cuda()``) reaches it, and it converts the adapters set aside the same way (``_apply``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.adapters: dict[str, _Adapter] = {}
        self.active: str | None = None

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> _Registry:
        for name, adapter in self.adapters.items():
            if name != self.active:  # the active adapter's layers are in the model already
                for layer in adapter.layers.values():
                    _convert_set_aside(layer, fn)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"adapters={list(self.adapters)}, active={self.active!r}"


def _convert_set_aside(layer: LoRALinear, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """``fn`` on an adapter layer's own tensors (A, B, its variant's), not on the base layer it
    shares with the model: the model converts that one itself, once."""
    for name, child in layer.named_children():
        if name != "base_layer":
            child._apply(fn)
    layer._apply(fn, recurse=False)  # A and B; then the variant ties again what it shares


def _registry(model: nn.Module) -> _Registry:
    """The model's adapters; a model that only went through ``apply_lora`` has one, "default"."""
    registry = getattr(model, "lora_adapters", None)
    if not isinstance(registry, _Registry):
        registry = _Registry()
        layers = dict(_lora_layers(model))
        if layers:
            registry.adapters[DEFAULT] = _Adapter(_config_of(model), layers)
            registry.active = DEFAULT
        model.add_module("lora_adapters", registry)
    return registry


def adapter_names(model: nn.Module) -> list[str]:
    """The model's adapters, in the order they were added."""
    return list(_registry(model).adapters)


def active_adapter(model: nn.Module) -> str | None:
    """The adapter whose layers are in the model (None when it has none)."""
    return _registry(model).active


def _require(model: nn.Module, name: str) -> _Adapter:
    registry = _registry(model)
    if name not in registry.adapters:
        raise ValueError(
            f"no adapter named {name!r}; this model has {adapter_names(model) or 'none'}"
        )
    return registry.adapters[name]


def _unplug(model: nn.Module) -> None:
    """Put the base layers back where the active adapter's layers are."""
    registry = _registry(model)
    if registry.active is None:
        return
    adapter = registry.adapters[registry.active]
    merged = [n for n, layer in adapter.layers.items() if layer.merged]
    if merged:
        raise ValueError(
            f"adapter {registry.active!r} is merged into the base weights (e.g. {merged[0]}); "
            "call unmerge_lora(model) before switching, combining or deleting adapters"
        )
    for name, layer in adapter.layers.items():
        _set_submodule(model, name, layer.base_layer)
    model.__dict__.pop("lora_config", None)
    registry.active = None


def _plug(model: nn.Module, name: str | None) -> None:
    registry = _registry(model)
    if name is None or name not in registry.adapters:
        return
    adapter = registry.adapters[name]
    for layer_name, layer in adapter.layers.items():
        layer.train(layer.base_layer.training)  # the model may have switched train/eval meanwhile
        _set_submodule(model, layer_name, layer)
    model.lora_config = adapter.config
    registry.active = name


def _set_trainable(model: nn.Module) -> None:
    # As PEFT: only the active adapter's A and B train (minus what its variant freezes).
    registry = _registry(model)
    for name, adapter in registry.adapters.items():
        for layer in adapter.layers.values():
            frozen = layer.variant.frozen if layer.variant is not None else ()
            for pname in ("lora_A", "lora_B"):
                getattr(layer, pname).requires_grad_(
                    name == registry.active and pname not in frozen
                )
            if layer.variant is not None:
                layer.variant.requires_grad_(name == registry.active)


def _check_name(model: nn.Module, name: str) -> None:
    if not isinstance(name, str) or not name or name == BASE or "." in name:
        raise ValueError(
            f"an adapter name is a non-empty string without dots, not {BASE!r}; got {name!r}"
        )
    if name in _registry(model).adapters:
        raise ValueError(f"this model already has an adapter named {name!r}; pick another name")


def add_adapter(model: nn.Module, name: str, config: LoRAConfig) -> list[str]:
    """Add a new adapter ``name`` (fresh A and B, as ``apply_lora(model, config)`` makes them) to
    the base layers the model already has. As in PEFT, the active adapter stays active (a model
    without any adapter activates the new one); switch with ``set_adapter``. Returns the adapted
    layer names."""
    _check_name(model, name)
    if config.quantize is not None:
        raise ValueError(
            "quantize applies to the base model, which every adapter shares: quantise it with the "
            "first adapter (apply_lora) and add the others with quantize=None"
        )
    if config.bias != "none" or config.modules_to_save:
        raise ValueError(
            "adapters added by name hold LoRA layers only (bias='none', no modules_to_save); "
            "keep each task's head beside the shared encoder"
        )
    registry = _registry(model)
    previous = registry.active
    _unplug(model)
    try:
        names = apply_lora(model, dataclasses.replace(config))
        registry.adapters[name] = _Adapter(_config_of(model), dict(_lora_layers(model)))
        registry.active = name
        _unplug(model)
    finally:
        _plug(model, previous if previous is not None else name)  # a failed add plugs nothing new
    _set_trainable(model)
    return names


def set_adapter(model: nn.Module, name: str) -> None:
    """Make ``name`` the active adapter: its layers answer, and only its A and B train."""
    _require(model, name)
    if active_adapter(model) != name:
        _unplug(model)
        _plug(model, name)
    _set_trainable(model)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``. Deleting the active one activates the first that remains (as
    PEFT does); deleting the last leaves the plain base model."""
    _require(model, name)
    registry = _registry(model)
    if registry.active == name:
        _unplug(model)
    del registry.adapters[name]
    if registry.active is None and registry.adapters:
        _plug(model, next(iter(registry.adapters)))
    _set_trainable(model)


# ------------------------------------------------------------------ one adapter per example


@contextlib.contextmanager
def mixed_batch(model: nn.Module, names: Sequence[str]) -> Iterator[nn.Module]:
    """Inside the block, example ``i`` of every batch goes through adapter ``names[i]``
    (``"__base__"``: none), as PEFT's ``model(..., adapter_names=names)``. Each adapted layer
    computes its base output once for the whole batch and adds each group's update (``s · B A x``
    for a linear layer, the two convolutions for a ``LoRAConv2d``) to its own rows. Plain LoRA
    adapters only (a variant's update is not a per-row addition).

    For inference only, as in PEFT: a model (or adapted layer) in training mode is refused,
    since only the active adapter trains and the others' dropout would be live. Every batch
    must hold exactly ``len(names)`` examples (checked before the model runs when the model
    itself is called, else at the first adapted layer)."""
    names = list(names)
    if not names:
        raise ValueError(
            "mixed_batch got 0 adapter names; expected one name per example of the batch "
            f"(an adapter of {adapter_names(model)} or {BASE!r})"
        )
    registry = _registry(model)
    unknown = sorted({n for n in names if n != BASE and n not in registry.adapters})
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; this model has {adapter_names(model)}")
    used = {n: registry.adapters[n] for n in dict.fromkeys(names) if n != BASE}
    variants = [n for n, a in used.items() if a.config.variant is not None]
    if variants:
        raise ValueError(
            f"adapter(s) {variants} use a LoRA variant; mixed batches take plain LoRA adapters"
        )
    # Every layer any adapter wraps checks the batch, even when no example uses an adapter.
    checked = list(dict.fromkeys(n for a in registry.adapters.values() for n in a.layers))
    training = [n for n in checked if _base_of(model, n).training]
    if training:
        raise ValueError(_TRAINING_REFUSED.format(where=f"layer {training[0]!r} is"))
    rows = {n: torch.tensor([i for i, m in enumerate(names) if m == n]) for n in used}
    by_layer: dict[str, list[tuple[str, LoRALinear]]] = {n: [] for n in checked}
    for adapter_name, adapter in used.items():
        for layer_name, layer in adapter.layers.items():
            layer.eval()  # kept aside: its flag may be stale; _plug syncs it again
            by_layer[layer_name].append((adapter_name, layer))

    def check_batch(size: int) -> None:
        if size != len(names):
            raise ValueError(
                f"mixed_batch got {len(names)} adapter names for a batch of {size}; expected "
                "one name per example"
            )

    def check_model_inputs(module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = next((t for t in (*args, *kwargs.values()) if _is_batch(t)), None)
        if first is not None:
            check_batch(first.shape[0])

    def hook(layer_name: str, layers: list[tuple[str, LoRALinear]]):
        def add_updates(module: nn.Module, inputs: tuple, y: torch.Tensor) -> torch.Tensor:
            if module.training:
                raise ValueError(_TRAINING_REFUSED.format(where=f"layer {layer_name!r} is"))
            (x,) = inputs
            check_batch(x.shape[0])
            if not layers:
                return y
            y = y.clone()
            for adapter_name, layer in layers:
                idx = rows[adapter_name].to(y.device)
                y[idx] = layer.lora_forward(x[idx], y[idx])
            return y

        return add_updates

    previous = registry.active
    _unplug(model)
    handles = [model.register_forward_pre_hook(check_model_inputs, with_kwargs=True)]
    try:
        handles += [
            model.get_submodule(layer_name).register_forward_hook(hook(layer_name, layers))
            for layer_name, layers in by_layer.items()
        ]
        yield model
    finally:
        for handle in handles:
            handle.remove()
        _plug(model, previous)


_TRAINING_REFUSED = (
    "mixed_batch is for inference, and this {where} in training mode: only the active adapter "
    "would get gradients and the other adapters' dropout would be live (PEFT refuses "
    "adapter_names in training too). Call model.eval() first, or train one adapter at a time "
    "with set_adapter"
)


def _base_of(model: nn.Module, layer_name: str) -> nn.Module:
    """The base layer at ``layer_name``, whether an adapter's layer is plugged in there or not."""
    module = model.get_submodule(layer_name)
    return module.base_layer if isinstance(module, LoRALinear) else module


def _is_batch(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 1


# ------------------------------------------------------------------ combining adapters


@torch.no_grad()
def combine_adapters(
    model: nn.Module,
    names: Sequence[str],
    weights: Sequence[float],
    new_name: str,
    method: str = "svd",
    svd_rank: int | None = None,
) -> list[str]:
    """Add adapter ``new_name`` combining ``names`` with ``weights``, as PEFT's
    ``add_weighted_adapter`` does (its ``combination_type``):

    - ``"cat"``: A = [w₁s₁A₁; w₂s₂A₂; …], B = [B₁ B₂ …], rank Σ rᵢ. Then B A = Σ wᵢ sᵢ Bᵢ Aᵢ
      = Σ wᵢ ΔWᵢ exactly.
    - ``"linear"``: A = Σ ±√|wᵢsᵢ| Aᵢ, B = Σ √|wᵢsᵢ| Bᵢ (equal ranks). B A then holds the cross
      terms Bᵢ Aⱼ (i ≠ j) too: not Σ wᵢ ΔWᵢ in general.
    - ``"svd"``: the best rank-``svd_rank`` approximation (Eckart–Young) of Σ wᵢ ΔWᵢ, from its SVD
      U S Vᵀ: B = U_r S_r, A = V_rᵀ (``svd_rank``: default the largest rank combined). For a
      ``LoRAConv2d`` ΔW is first flattened to (c_out, c_in·k_h·k_w), as PEFT does.

    The new adapter has ``alpha = r`` and standard scaling, so its scaling is exactly 1. (PEFT up
    to 0.21 copies ``use_rslora`` from the first adapter instead; when that one uses rsLoRA,
    PEFT's combined adapter comes out scaled by √r; fixed upstream in huggingface/peft#3449.) A layer missing from some adapters combines the
    ones that have it, zero-padded to the new rank as in PEFT. Returns the adapted layer names.
    A combination that fails raises ValueError and adds nothing.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(names) != len(weights) or not names:
        raise ValueError(
            f"need one weight per adapter; got {len(names)} names, {len(weights)} weights"
        )
    adapters = [_require(model, n) for n in names]
    _check_name(model, new_name)
    variants = [n for n, a in zip(names, adapters, strict=True) if a.config.variant is not None]
    if variants:
        raise ValueError(f"adapter(s) {variants} use a LoRA variant; combine plain LoRA adapters")
    ranks = [a.config.r for a in adapters]
    if len(names) == 1:
        method = "linear"  # PEFT's rule: one adapter is always combined linearly
    if method == "linear" and len(set(ranks)) != 1:
        raise ValueError(f"method='linear' needs equal ranks, got {ranks}; use 'cat' or 'svd'")
    r = {"cat": sum(ranks), "linear": ranks[0], "svd": svd_rank or max(ranks)}[method]
    layer_names = list(dict.fromkeys(n for a in adapters for n in a.layers))
    # Every layer's factors first: a combination that fails (an SVD of non-finite weights)
    # leaves the model as it was, with no half-built adapter under new_name.
    factors = {}
    for layer_name in layer_names:
        present = [
            (w, a.layers[layer_name])
            for w, a in zip(weights, adapters, strict=True)
            if layer_name in a.layers
        ]
        try:
            factors[layer_name] = _combined(method, present, r)
        except RuntimeError as err:
            raise ValueError(
                f"combining {list(names)} with method={method!r} failed at layer {layer_name!r} "
                f"({err}); nothing was added"
            ) from err
    first = adapters[0].config
    config = LoRAConfig(layer_names, r=r, alpha=r, dropout=first.dropout)
    added = add_adapter(model, new_name, config)
    try:
        target = _require(model, new_name)
        for layer_name, (A, B) in factors.items():
            out = target.layers[layer_name]
            out.lora_A.zero_()
            out.lora_B.zero_()
            out.lora_A[: A.shape[0]] = A
            out.lora_B[:, : B.shape[1]] = B
    except BaseException:
        delete_adapter(model, new_name)
        raise
    return added


def _combined(
    method: str, present: list[tuple[float, LoRALinear]], r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of one layer, computed in the same order of operations as PEFT."""
    if method == "cat":
        A = torch.cat([layer.lora_A * w * layer.scaling for w, layer in present], dim=0)
        B = torch.cat([layer.lora_B for _, layer in present], dim=1)
        return A, B
    if method == "linear":
        signed, plain = [], []
        for w, layer in present:
            ws = w * layer.scaling
            signed.append(math.sqrt(abs(ws)) * (1 if ws >= 0 else -1))
            plain.append(math.sqrt(abs(ws)))
        A = _weighted_sum([layer.lora_A for _, layer in present], signed)
        B = _weighted_sum([layer.lora_B for _, layer in present], plain)
        return A, B
    delta = _weighted_sum(
        [layer.lora_delta_weight() for _, layer in present], [w for w, _ in present]
    )
    # A convolution's ΔW (c_out, c_in, k_h, k_w) is a matrix over flattened input patches (as
    # PEFT flattens it); A and B take their kernel shapes back afterwards.
    U, S, Vh = torch.linalg.svd(delta.flatten(start_dim=1), full_matrices=True)
    A, B = Vh[:r, :], U[:, :r] @ torch.diag(S[:r])
    if delta.dim() == 4:
        A, B = A.reshape(-1, *delta.shape[1:]), B[:, :, None, None]
    return A, B


def _weighted_sum(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    stacked = torch.stack(tensors, dim=0)
    w = torch.tensor(weights, device=stacked.device).to(stacked.dtype)
    return (stacked * w.view(-1, *([1] * (stacked.dim() - 1)))).sum(dim=0)


# ------------------------------------------------------------------ files


def save_adapters(model: nn.Module, directory: str | os.PathLike, **kwargs) -> Path:
    """Every adapter in PEFT's ``save_pretrained`` layout: ``default`` in ``directory``, each
    other adapter in ``directory/<name>/`` (``kwargs`` as ``lora.save_adapter``)."""
    registry = _registry(model)
    if not registry.adapters:
        raise ValueError("this model has no adapter to save")
    directory = Path(directory)
    previous = registry.active
    try:
        for name in registry.adapters:
            set_adapter(model, name)
            save_adapter(model, directory if name == DEFAULT else directory / name, **kwargs)
    finally:
        set_adapter(model, previous)
    return directory


def load_named_adapter(
    model: nn.Module, directory: str | os.PathLike, adapter_name: str = DEFAULT
) -> list[str]:
    """Load an adapter file (ours or PEFT's) as adapter ``adapter_name``, from ``directory`` or,
    in the ``save_pretrained`` layout, from ``directory/<adapter_name>``. As PEFT's
    ``load_adapter``, the active adapter stays active (a model without one activates it), and
    the trainable flags of everything outside the adapters are left as they were."""
    _check_name(model, adapter_name)
    directory = Path(directory)
    if (directory / adapter_name / "adapter_config.json").is_file():
        directory = directory / adapter_name
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    registry = _registry(model)
    previous = registry.active
    _unplug(model)
    try:
        names = load_one_adapter(model, directory)
        registry.adapters[adapter_name] = _Adapter(_config_of(model), dict(_lora_layers(model)))
        registry.active = adapter_name
        _unplug(model)
    finally:
        _plug(model, previous if previous is not None else adapter_name)
        for n, p in model.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])
    _set_trainable(model)
    return names


def split_head(
    directory: str | os.PathLike, dest: str | os.PathLike, head: str = "classifier"
) -> dict[str, torch.Tensor]:
    """Write the adapter in ``directory`` to ``dest`` without its trained head ``head`` (a
    ``modules_to_save`` entry) and return the head's tensors (``{"weight": ..., "bias": ...}``).

    Adapters of different tasks often carry heads of different shapes (2 sentiment classes, 9
    entity tags) over one shared encoder: the encoder-only files then load as named adapters of
    that encoder, and each head goes to its own task's module."""
    import json

    from safetensors.torch import load_file, save_file

    directory, dest = Path(directory), Path(dest)
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    if head not in (config.get("modules_to_save") or []):
        raise ValueError(
            f"{directory} saves no {head!r} (modules_to_save: {config.get('modules_to_save')})"
        )
    tensors = load_file(directory / ADAPTER_WEIGHTS)
    marker = f".{head}."
    head_tensors = {k.split(marker, 1)[1]: v for k, v in tensors.items() if marker in k}
    rest = {k: v for k, v in tensors.items() if marker not in k}
    config["modules_to_save"] = [m for m in config["modules_to_save"] if m != head] or None
    dest.mkdir(parents=True, exist_ok=True)
    save_file(rest, dest / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (dest / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return head_tensors
