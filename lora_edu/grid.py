"""The grid of a sweep: run configurations, their identity and their names.

    grid = make_grid(methods=["lora", "full"], ranks=[4, 8], alphas=[16], seeds=[0])
    run_key(grid[0]); adapter_slug(grid[0])

A run is a plain dict of settings; ``KEY_FIELDS`` say which of them identify it (``run_key``),
and an adapter's folder is named from the same fields (``adapter_slug``). Imports only
``lora_edu.variants`` (to check a variant's name), so every other module may import it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from typing import Any

#: The fields that identify a run: two records with equal values here are the same run.
KEY_FIELDS = (
    "task",
    "method",
    "r",
    "alpha",
    "target_modules",
    "init",
    "use_rslora",
    "variant",  # absent from records older than the variants: read as None, plain LoRA
    "quantize",  # absent from records older than QLoRA: read as None, a full-precision base
    "seed",
    "n_train",
    "epochs",
    "lr",
    "head_lr",  # absent unless the new head trained at its own rate beside the method
    "warmup_ratio",  # absent from a grid: the loop's default (``LOOP_DEFAULTS``)
    "also_train",  # absent unless parameters train in full beside the method
    # the distillation study's (``tasks.distillation``); absent elsewhere
    "transfer_labels",
    "distill_temperature",
    "distill_soft_weight",
)
#: A key field missing from a run (or None) means the training loop's default, so a grid entry
#: that leaves it out and a record that writes the default down are the same run.
LOOP_DEFAULTS = {"warmup_ratio": 0.06}

#: Methods that adapt no low-rank update: rank, alpha and targets do not apply to them
#: (``none``: no training at all, the zero-shot baseline of a generative task).
NON_LORA_METHODS = ("full", "head", "bitfit", "none")
METHODS = ("lora", *NON_LORA_METHODS)


# ---------------------------------------------------------------------------------- the grid


def make_grid(
    methods: Sequence[str] = ("lora",),
    ranks: Sequence[int] = (8,),
    alphas: Sequence[float | None] = (16,),
    target_sets: Sequence[Sequence[str]] = (("query", "value"),),
    seeds: Sequence[int] = (0,),
    *,
    init: str = "kaiming",
    use_rslora: bool = False,
    lr: float | None = None,
    variant: str | None = None,
    quantize: str | None = None,
    head_lr: float | None = None,
    warmup_ratio: float | None = None,
    also_train: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """All run configurations of methods × ranks × alphas × target sets × seeds.

    LoRA runs take every combination; ``full``, ``head`` and ``bitfit`` ignore rank, alpha and
    targets, so they appear once per seed (with ``r``, ``alpha``, ``target_modules`` set to None).
    An alpha of None means ``alpha = r`` (scaling 1). ``lr=None`` lets each method use its
    default learning rate. ``variant`` (e.g. ``"dora"``) and ``quantize`` (``"nf4"``: QLoRA, the
    frozen base in 4 bits) apply to the LoRA runs. ``head_lr`` (the new head's own learning rate
    beside LoRA, BitFit or full fine-tuning), ``warmup_ratio`` and ``also_train`` (parameters
    trained in full beside the method, e.g. ``["position_embedding"]``) are the loop's settings
    (see ``train.fit``); left at None (or empty) they are not written, and the loop's defaults
    apply.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {', '.join(METHODS)}")
    if variant is not None:
        from lora_edu.variants import VARIANTS

        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    bad_ranks = [r for r in ranks if isinstance(r, bool) or r != int(r) or int(r) < 1]
    if bad_ranks:
        raise ValueError(f"ranks must be whole numbers ≥ 1, got {bad_ranks}")
    # A string is one target name (or "all-linear"), never a sequence of one-letter names.
    target_sets = [[t] if isinstance(t, str) else list(t) for t in target_sets]
    runs: list[dict[str, Any]] = []
    for method in methods:
        if method == "lora":
            combos = itertools.product(ranks, alphas, target_sets)
            for r, alpha, targets in combos:
                for seed in seeds:
                    runs.append(
                        {
                            "method": "lora",
                            "r": int(r),
                            "alpha": float(r if alpha is None else alpha),
                            "target_modules": list(targets),
                            "init": init,
                            "use_rslora": use_rslora,
                            "variant": variant,
                            "quantize": quantize,
                            "seed": int(seed),
                            "lr": lr,
                        }
                    )
        else:
            for seed in seeds:
                runs.append(
                    {
                        "method": method,
                        "r": None,
                        "alpha": None,
                        "target_modules": None,
                        "init": None,
                        "use_rslora": None,
                        "variant": None,
                        "quantize": None,
                        "seed": int(seed),
                        "lr": lr,
                    }
                )
    loop = {
        k: v for k, v in (("head_lr", head_lr), ("warmup_ratio", warmup_ratio)) if v is not None
    } | ({"also_train": list(also_train)} if also_train else {})
    return [{**run, **loop} for run in runs]


def _canonical(value: Any) -> Any:
    # 16 and 16.0 are one alpha (and one learning rate): numbers compare as floats.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def run_key(record: dict[str, Any]) -> str:
    """A canonical string for the identifying fields of a run (``KEY_FIELDS``); numbers are
    compared by value, so ``alpha=16`` and ``alpha=16.0`` are the same run."""

    return json.dumps({k: key_value(record, k) for k in KEY_FIELDS}, sort_keys=True)


def key_value(record: dict[str, Any], field_name: str) -> Any:
    """One identifying field of a run as runs are compared: a number by value, and a loop
    setting left out (or None) as the loop's default (``LOOP_DEFAULTS``)."""
    value = record.get(field_name)
    return _canonical(LOOP_DEFAULTS.get(field_name) if value is None else value)


def unique_runs(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` in order with repeats (equal ``run_key``) dropped: the first one is kept."""
    unique: dict[str, dict[str, Any]] = {}
    for run in runs:
        unique.setdefault(run_key(run), run)
    return list(unique.values())


def describe_run(config: dict[str, Any]) -> str:
    if config["method"] != "lora":
        return f"{config['method']} seed={config['seed']}"
    targets = ",".join(config["target_modules"])
    name = config.get("variant") or "lora"
    name = f"q{name} ({config['quantize']})" if config.get("quantize") else name
    also = f" + {','.join(config['also_train'])}" if config.get("also_train") else ""
    if config.get("transfer_labels"):
        also += f" transfer={config['transfer_labels']}"
    if config.get("distill_temperature") is not None:
        also += f" T={config['distill_temperature']:g} soft={config['distill_soft_weight']:g}"
    return f"{name} r={config['r']} α={config['alpha']:g} [{targets}]{also} seed={config['seed']}"


def adapter_slug(config: dict[str, Any]) -> str:
    """The folder name of a run's adapter, from the fields of its run key (``KEY_FIELDS``):
    method, rank, alpha, targets, variant, quantisation and the learning rate always; the
    initialisation, rsLoRA, the head's rate, the warm-up, what else trains in full, the
    training-set size and the number of epochs where the run sets them to something other than
    the usual value; the seed last. Two runs with different keys never share a folder (``task``
    aside: it names the folder above)::

        lora_r8_a16_query-value_lr0.001_s0
        lora_r8_a16_query-value_lr0.002_pissa_rslora_head0.1_n4000_e2_s1
    """
    parts = [config["method"]]
    if config["method"] == "lora":
        parts += [f"r{config['r']}", f"a{key_value(config, 'alpha'):g}"]
    if config.get("target_modules"):
        parts.append("-".join(config["target_modules"]))
    parts += [config[k] for k in ("variant", "quantize") if config.get(k)]
    if config.get("lr") is not None:
        parts.append(f"lr{key_value(config, 'lr'):g}")
    if config.get("init") not in (None, "kaiming"):
        parts.append(str(config["init"]))
    if config.get("use_rslora"):
        parts.append("rslora")
    if config.get("head_lr") is not None:
        parts.append(f"head{key_value(config, 'head_lr'):g}")
    if key_value(config, "warmup_ratio") != key_value({}, "warmup_ratio"):
        parts.append(f"warm{key_value(config, 'warmup_ratio'):g}")
    if config.get("also_train"):
        parts.append("also-" + "-".join(config["also_train"]))
    if config.get("transfer_labels"):
        parts.append(f"transfer-{config['transfer_labels']}")
    for k, short in (("distill_temperature", "T"), ("distill_soft_weight", "soft")):
        if config.get(k) is not None:
            parts.append(f"{short}{key_value(config, k):g}")
    parts += [
        f"{tag}{config[k]}" for k, tag in (("n_train", "n"), ("epochs", "e")) if config.get(k)
    ]
    return "_".join([*parts, f"s{config['seed']}"])
