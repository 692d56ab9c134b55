"""Adapter files in PEFT's format, both ways: ``adapter_config.json`` + ``adapter_model.safetensors``.

    save_adapter(model, "my_adapter")              # peft.PeftModel.from_pretrained reads it
    load_one_adapter(fresh_model, "my_adapter")    # ...and we read adapters PEFT wrote

Keys are PEFT's (``base_model.model.<layer>.lora_A.weight``); a variant names its own tensors
(``peft_keys``) and its own config fields (``Variant.peft_config``). ``lora.load_adapter`` is
``load_one_adapter`` plus PEFT's ``adapter_name`` keyword (several named adapters, ``adapters``).

Imports the layer (``lora_layer``), the model-level code (``lora_model``) and the variant
registry (``variants.base``); nothing here imports a variant or ``adapters``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_edu.lora_layer import _check_hyperparameters
from lora_edu.lora_model import (
    BIAS_MODES,
    LoRAConfig,
    _config_of,
    _is_adapter_tensor,
    _lora_layers,
    _matches,
    _minimal_targets,
    _named_modules_outside_lora,
    _require_lora_layers,
    _resolve_modules_to_save,
    _resolve_targets,
    _set_submodule,
    _variant_layer,
    apply_lora,
    mark_only_lora_trainable,
)
from lora_edu.variants.base import variant_class

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
    lora_fields = {"peft_type": "LORA", "r": config.r, "lora_alpha": config.alpha,
                   "lora_dropout": config.dropout, "use_rslora": config.use_rslora,
                   "init_lora_weights": PEFT_INIT[config.init], "use_dora": False}  # fmt: skip
    own = lora_fields
    if config.variant is not None:  # DoRA sets use_dora; VeRA and AdaLoRA have their own types
        own = variant_class(config.variant).peft_config(lora_fields)
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


def load_one_adapter(model: nn.Module, directory: str | os.PathLike) -> list[str]:
    """Apply LoRA to a base model (without LoRA) from an adapter directory and load its weights.

    Reads ``adapter_config.json`` + ``adapter_model.safetensors`` written by ``save_adapter`` or
    by PEFT (``save_pretrained``); only safetensors, never pickle. Missing or unexpected keys and
    shape mismatches raise ValueError naming them, and leave the model as it was. Afterwards the
    model is ready to train on (as ``mark_only_lora_trainable`` leaves it); call
    ``model.requires_grad_(False)`` for pure inference. Returns the adapted layer names.
    """
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
