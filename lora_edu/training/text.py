"""Fine-tuning text encoders: sentence classification (``finetune_text_classifier``, e.g. SST-2
sentiment) and token classification for NER (``finetune_token_classifier``, e.g. CoNLL-2003),
with what it takes to score them afterwards (``text_classifier_accuracy``, ``predict_tags``).

Each ``finetune_*`` function reads its data, tokenises it once into a collate, builds its
evaluation, and hands both to ``training.run._run`` with its settings as one ``TrainSettings``
(the LoRA settings as one ``LoRAConfig``, ``lora=``). Defaults per method come from
``defaults.TASK_DEFAULTS["text"]`` and ``["token"]``.

ARCHITECTURE notes: imports ``defaults``, ``lora`` (``LoRAConfig``), ``models`` (the encoder and
its heads), ``distill`` (soft labels, on use) and ``training.metrics``, ``loop``, ``run``;
imported by ``lora_edu.train`` (which re-exports it). Never imports another task module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lora_edu.defaults import TASK_DEFAULTS
from lora_edu.lora import LoRAConfig
from lora_edu.models import load_text_model, resolve_text_model
from lora_edu.training.loop import (
    Collate,
    _accuracy_evaluator,
    _check_method,
    _logits,
    _num_labels,
    _require_columns,
    _text_collate,
    _to,
    predict,
    seed_everything,
)
from lora_edu.training.metrics import entity_counts, entity_f1, label_shares
from lora_edu.training.run import LoopSettings, TrainSettings, _run, lora_or_default

# --------------------------------------------------------------------------- sentences


def finetune_text_classifier(
    train: Any,
    eval: Any,
    *,
    method: str = "lora",
    lora: LoRAConfig | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 32,
    max_length: int = 64,
    seed: int = 0,
    model: str = "minilm",
    device: Any = None,
    progress: bool = True,
    base: nn.Module | None = None,
    tokenizer: Any = None,
    teacher: nn.Module | None = None,
    temperature: float = 2.0,
    soft_weight: float = 1.0,
    return_model: bool = False,
    **loop: Any,
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Fine-tune a mean-pooling text classifier (``load_text_model("sequence")``) on ``train``
    and report accuracy on ``eval`` (None to skip evaluation).

    ``teacher``: a trained classifier of the same labels (and tokenizer); the model then learns
    from the teacher's probabilities at ``temperature`` (``lora_edu.distill``: knowledge
    distillation), mixed with the true label as ``soft_weight`` · soft + (1 − ``soft_weight``) ·
    hard (1: the soft labels alone). A training label −1 marks a sentence without a label (a
    transfer set's): it learns from the soft term alone, and needs a teacher. Accuracy is still
    measured on the labels.

    ``base``/``tokenizer``: a classifier already loaded (``load_text_model``; it is trained in
    place, e.g. to look at its weights while it trains) instead of loading ``model`` afresh;
    with ``method="none"`` it is only evaluated.

    ``train``/``eval``: ``datasets.Dataset`` with columns ``text`` (str) and ``label`` (int); the
    number of labels comes from the ``ClassLabel`` feature, else the largest label + 1.
    The LoRA settings come as one ``lora=LoRAConfig(target_modules, r=8, alpha=16, ...)``
    (the former keywords ``r=``, ``alpha=``, … raise a ``TypeError`` that shows it).
    ``loop`` may set ``warmup_ratio``, ``weight_decay``, ``max_grad_norm``, ``head_lr``,
    ``eval_every``, ``on_eval`` (``LoopSettings``; see ``fit``). Texts are tokenised once
    (truncated to ``max_length`` tokens).

    Defaults (``defaults.TASK_DEFAULTS["text"]``), each chosen by the SST-2 learning-rate pilot
    on held-out training sentences (4,000 sentences × 2 epochs): ``lr=None`` → probe 1e-2,
    BitFit 3e-3, LoRA 1e-3, full fine-tuning 1e-4 (an adapter or a probe wants a rate 10-100×
    full fine-tuning's: it starts from zero or from random and moves far fewer weights);
    ``lora=None`` → ``LoRAConfig(("query", "value"))``, r = 8 and α = 16 on query and value
    (the paper's choice, and the headline's); ``epochs=None`` → 2; the new head trains at the
    method's rate.

    Returns the record (``training.run``), and the trained model too when ``return_model=True``.
    """
    defaults = TASK_DEFAULTS["text"]
    loop_settings = LoopSettings.from_keywords(
        "finetune_text_classifier()", defaults.loop(method, loop), defaults.target_modules
    )
    lora = lora_or_default(lora, defaults.target_modules)
    if method == "none" and base is None:  # "none" evaluates a trained model given as base=
        raise ValueError(
            "method='none' evaluates a classifier as it is, without training; pass that "
            "classifier as base= (a freshly loaded one has an untrained head)"
        )
    if method != "none":
        _check_method(method)
    splits = [d for d in (train, eval) if d is not None]
    for d in splits:
        _require_columns(d, ("text", "label"), "finetune_text_classifier")
    num_labels = _num_labels(splits, "label")
    unlabelled = sum(int(y) < 0 for y in train["label"])
    if unlabelled and teacher is None:
        raise ValueError(
            f"{unlabelled} training sentences have label -1 (no label): only a teacher= can "
            "label them (knowledge distillation); drop them or pass the teacher"
        )
    if eval is not None and any(int(y) < 0 for y in eval["label"]):
        raise ValueError("the evaluation set has label -1 (no label): it cannot be scored")
    seed_everything(seed)
    if base is None:
        tokenizer, net = load_text_model("sequence", num_labels, model, seed=seed)
    elif tokenizer is None:
        raise ValueError("finetune_text_classifier got base= without its tokenizer=")
    else:
        net = base
        out = getattr(getattr(net, "classifier", None), "out_features", None)
        if out != num_labels:
            raise ValueError(
                f"base has a classifier with {out} outputs but the data has {num_labels} labels; "
                f"load it with load_text_model('sequence', {num_labels})"
            )

    def encode(data: Any) -> Collate:
        return _encode_texts(tokenizer, data, max_length)

    evaluate = (
        None if eval is None else _accuracy_evaluator(len(eval), encode(eval), 2 * batch_size)
    )
    train_collate, loss_fn = encode(train), None
    if teacher is not None:
        train_collate, loss_fn = _distillation(
            teacher, train_collate, len(train), num_labels, temperature, soft_weight,
            2 * batch_size,
        )  # fmt: skip

    settings = TrainSettings(
        method=method,
        lora=lora,
        epochs=defaults.epochs if epochs is None else epochs,
        lr=lr,
        default_lr=defaults.lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        return_model=return_model,
        loss_fn=loss_fn,
        loop=loop_settings,
    )
    return _run(
        "sequence-classification",
        model,
        net,
        len(train),
        train_collate,
        evaluate,
        {
            "max_length": max_length,
            "metric_name": "accuracy",
            "num_labels": num_labels,
            "n_eval": None if eval is None else len(eval),
            "distill_temperature": None if teacher is None else temperature,
            "distill_soft_weight": None if teacher is None else soft_weight,
        },
        settings,
    )


def _encode_texts(tokenizer: Any, data: Any, max_length: int) -> Collate:
    """Tokenise a text/label dataset once (truncated to ``max_length`` tokens) into a collate
    that pads each batch to its longest text."""
    ids = tokenizer(list(data["text"]), truncation=True, max_length=max_length)["input_ids"]
    return _text_collate(ids, [int(y) for y in data["label"]], tokenizer.pad_token_id)


def _distillation(
    teacher: nn.Module, collate: Collate, n: int, num_labels: int, temperature: float,
    soft_weight: float, batch_size: int,
) -> tuple[Collate, Callable]:  # fmt: skip
    """A collate that yields, per sentence, the teacher's soft labels and the true label (−1:
    none) in one row of ``num_labels + 1`` numbers, and the loss that mixes them
    (``distill.mixed_distillation_loss``)."""
    from lora_edu.distill import mixed_distillation_loss, soft_targets

    teacher_logits = _all_logits(teacher, collate, n, batch_size)
    if teacher_logits.shape[-1] != num_labels:
        raise ValueError(
            f"the teacher predicts {teacher_logits.shape[-1]} classes, the data has {num_labels}"
        )
    soft = soft_targets(teacher_logits, temperature)

    def soft_collate(indices: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        inputs, labels = collate(indices)
        return inputs, torch.cat([soft[indices], labels[:, None].float()], dim=1)

    return soft_collate, mixed_distillation_loss(temperature, soft_weight)


def _all_logits(model: nn.Module, collate: Collate, n: int, batch_size: int) -> torch.Tensor:
    """The model's logits ``(n, C)`` for examples ``0..n-1`` of ``collate``, in eval mode (its
    mode is put back after), on the CPU in float32."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits = []
    with torch.inference_mode():
        for indices in torch.arange(n).split(batch_size):
            inputs, _ = collate(indices)
            logits.append(_logits(model(**_to(inputs, device))).float().cpu())
    model.train(was_training)
    return torch.cat(logits)


def text_classifier_logits(
    model: Any,
    texts: Sequence[str],
    tokenizer: Any,
    *,
    max_length: int = 64,
    batch_size: int = 64,
) -> torch.Tensor:
    """The classifier's logits for ``texts``, ``(len(texts), num_labels)``, tokenised as
    ``finetune_text_classifier`` tokenises (``tokenizer``, truncation to ``max_length``):
    e.g. a teacher's answers (``.argmax(-1)``) or its soft labels (``distill.soft_targets``)."""
    texts = list(texts)
    collate = _encode_texts(tokenizer, {"text": texts, "label": [0] * len(texts)}, max_length)
    return _all_logits(model, collate, len(texts), batch_size)


def text_classifier_verdicts(
    model: Any,
    data: Any,
    *,
    model_name: str = "minilm",
    max_length: int = 64,
    batch_size: int = 64,
) -> np.ndarray:
    """One boolean per example of ``data`` (a ``datasets.Dataset`` with columns text, label), in
    order: did ``model`` classify it right? What a paired test (McNemar, a bootstrap over
    examples) compares between two models.

    ``model`` is the second value of ``finetune_text_classifier(..., return_model=True)`` (or
    any model that takes the tokenizer's output and returns logits); the texts are tokenised as
    that function does (``model_name``'s tokenizer, truncation to ``max_length``), and the model
    is put in eval mode."""
    from transformers import AutoTokenizer

    _require_columns(data, ("text", "label"), "text_classifier_verdicts")
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model(model_name))
    collate = _encode_texts(tokenizer, data, max_length)
    correct = _accuracy_evaluator(len(data), collate, batch_size)(model)["eval_correct"]
    return np.array([c == "1" for c in correct])


def text_classifier_accuracy(
    model: Any,
    data: Any,
    *,
    model_name: str = "minilm",
    max_length: int = 64,
    batch_size: int = 64,
) -> float:
    """Accuracy of ``model`` on ``data`` (a ``datasets.Dataset`` with columns text, label): the
    mean of ``text_classifier_verdicts``, with the same arguments. Use it to measure training
    accuracy next to validation accuracy, i.e. the generalisation gap."""
    _require_columns(data, ("text", "label"), "text_classifier_accuracy")
    verdicts = text_classifier_verdicts(
        model, data, model_name=model_name, max_length=max_length, batch_size=batch_size
    )
    return float(verdicts.mean())


# --------------------------------------------------------------------------- tokens (NER)


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """One label per sub-word token: the word's label on its first sub-word, ``-100`` (ignored by
    the loss) on special tokens (``word_id None``) and on the word's later sub-words.

    >>> align_labels([None, 0, 1, 1, None], [3, 7])
    [-100, 3, 7, -100, -100]
    """
    aligned, previous = [], None
    for word in word_ids:
        aligned.append(-100 if word is None or word == previous else int(word_labels[word]))
        previous = word
    return aligned


def word_predictions(
    words: Sequence[int], token_preds: Sequence[int], n_words: int, label_names: Sequence[str]
) -> list[str]:
    """Tags for the ``n_words`` words of a sentence from predictions on first sub-words:
    ``token_preds[i]`` (a label id) belongs to word ``words[i]``; words without a first
    sub-word (dropped by the tokenizer or cut off by truncation) get ``"O"``."""
    tags = ["O"] * n_words
    for word, pred in zip(words, token_preds, strict=True):
        tags[word] = label_names[pred]
    return tags


def finetune_token_classifier(
    train: Any,
    eval: Any,
    *,
    method: str = "lora",
    lora: LoRAConfig | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 0,
    model: str = "minilm",
    device: Any = None,
    progress: bool = True,
    label_names: Sequence[str] | None = None,
    return_model: bool = False,
    **loop: Any,
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Fine-tune a token classifier (``load_text_model("token")``) for NER and report
    entity-level F1 (``entity_f1``) on ``eval``.

    ``train``/``eval``: ``datasets.Dataset`` with columns ``tokens`` (list of words) and
    ``ner_tags`` (list of IOB2 label ids, a ``Sequence(ClassLabel)`` whose names are the tags, or
    pass ``label_names``). Each word's label goes on its first sub-word (``align_labels``).
    Evaluation is on whole sentences: words cut off by ``max_length`` are predicted ``"O"``.
    Other arguments as in ``finetune_text_classifier``.

    Defaults (``defaults.TASK_DEFAULTS["token"]``), chosen by the CoNLL-2003 learning-rate pilot
    on held-out training sentences (3,000 sentences × 3 epochs) and checked on a small, sparse NER
    set (1,900 sentences, 92 % ``O``; ``lora-edu sweep --task conll2003-sparse --preset
    defaults-check``): ``lr=None`` → probe 1e-1 and BitFit 1e-2 (a token head must separate
    nine tags in every token's state: at a sentence task's rates it is still learning when
    training ends; BitFit's pilot winner 3e-2 collapsed onto ``O`` on the sparse set, so the
    default is the next rate down, within a point of it in the pilot), LoRA 2e-3, full
    fine-tuning 5e-4; ``lora=None`` → ``LoRAConfig("all-linear")`` (the MLPs rewrite each
    token's own state: all linear layers beat query, value in the pilot and on the sparse set);
    ``epochs=None`` → 3. The head trains at the method's rate: beside all linear layers its own
    rate (``head_lr=0.1``) changed F1 by less than a single run's noise on the sparse set, while
    beside query, value only it helped a lot: pass ``head_lr=0.1`` with those targets.
    """
    defaults = TASK_DEFAULTS["token"]
    loop_settings = LoopSettings.from_keywords(
        "finetune_token_classifier()", defaults.loop(method, loop), defaults.target_modules
    )
    lora = lora_or_default(lora, defaults.target_modules)
    _check_method(method)
    splits = [d for d in (train, eval) if d is not None]
    for d in splits:
        _require_columns(d, ("tokens", "ner_tags"), "finetune_token_classifier")
    label_names = _tag_names(train, label_names)
    num_labels = max(len(label_names), _num_labels(splits, "ner_tags"))
    if num_labels > len(label_names):
        raise ValueError(
            f"ner_tags hold ids up to {num_labels - 1} but label_names has {len(label_names)}"
        )
    seed_everything(seed)
    tokenizer, net = load_text_model("token", num_labels, model, seed=seed)

    evaluate = None
    if eval is not None:
        eval_collate, first_words = _encode_words(tokenizer, eval, max_length)
        true_tags = [[label_names[y] for y in t] for t in eval["ner_tags"]]
        n_words = [len(t) for t in true_tags]
        true_share = label_shares(tag for tags in true_tags for tag in tags)

        def evaluate(m: nn.Module) -> dict[str, Any]:
            seqs = _word_tags(m, eval_collate, first_words, n_words, label_names, 2 * batch_size)
            scores = entity_f1(true_tags, seqs)
            return {
                "metric": scores.pop("f1"),
                **scores,
                "eval_entity_counts": entity_counts(true_tags, seqs),
                "predicted_share": label_shares(tag for tags in seqs for tag in tags),
                "true_share": true_share,
            }

    train_collate, _ = _encode_words(tokenizer, train, max_length)
    settings = TrainSettings(
        method=method,
        lora=lora,
        epochs=defaults.epochs if epochs is None else epochs,
        lr=lr,
        default_lr=defaults.lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        return_model=return_model,
        loop=loop_settings,
    )
    return _run(
        "token-classification",
        model,
        net,
        len(train),
        train_collate,
        evaluate,
        {
            "max_length": max_length,
            "metric_name": "entity_f1",
            "num_labels": num_labels,
            "label_names": label_names,
            "n_eval": None if eval is None else len(eval),
        },
        settings,
    )


def predict_tags(
    model: nn.Module,
    data: Any,
    *,
    label_names: Sequence[str] | None = None,
    model_name: str = "minilm",
    max_length: int = 128,
    batch_size: int = 64,
) -> list[list[str]]:
    """The IOB2 tags ``model`` predicts for the sentences of ``data``, one list of tags per
    sentence and one tag per word: the argmax on the word's first sub-word, as
    ``finetune_token_classifier`` evaluates (words cut off by ``max_length`` get ``"O"``).

    ``model``: a token classifier, e.g. the second value of
    ``finetune_token_classifier(..., return_model=True)`` or ``load_text_model("token", ...)``
    with ``load_adapter``; it is put in eval mode. ``data``: a ``datasets.Dataset`` with a column
    ``tokens`` (lists of words); tag names come from ``label_names`` or from the ``ClassLabel``
    of its ``ner_tags`` column. The words are tokenised by ``model_name``'s tokenizer. Score the
    result with ``entity_f1(true_tags, predict_tags(...))``.
    """
    from transformers import AutoTokenizer

    _require_columns(data, ("tokens",), "predict_tags")
    label_names = _tag_names(data, label_names)
    num_labels = getattr(model, "num_labels", len(label_names))
    if num_labels != len(label_names):
        raise ValueError(
            f"the model predicts {num_labels} labels but {len(label_names)} tag names were "
            "given; pass label_names in the label-id order the model was trained with"
        )
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model(model_name))
    collate, first_words = _encode_words(tokenizer, data, max_length, tags=False)
    n_words = [len(words) for words in data["tokens"]]
    return _word_tags(model, collate, first_words, n_words, label_names, batch_size)


def _encode_words(
    tokenizer: Any, data: Any, max_length: int, tags: bool = True
) -> tuple[Collate, list[list[int]]]:
    """Tokenise a dataset of word lists (column ``tokens``) once, truncated to ``max_length``
    sub-words, into a collate and, per sentence, the words whose first sub-word is kept.

    Labels sit on first sub-words (``align_labels``): the word's tag id from ``ner_tags`` when
    ``tags``, else the word's index (prediction only); ``-100`` on every other token either way.
    """
    words = [list(w) for w in data["tokens"]]
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    word_ids = [enc.word_ids(i) for i in range(len(words))]
    # Labelling each first sub-word with its word's index lists the words that get a prediction
    # (a word the tokenizer drops, or one cut off by max_length, has none and is predicted "O").
    positions = [align_labels(ids, range(len(w))) for ids, w in zip(word_ids, words, strict=True)]
    first_words = [[i for i in p if i != -100] for p in positions]
    labels = positions
    if tags:
        labels = [align_labels(ids, t) for ids, t in zip(word_ids, data["ner_tags"], strict=True)]
    return _text_collate(enc["input_ids"], labels, tokenizer.pad_token_id), first_words


def _word_tags(
    model: nn.Module,
    collate: Collate,
    first_words: list[list[int]],
    n_words: Sequence[int],
    label_names: Sequence[str],
    batch_size: int,
) -> list[list[str]]:
    """Predicted tags, one per word, for the sentences of ``_encode_words``: the argmax label
    on each word's first sub-word (``word_predictions``), ``"O"`` for words without one."""
    device = next(model.parameters()).device
    token_preds = []
    for preds, labels in predict(model, len(first_words), collate, batch_size, device):
        token_preds += [p[y != -100].tolist() for p, y in zip(preds, labels, strict=True)]
    return [
        word_predictions(words, ids, n, label_names)
        for words, ids, n in zip(first_words, token_preds, n_words, strict=True)
    ]


def _tag_names(data: Any, label_names: Sequence[str] | None) -> list[str]:
    """``label_names``, else the ``ClassLabel`` names of ``data``'s ``ner_tags`` column."""
    if label_names is None:
        feature = getattr(data, "features", {}).get("ner_tags")
        label_names = getattr(getattr(feature, "feature", None), "names", None)
        if label_names is None:
            raise ValueError(
                "ner_tags has no ClassLabel names to read IOB2 tags from; pass label_names="
                "['O', 'B-PER', 'I-PER', ...] in label-id order"
            )
    return list(label_names)
