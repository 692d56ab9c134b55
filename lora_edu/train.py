"""Training, in one import: the loop every task shares and the ``finetune_*`` function of each
kind of task (text and token classification, images, causal LM).

    from lora_edu.train import finetune_text_classifier, fit, prepare_model
    record = finetune_text_classifier(train, eval, lora=LoRAConfig(["query", "value"], r=8))

This module holds no code of its own: it re-exports the modules of ``lora_edu/training/``,
which is where to read (and change) the code:

| module | holds |
| --- | --- |
| ``training/metrics.py`` | accuracy, entity F1, class shares, the collapse rule (numpy only) |
| ``training/loop.py`` | seeding, ``prepare_model`` (methods lora/full/head/bitfit/none), ``fit``, ``predict``, evaluation helpers, collates |
| ``training/run.py`` | the settings as objects (``TrainSettings``, ``LoopSettings``), ``_run`` and the record's fields |
| ``training/text.py`` | ``finetune_text_classifier``, ``finetune_token_classifier``, ``text_classifier_accuracy``, ``text_classifier_logits``, ``text_classifier_verdicts``, ``predict_tags`` |
| ``training/images.py`` | ``finetune_vit``, ``pretrained_vit``, ``image_classifier_verdicts`` |
| ``training/causal_lm.py`` | ``finetune_causal_lm``, ``causal_lm_loss``, ``CAUSAL_LM_LR`` |

Why the split is there: the loop knows no task (its callers pass a collate, an evaluation and
the settings), and each kind of task knows only the loop, so a reader learns the loop once and
then reads one task at a time; a new kind of task is one new module that imports the loop,
never a change to it. ``metrics`` sits below the loop because it needs no torch, and ``run``
above it because building a record is the tasks' shared tail, not part of training.

The settings flow as named objects: a call's LoRA settings are one ``LoRAConfig`` (``lora=``;
the former keywords ``r``, ``alpha``, ``target_modules``, ``dropout``, ``init``, ``use_rslora``
raise a ``TypeError`` that shows the ``LoRAConfig`` to pass instead), and each ``finetune_*``
builds one ``TrainSettings`` from its keywords, by name, for ``_run``.

ARCHITECTURE notes: imports ``lora_edu.training.*`` (and, for names importable from here since
before the split, ``lora``, ``models`` and ``defaults``); imported by ``sweep``, ``teacher``,
``experiments``, ``figures``, ``diffusion``, ``detection``, ``matching`` and the notebooks. Nothing
under ``lora_edu/training/`` imports this module, so it closes no circle.
"""

from __future__ import annotations

# Names this module imported before the split (from lora.py, models.py and defaults.py): kept
# importable from here for code that reached them through it.
from lora_edu.defaults import TASK_DEFAULTS, TaskDefaults
from lora_edu.lora import (
    LORA_RECORD_FIELDS,
    LoRAConfig,
    adalora_allocator,
    apply_lora,
    count_parameters,
    mark_only_lora_trainable,
    optimizer_param_groups,
)
from lora_edu.models import (
    TinyViT,
    classification_loss,
    image_arrays,
    load_text_model,
    replace_head,
    resize_images,
    resolve_text_model,
)
from lora_edu.training.causal_lm import (
    CAUSAL_LM_LR,
    LLAMA_QV,
    _bleu_evaluator,
    _lm_collate,
    _lm_loss_evaluator,
    causal_lm_loss,
    finetune_causal_lm,
)
from lora_edu.training.images import finetune_vit, image_classifier_verdicts, pretrained_vit
from lora_edu.training.loop import (
    METHODS,
    Collate,
    _accuracy_evaluator,
    _autocast,
    _check_method,
    _evaluate_only,
    _logits,
    _num_labels,
    _pad,
    _require_columns,
    _sync,
    _text_collate,
    _to,
    fit,
    linear_schedule,
    predict,
    prepare_model,
    seed_everything,
)
from lora_edu.training.metrics import (
    COLLAPSE_SHARE,
    COLLAPSE_TRUE_SHARE,
    _collapse_message,
    accuracy,
    collapsed_class,
    entity_counts,
    entity_f1,
    extract_entities,
    format_entities,
    label_shares,
)
from lora_edu.training.run import LoopSettings, TrainSettings, _run, lora_or_default
from lora_edu.training.text import (
    _distillation,
    _encode_texts,
    _encode_words,
    _tag_names,
    _word_tags,
    align_labels,
    finetune_text_classifier,
    finetune_token_classifier,
    predict_tags,
    text_classifier_accuracy,
    text_classifier_logits,
    text_classifier_verdicts,
    word_predictions,
)

__all__ = [
    # the loop
    "METHODS",
    "Collate",
    "fit",
    "linear_schedule",
    "predict",
    "prepare_model",
    "seed_everything",
    # the settings and the record
    "LoopSettings",
    "TrainSettings",
    "lora_or_default",
    # metrics
    "COLLAPSE_SHARE",
    "COLLAPSE_TRUE_SHARE",
    "accuracy",
    "collapsed_class",
    "entity_counts",
    "entity_f1",
    "extract_entities",
    "format_entities",
    "label_shares",
    # the tasks
    "CAUSAL_LM_LR",
    "LLAMA_QV",
    "align_labels",
    "causal_lm_loss",
    "finetune_causal_lm",
    "finetune_text_classifier",
    "finetune_token_classifier",
    "finetune_vit",
    "image_classifier_verdicts",
    "predict_tags",
    "pretrained_vit",
    "text_classifier_accuracy",
    "text_classifier_logits",
    "text_classifier_verdicts",
    "word_predictions",
    # kept importable from here (defined in lora.py, models.py, defaults.py)
    "LORA_RECORD_FIELDS",
    "LoRAConfig",
    "TASK_DEFAULTS",
    "TaskDefaults",
    "TinyViT",
    "adalora_allocator",
    "apply_lora",
    "classification_loss",
    "count_parameters",
    "image_arrays",
    "load_text_model",
    "mark_only_lora_trainable",
    "optimizer_param_groups",
    "replace_head",
    "resize_images",
    "resolve_text_model",
    # private helpers that task code outside lora_edu/training/ (diffusion, detection, matching)
    # and the tests reach through this module
    "_accuracy_evaluator",
    "_autocast",
    "_bleu_evaluator",
    "_check_method",
    "_collapse_message",
    "_distillation",
    "_encode_texts",
    "_encode_words",
    "_evaluate_only",
    "_lm_collate",
    "_lm_loss_evaluator",
    "_logits",
    "_num_labels",
    "_pad",
    "_require_columns",
    "_run",
    "_sync",
    "_tag_names",
    "_text_collate",
    "_to",
    "_word_tags",
]
