"""lora_edu — learn LoRA (Hu et al. 2021) by building it.

The numpy core (``numpy_lora``, ``analysis``) is imported eagerly and needs only numpy.
Everything that needs torch is imported on first use, so ``import lora_edu`` works (and the
first two notebooks run) without torch installed.

Shapes everywhere: ``x (..., d_in)``, ``W (d_out, d_in)``, ``A (r, d_in)``, ``B (d_out, r)``,
``scaling = alpha / r`` (rsLoRA: ``alpha / sqrt(r)``).
"""

from __future__ import annotations

import importlib
from typing import Any

from lora_edu.analysis import (
    amplification_factor,
    delta_w_report,
    effective_rank,
    low_rank_approx,
    low_rank_error,
    projection_norm,
    random_projection_norm,
    rank_for_energy,
    singular_values,
    stable_rank,
    subspace_similarity,
    subspace_similarity_grid,
)
from lora_edu.config import (
    adapters_dir,
    by_profile,
    cache_dir,
    data_dir,
    device,
    profile,
    results_dir,
)
from lora_edu.convergence import (
    classify_run,
    delta_w_first_order,
    first_step_decrease,
    loglog_slope,
    lora_factor_grads,
    steps_to_tolerance,
    toy_weight_grad,
)
from lora_edu.numpy_lora import (
    SGD,
    Adam,
    ToyProblem,
    ToyResult,
    gradient_check,
    lora_backward,
    lora_forward,
    lora_parameter_counts,
    make_toy_problem,
    toy_loss,
    toy_loss_floor,
    train_full_toy,
    train_lora_toy,
)

__version__ = "0.1.0"

# Names from modules that need torch, transformers or datasets: imported on first use. The numpy
# layer is ``lora_edu.numpy_lora.LoRALinear``; ``lora_edu.LoRALinear`` is the PyTorch one.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        [
            "LoRAConfig",
            "LoRALinear",
            "adapter_state_dict",
            "apply_lora",
            "count_parameters",
            "disable_adapters",
            "load_adapter",
            "lora_parameters",
            "lora_plus_param_groups",
            "lora_scaling",
            "mark_only_lora_trainable",
            "merge_lora",
            "pissa_init",
            "save_adapter",
            "unload_lora",
            "unmerge_lora",
        ],
        "lora_edu.lora",
    ),
    "LoRAConv2d": "lora_edu.lora_conv",
    **dict.fromkeys(["FORMER_LR", "TASK_DEFAULTS", "TaskDefaults"], "lora_edu.defaults"),
    **dict.fromkeys(
        [
            "active_adapter",
            "adapter_names",
            "add_adapter",
            "combine_adapters",
            "delete_adapter",
            "load_named_adapter",
            "mixed_batch",
            "save_adapters",
            "set_adapter",
            "split_head",
        ],
        "lora_edu.adapters",
    ),
    **dict.fromkeys(
        [
            "CONLL_LABELS",
            "download_datasets",
            "load_conll2003",
            "load_digits",
            "load_e2e",
            "load_instructions",
            "load_mnist",
            "load_sst2",
            "locate_datasets",
        ],
        "lora_edu.data",
    ),
    **dict.fromkeys(
        [
            "MeanPoolClassifier",
            "TinyViT",
            "TokenClassifier",
            "load_causal_lm",
            "load_text_model",
        ],
        "lora_edu.models",
    ),
    # trained once and cached by the training side (models.py only defines and loads models)
    "pretrained_vit": "lora_edu.training.images",
    **dict.fromkeys(
        [
            "entity_f1",
            "causal_lm_loss",
            "finetune_causal_lm",
            "finetune_text_classifier",
            "finetune_token_classifier",
            "finetune_vit",
            "format_entities",
            "image_classifier_verdicts",
            "predict_tags",
            "prepare_model",
            "text_classifier_accuracy",
            "text_classifier_logits",
            "text_classifier_verdicts",
        ],
        "lora_edu.train",
    ),
    **dict.fromkeys(
        [
            "kept_adapters",
            "preset_grid",
            "results_file",
            "run_presets",
            "select",
            "sweep_command",
            "training_memory_mb",
        ],
        "lora_edu.experiments",
    ),
    **dict.fromkeys(["make_figures", "paper_adapters", "verdicts_markdown"], "lora_edu.figures"),
    **dict.fromkeys(["results", "TaskResults"], "lora_edu.task_results"),
    **dict.fromkeys(
        ["corpus_bleu", "generate", "paired_bootstrap", "rouge_l"], "lora_edu.generate"
    ),
    **dict.fromkeys(
        ["attention_maps", "attention_rollout", "cls_attention", "plot_attention"],
        "lora_edu.attention",
    ),
    **dict.fromkeys(
        ["aggregate", "make_grid", "markdown_report", "read_results", "run_sweep", "summary_table"],
        "lora_edu.sweep",
    ),
    **dict.fromkeys(
        [
            "learning_curves",
            "lora_bypass_diagram",
            "metric_vs_params",
            "rank_alpha_heatmap",
            "similarity_heatmap",
        ],
        "lora_edu.plots",
    ),
    **dict.fromkeys(
        ["BenchConfig", "compute_ratios", "format_table", "paired_ratios", "run_bench"],
        "lora_edu.bench",
    ),
}

__all__ = [
    "__version__",
    "adapters_dir",
    "by_profile",
    "cache_dir",
    "data_dir",
    "device",
    "profile",
    "results_dir",
    "SGD",
    "Adam",
    "ToyProblem",
    "ToyResult",
    "gradient_check",
    "lora_backward",
    "lora_forward",
    "lora_parameter_counts",
    "make_toy_problem",
    "toy_loss",
    "toy_loss_floor",
    "train_full_toy",
    "train_lora_toy",
    "classify_run",
    "delta_w_first_order",
    "first_step_decrease",
    "loglog_slope",
    "lora_factor_grads",
    "steps_to_tolerance",
    "toy_weight_grad",
    "amplification_factor",
    "delta_w_report",
    "effective_rank",
    "low_rank_approx",
    "low_rank_error",
    "projection_norm",
    "random_projection_norm",
    "rank_for_energy",
    "singular_values",
    "stable_rank",
    "subspace_similarity",
    "subspace_similarity_grid",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lora_edu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
