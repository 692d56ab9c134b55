"""One training loop for every task (text classification, NER, images) and every method.

Methods (``prepare_model``) — what trains; the ``classifier`` head always does:

* ``"lora"``: low-rank adapters ``B A`` on ``target_modules`` (``W`` frozen), see ``lora.py``;
* ``"full"``: every parameter;
* ``"head"``: the classifier only (a linear probe);
* ``"bitfit"``: every bias (including LayerNorm biases, as in BitFit) and the classifier.

The loop (``fit``): seeds everything, AdamW on the trainable parameters, learning rate warmed up
linearly over the first ``warmup_ratio`` of the steps then decayed linearly towards 0, gradients
clipped to norm ``max_grad_norm``, batches padded to their own longest sequence (no sorting), bf16
autocast on CUDA only (CPU and MPS run in float32), one evaluation after each epoch.

Every ``finetune_*`` function returns a *record*, a JSON-ready dict:

| key | meaning |
| --- | --- |
| ``task``, ``model``, ``method`` | what was trained and how |
| ``r``, ``alpha``, ``dropout``, ``target_modules``, ``init``, ``use_rslora``, ``variant``, ``quantize`` | LoRA settings (None unless ``method="lora"``) |
| ``adalora_ranks`` | AdaLoRA only: the rank each adapted layer ends with |
| ``lora_targets`` | names of the layers LoRA wrapped (``[]`` for other methods) |
| ``lr``, ``lr_is_default`` | learning rate used; True when it was the task kind's default (``defaults.TASK_DEFAULTS``) |
| ``epochs``, ``batch_size``, ``max_length``, ``seed``, ``warmup_ratio``, ``weight_decay``, ``max_grad_norm`` (and ``head_lr`` when set) | the rest of the configuration (``max_length`` is None for images) |
| ``n_train``, ``n_eval``, ``num_labels``, ``steps`` | sizes |
| ``metric_name``, ``metric`` | ``"accuracy"`` or ``"entity_f1"`` on ``eval`` after the last epoch (None without ``eval``) |
| ``eval_correct`` | accuracy tasks: ``"0110…"``, each ``eval`` example wrong (0) or right (1) after the last epoch, for paired tests |
| ``eval_values`` | style adapters (notebook 16): each sample's ink share, for paired tests (``eval_correct`` marks the samples in the style: inside the ink band, or called the style's digit) |
| ``eval_entity_counts`` | entity F1: ``[hits, predicted, true]`` entities per ``eval`` sentence after the last epoch, for paired tests |
| ``predicted_share``, ``true_share`` | each class's share of the predictions and of the true labels on ``eval`` (NER: of the words' tags), after the last epoch and in each epoch of ``history`` |
| ``collapsed`` | present when the predictions collapsed onto one class (``collapsed_class``): that class; ``fit`` also warns |
| ``precision``, ``recall``, ``per_type`` | NER only: entity-level scores, ``per_type[type] = {precision, recall, f1, support}`` |
| ``trainable_params``, ``total_params``, ``trainable_percent`` | from ``count_parameters`` after ``prepare_model`` |
| ``train_seconds`` | wall time of the training steps only (data already tokenised; evaluation excluded) |
| ``eval_seconds`` | wall time of all evaluations |
| ``peak_memory_mb`` | CUDA: ``torch.cuda.max_memory_allocated`` during training; None on CPU/MPS |
| ``process_peak_rss_mb`` | the process's resident-memory high-water mark since it started (``resource``), NOT the training alone; None where unavailable |
| ``device``, ``precision_mode`` | e.g. ``"cpu"`` and ``"float32"`` / ``"bf16-autocast"`` |
| ``history`` | ``loss`` and ``lr`` per step; ``epochs``: one ``{epoch, train_loss, metric}`` per epoch |
| ``torch_version`` | for reproducing the run |
"""

from __future__ import annotations

import inspect
import math
import random
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lora_edu import config
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
    pretrained_vit,
    replace_head,
    resize_images,
    resolve_text_model,
)

#: A class that takes at least this share of the predictions while being at most
#: ``COLLAPSE_TRUE_SHARE`` of the true labels means the model predicts one class for everything.
COLLAPSE_SHARE = 0.99
COLLAPSE_TRUE_SHARE = 0.95

#: The methods every ``finetune_*`` function offers (default rates: ``defaults.TASK_DEFAULTS``).
METHODS = ("lora", "full", "head", "bitfit")

#: Collate: a batch of example indices → (model keyword inputs, labels), all on the CPU.
Collate = Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (every device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- metrics


def accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of ``preds (N,)`` equal to ``labels (N,)``."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape or preds.size == 0:
        raise ValueError(
            f"accuracy needs two non-empty arrays of one shape; got {preds.shape} and {labels.shape}"
        )
    return float((preds == labels).mean())


def extract_entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entities in one IOB2 tag sequence, as ``(type, start, end)`` with ``end`` exclusive
    (the entity is ``tokens[start:end]``).

    ``B-X`` starts an entity of type X; ``I-X`` continues it. As in ``conlleval``, an ``I-X``
    that does not follow a ``B-X``/``I-X`` (a "stray I-") starts a new entity, and ``B-X``
    right after an X entity starts a second one.

    >>> sorted(extract_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]))
    [('LOC', 3, 4), ('LOC', 4, 5), ('PER', 0, 2)]
    """
    entities = set()
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):  # the sentinel "O" closes a final entity
        prefix, _, tag_type = tag.partition("-")
        if tag != "O" and (prefix not in ("B", "I") or not tag_type):
            raise ValueError(
                f"tag {tag!r} at position {i} is not IOB2; expected 'O', 'B-<type>' or 'I-<type>'"
            )
        if prefix == "I" and tag_type == kind:
            continue
        if kind is not None:
            entities.add((kind, start, i))
        kind, start = (tag_type, i) if tag != "O" else (None, i)
    return entities


def entity_f1(
    true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Entity-level micro precision, recall and F1 (CoNLL convention: an entity counts only when
    its type and both boundaries match exactly), plus ``per_type[type] = {precision, recall, f1,
    support}`` with ``support`` the number of true entities of that type."""
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"{len(true_seqs)} true sequences but {len(pred_seqs)} predicted ones")
    true_count, pred_count, hits = Counter(), Counter(), Counter()
    for i, (true_tags, pred_tags) in enumerate(zip(true_seqs, pred_seqs, strict=True)):
        if len(true_tags) != len(pred_tags):
            raise ValueError(
                f"sequence {i}: {len(true_tags)} true tags but {len(pred_tags)} predicted tags"
            )
        true, pred = extract_entities(true_tags), extract_entities(pred_tags)
        true_count.update(kind for kind, _, _ in true)
        pred_count.update(kind for kind, _, _ in pred)
        hits.update(kind for kind, _, _ in true & pred)

    def scores(tp: int, n_pred: int, n_true: int) -> dict[str, float]:
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}

    result: dict[str, Any] = scores(
        sum(hits.values()), sum(pred_count.values()), sum(true_count.values())
    )
    result["per_type"] = {
        kind: {
            **scores(hits[kind], pred_count[kind], true_count[kind]),
            "support": true_count[kind],
        }
        for kind in sorted(true_count | pred_count)
    }
    return result


def entity_counts(
    true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]
) -> list[list[int]]:
    """Per sentence ``[hits, predicted, true]`` entity counts, the sums of which give
    ``entity_f1``'s micro scores: what a paired bootstrap over sentences resamples."""
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"{len(true_seqs)} true sequences but {len(pred_seqs)} predicted ones")
    counts = []
    for true_tags, pred_tags in zip(true_seqs, pred_seqs, strict=True):
        true, pred = extract_entities(true_tags), extract_entities(pred_tags)
        counts.append([len(true & pred), len(pred), len(true)])
    return counts


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


def format_entities(words: Sequence[str], tags: Sequence[str]) -> str:
    """One sentence as text with each entity (``extract_entities``) in brackets followed by its
    type, for reading predictions side by side.

    >>> format_entities(["Ann", "Lee", "left", "Acme", "."], ["B-PER", "I-PER", "O", "B-ORG", "O"])
    '[Ann Lee]PER left [Acme]ORG .'
    """
    if len(words) != len(tags):
        raise ValueError(f"{len(words)} words but {len(tags)} tags; expected one tag per word")
    pieces = list(words)
    for kind, start, end in extract_entities(tags):
        pieces[start] = "[" + pieces[start]
        pieces[end - 1] += "]" + kind
    return " ".join(pieces)


# --------------------------------------------------------------------------- methods


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def prepare_model(
    model: nn.Module,
    method: str,
    lora: LoRAConfig | None = None,
    *,
    head: str | None = "classifier",
) -> list[str]:
    """Set which parameters of ``model`` train, in place, for ``method`` (see module docstring).

    ``lora`` (the LoRA settings; default ``LoRAConfig(["query", "value"])``: r=8, α=16) is used
    only by ``method="lora"``. ``head`` names the new output layer
    that trains beside every method (``"classifier"``); a causal LM keeps its pretrained
    ``lm_head`` frozen, so it passes ``head=None`` (and then ``"head"``/``"bitfit"`` do not
    apply). ``method="none"`` freezes everything (the untrained baseline). Returns the names of
    the layers LoRA wrapped (``[]`` for the other methods).
    """
    if method == "none":
        model.requires_grad_(False)
        return []
    _check_method(method)
    if head is None:
        if method not in ("lora", "full"):
            raise ValueError(
                f"method={method!r} trains a new head, and this model keeps its own output "
                "layer; use 'lora', 'full' or 'none'"
            )
    elif not isinstance(getattr(model, head, None), nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no module named {head!r}; every method trains the "
            "head by that name (load models with lora_edu.models.load_text_model or TinyViT)"
        )
    if method == "lora":
        targets = apply_lora(model, LoRAConfig(["query", "value"]) if lora is None else lora)
        mark_only_lora_trainable(model, bias="none", modules_to_save=(head,) if head else ())
        return targets
    for name, param in model.named_parameters():
        in_head = head is not None and name.startswith(head + ".")
        is_bias = name.rsplit(".", 1)[-1] == "bias"
        param.requires_grad = method == "full" or in_head or (method == "bitfit" and is_bias)
    return []


# --------------------------------------------------------------------------- the loop


def linear_schedule(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor for optimizer step ``step`` (0-based) of ``total_steps``: rises
    linearly to 1 over ``warmup_steps`` (``(step + 1) / (warmup_steps + 1)``, so no step is
    wasted at 0), then falls linearly: ``(total_steps - step) / (total_steps - warmup_steps)``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _logits(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def _to(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: t.to(device, non_blocking=True) for name, t in inputs.items()}


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 autocast only on CUDA: CPU bf16 matmuls are slow on most laptops, and MPS support varies.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows has no resource module
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, else KiB


@torch.inference_mode()
def predict(
    model: nn.Module, n: int, collate: Collate, batch_size: int, device: torch.device
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(argmax predictions, labels)`` on the CPU for examples ``0..n-1`` in order, in
    batches of ``batch_size``, with the model in eval mode (dropout off)."""
    model.eval()
    for indices in torch.arange(n).split(batch_size):
        inputs, labels = collate(indices)
        with _autocast(device):
            logits = _logits(model(**_to(inputs, device)))
        yield logits.argmax(dim=-1).cpu(), labels


def fit(
    model: nn.Module,
    n_train: int,
    collate: Collate,
    evaluate: Callable[[nn.Module], dict[str, Any]] | None,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: bool = True,
    warmup_ratio: float = 0.06,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    desc: str = "train",
    eval_every: int | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    head_lr: float | None = None,
) -> dict[str, Any]:
    """Train ``model`` (already on ``device``, trainable parameters already chosen) on examples
    ``0..n_train-1``, reshuffled each epoch by a generator seeded with ``seed``, minimising
    ``loss_fn(logits, targets)`` (default ``classification_loss``: cross-entropy); call
    ``evaluate(model)`` after each epoch and, with ``eval_every``, also before the first step and
    every ``eval_every`` steps (``history["evals"]``: one ``{step, ...scores}`` each, the data of
    a live learning curve; ``on_eval(history)`` is called after each). ``head_lr`` trains the
    ``classifier`` at its own learning rate (default: ``lr``, like everything else). Returns
    ``history``, timings, memory and ``steps``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires grad; call prepare_model(model, method) first")
    if epochs < 1 or batch_size < 1 or n_train < 1:
        raise ValueError(
            f"need epochs >= 1, batch_size >= 1 and a non-empty training set; "
            f"got epochs={epochs}, batch_size={batch_size}, n_train={n_train}"
        )
    from tqdm.auto import tqdm

    steps_per_epoch = math.ceil(n_train / batch_size)
    total = epochs * steps_per_epoch
    warmup = int(warmup_ratio * total)
    # One group at lr, plus one per factor a LoRA variant asks for (LoRA+: B at 16 × lr).
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, lr, weight_decay, head_lr=head_lr))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_schedule(step, warmup, total)
    )
    # AdaLoRA: an orthogonality term in the loss, and rank allocation after each step.
    allocator = adalora_allocator(model, total)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list] = {"loss": [], "lr": [], "epochs": []}
    train_seconds = eval_seconds = 0.0

    def evaluate_at(step: int) -> None:
        nonlocal eval_seconds
        start = time.perf_counter()
        history.setdefault("evals", []).append({"step": step, **evaluate(model)})
        eval_seconds += time.perf_counter() - start
        model.train()
        if on_eval is not None:
            on_eval(history)

    periodic = evaluate is not None and eval_every is not None and eval_every > 0
    if periodic:
        evaluate_at(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    for epoch in range(1, epochs + 1):
        model.train()
        _sync(device)
        start = time.perf_counter()
        for indices in torch.randperm(n_train, generator=generator).split(batch_size):
            inputs, labels = collate(indices)
            with _autocast(device):
                logits = _logits(model(**_to(inputs, device)))
            loss = (loss_fn or classification_loss)(logits, labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            (loss if allocator is None else loss + allocator.regularizer()).backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            history["lr"].append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
            if allocator is not None:  # the gradients are still there: they score the triplets
                allocator.step(len(history["loss"]) + 1)
            history["loss"].append(loss.item())
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{history['loss'][-1]:.4f}", refresh=False)
            step = len(history["loss"])
            # The end of an epoch is evaluated below anyway: never twice at one step.
            if periodic and step % eval_every == 0 and step % steps_per_epoch:
                _sync(device)
                train_seconds += time.perf_counter() - start
                evaluate_at(step)
                start = time.perf_counter()
        _sync(device)
        train_seconds += time.perf_counter() - start
        epoch_losses = history["loss"][-steps_per_epoch:]
        summary: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": sum(epoch_losses) / len(epoch_losses),
        }
        if evaluate is not None:
            start = time.perf_counter()
            scores = evaluate(model)
            summary.update(scores)
            eval_seconds += time.perf_counter() - start
            collapsed = collapsed_class(scores)
            if collapsed is not None:
                summary["collapsed"] = collapsed
                warnings.warn(_collapse_message(epoch, collapsed, scores), stacklevel=2)
            if "predicted_share" in scores:  # the most predicted class, beside the loss
                top, share = max(scores["predicted_share"].items(), key=lambda kv: kv[1])
                bar.set_postfix(epoch=epoch, loss=f"{summary['train_loss']:.4f}",
                                top=f"{top} {share:.0%}")  # fmt: skip
            if periodic:
                history["evals"].append({"step": len(history["loss"]), **scores})
                if on_eval is not None:
                    on_eval(history)
        history["epochs"].append(summary)
    bar.close()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "history": history,
        "steps": total,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "peak_memory_mb": peak,
        "process_peak_rss_mb": _peak_rss_mb(),
        **({} if allocator is None else {"adalora_ranks": allocator.ranks()}),
    }


def label_shares(labels: Iterable[Any]) -> dict[str, float]:
    """The share of each label in ``labels`` (keys as strings, so records stay JSON), largest
    first: ``label_shares([1, 1, 0, 1]) == {"1": 0.75, "0": 0.25}``."""
    counts = Counter(str(y) for y in labels)
    total = sum(counts.values())
    return {label: n / total for label, n in counts.most_common()} if total else {}


def collapsed_class(scores: dict[str, Any]) -> str | None:
    """The class an evaluation's predictions collapsed onto, or None: a class that takes at least
    ``COLLAPSE_SHARE`` of the predictions (``scores["predicted_share"]``) while it is at most
    ``COLLAPSE_TRUE_SHARE`` of the true labels (``scores["true_share"]``)."""
    predicted, true = scores.get("predicted_share"), scores.get("true_share")
    if not predicted or true is None:
        return None
    top, share = max(predicted.items(), key=lambda kv: kv[1])
    if share >= COLLAPSE_SHARE and true.get(top, 0.0) <= COLLAPSE_TRUE_SHARE:
        return top
    return None


def _collapse_message(epoch: int, label: str, scores: dict[str, Any]) -> str:
    return (
        f"epoch {epoch}: {scores['predicted_share'][label]:.1%} of the predictions are "
        f"{label!r}, which is {scores['true_share'].get(label, 0.0):.1%} of the true labels: the "
        "model predicts one class for (nearly) everything, so the loss can fall to the majority "
        "class's entropy while the metric says it learned nothing. Usual causes: a learning rate "
        "too high (or, with a new head, the head's too low), too few steps after warm-up, or a "
        "class that dominates the data. Try a lower lr, more epochs, or check the labels."
    )


def _evaluate_only(
    model: nn.Module, evaluate: Callable[[nn.Module], dict[str, Any]] | None
) -> dict[str, Any]:
    """``fit``'s result for a model that does not train: one evaluation, as "epoch 0"."""
    start = time.perf_counter()
    scores = {} if evaluate is None else evaluate(model)
    return {
        "history": {"loss": [], "lr": [], "epochs": [{"epoch": 0, "train_loss": None, **scores}]},
        "steps": 0,
        "train_seconds": 0.0,
        "eval_seconds": time.perf_counter() - start,
        "peak_memory_mb": None,
        "process_peak_rss_mb": _peak_rss_mb(),
    }


# --------------------------------------------------------------------------- helpers per task


def _require_columns(dataset: Any, columns: Sequence[str], what: str) -> None:
    names = getattr(dataset, "column_names", None)
    if names is None or any(c not in names for c in columns):
        raise ValueError(
            f"{what} needs a datasets.Dataset with columns {list(columns)}; got "
            f"{type(dataset).__name__} with columns {names}. Rename columns with "
            "dataset.rename_column(old, new), e.g. rename_column('sentence', 'text')"
        )


def _num_labels(datasets: Sequence[Any], column: str) -> int:
    """From a ClassLabel feature if there is one, else the largest label + 1."""
    feature = datasets[0].features[column]
    feature = getattr(feature, "feature", feature)  # inside a Sequence/List for tag columns
    if hasattr(feature, "num_classes"):
        return int(feature.num_classes)
    largest = -1
    for data in datasets:
        for value in data[column]:
            largest = max(largest, max(value, default=-1) if isinstance(value, list) else value)
    return largest + 1


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad to the longest sequence: ``(B, T_max)`` int64."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def _text_collate(input_ids: list[list[int]], labels: list, pad_id: int) -> Collate:
    """Collate for tokenised text: pad ``input_ids`` per batch; ``labels`` are one int per text
    or one list per text (token labels, padded with -100)."""

    def collate(indices: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        ids = [input_ids[i] for i in indices.tolist()]
        batch = _pad(ids, pad_id)
        mask = _pad([[1] * len(s) for s in ids], 0)
        picked = [labels[i] for i in indices.tolist()]
        target = _pad(picked, -100) if isinstance(picked[0], list) else torch.tensor(picked)
        return {"input_ids": batch, "attention_mask": mask}, target

    return collate


def _encode_texts(tokenizer: Any, data: Any, max_length: int) -> Collate:
    """Tokenise a text/label dataset once (truncated to ``max_length`` tokens) into a collate
    that pads each batch to its longest text."""
    ids = tokenizer(list(data["text"]), truncation=True, max_length=max_length)["input_ids"]
    return _text_collate(ids, [int(y) for y in data["label"]], tokenizer.pad_token_id)


def _accuracy_evaluator(n: int, collate: Collate, batch_size: int) -> Callable:
    """``evaluate(model) -> {"metric": accuracy, "eval_correct": "0110…"}`` over examples
    ``0..n-1``: ``eval_correct`` marks each example right (1) or wrong (0), in order, so that two
    runs can be compared example by example (McNemar's test)."""

    def evaluate(model: nn.Module) -> dict[str, Any]:
        device = next(model.parameters()).device
        batches = predict(model, n, collate, batch_size, device)
        preds, labels = (torch.cat(t).numpy() for t in zip(*batches, strict=True))
        correct = "".join("1" if ok else "0" for ok in preds == labels)
        return {
            "metric": accuracy(preds, labels),
            "eval_correct": correct,
            "predicted_share": label_shares(preds.tolist()),
            "true_share": label_shares(labels.tolist()),
        }

    return evaluate


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


def _lora_settings(
    func: Callable[..., Any], args: dict[str, Any], task_defaults: TaskDefaults | None = None
) -> LoRAConfig:
    """The one ``LoRAConfig`` of a ``finetune_*`` call: ``lora=`` when given (then the separate
    LoRA keywords must keep their defaults), else one built from those keywords, with
    ``target_modules=None`` meaning the task kind's default targets."""
    given = args.get("lora")
    if given is None:
        # (a setting without a keyword, like ``variant``, is reached through lora= only)
        settings = {k: args[k] for k in LORA_RECORD_FIELDS if k in args}
        if settings.get("target_modules") is None and task_defaults is not None:
            settings["target_modules"] = task_defaults.target_modules
        return LoRAConfig(**settings)
    if not isinstance(given, LoRAConfig):
        raise TypeError(f"lora= takes a lora_edu.LoRAConfig, got {type(given).__name__}")
    defaults = inspect.signature(func).parameters
    clash = {k: args[k] for k in LORA_RECORD_FIELDS if k in args and args[k] != defaults[k].default}
    if clash:
        raise ValueError(
            f"{func.__name__} got lora={given} and also {clash}; give the LoRA settings one way: "
            "in the LoRAConfig, or as keywords"
        )
    return given


def _with_defaults(args: dict[str, Any], kind: str, func: Callable[..., Any]) -> dict[str, Any]:
    """``args`` (a ``finetune_*`` call's ``locals()``) with what was left out filled in from
    ``TASK_DEFAULTS[kind]``: the LoRA settings as one ``LoRAConfig``, the epochs, each method's
    learning rate (``default_lr``, used when ``lr`` is None) and the head's rate in ``loop``."""
    defaults = TASK_DEFAULTS[kind]
    args = dict(args)
    args["lora"] = _lora_settings(func, args, defaults)
    if args["epochs"] is None:
        args["epochs"] = defaults.epochs
    args["default_lr"] = defaults.lr
    args["loop"] = defaults.loop(args["method"], args["loop"])
    return args


def _run(
    task: str,
    model_name: str,
    model: nn.Module,
    n_train: int,
    collate: Collate,
    evaluate: Callable[[nn.Module], dict[str, Any]] | None,
    extra: dict[str, Any],
    args: dict[str, Any],
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Shared tail of the ``finetune_*`` functions: prepare the model for ``args["method"]``,
    train, evaluate, build the record. ``args`` are the caller's arguments (``locals()`` at
    entry: method, LoRA settings, lr, epochs, batch_size, seed, device, progress, return_model,
    loop); ``extra`` are task-specific record entries."""
    method, lr = args["method"], args["lr"]
    lora = args["lora"]
    loop = args["loop"]
    device = config.device() if args["device"] is None else torch.device(args["device"])
    targets = prepare_model(model, method, lora, head=args.get("head", "classifier"))
    counts = count_parameters(model)
    model.to(device)
    default_lr = args["default_lr"]
    used_lr = None if method == "none" else default_lr[method] if lr is None else lr
    epochs, batch_size, seed = args["epochs"], args["batch_size"], args["seed"]
    if method == "none":  # the untrained baseline: evaluated as it is
        result = _evaluate_only(model, evaluate)
        epochs = 0
    else:
        result = fit(
            model,
            n_train,
            collate,
            evaluate,
            epochs=epochs,
            lr=used_lr,
            batch_size=batch_size,
            seed=seed,
            device=device,
            progress=args["progress"],
            desc=f"{task} · {method}",
            loss_fn=args.get("loss_fn"),
            **loop,
        )
    final = dict(result["history"]["epochs"][-1])
    # Per-example verdicts are kept once, for the final model, not in every epoch's history.
    for entry in (*result["history"]["epochs"], *result["history"].get("evals", [])):
        entry.pop("eval_correct", None)
        entry.pop("eval_entity_counts", None)
    if args.get("final") is not None:  # measured once after training (e.g. BLEU of generations)
        start = time.perf_counter()
        final = {**final, **args["final"](model)}
        result["eval_seconds"] += time.perf_counter() - start
    record = {
        "task": task,
        "model": model_name,
        "method": method,
        **(lora.record() if method == "lora" else dict.fromkeys(LORA_RECORD_FIELDS)),
        "lora_targets": targets,
        "lr": used_lr,
        "lr_is_default": lr is None,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "warmup_ratio": loop.get("warmup_ratio", 0.06),
        "weight_decay": loop.get("weight_decay", 0.01),
        "max_grad_norm": loop.get("max_grad_norm", 1.0),
        **({"head_lr": loop["head_lr"]} if loop.get("head_lr") is not None else {}),
        **extra,
        "n_train": n_train,
        "metric": final.get("metric"),
        **{k: v for k, v in final.items() if k not in ("epoch", "train_loss", "metric")},
        "trainable_params": counts["trainable"],
        "total_params": counts["total"],
        "trainable_percent": counts["percent"],
        "train_seconds": result["train_seconds"],
        "eval_seconds": result["eval_seconds"],
        "steps": result["steps"],
        "peak_memory_mb": result["peak_memory_mb"],
        "process_peak_rss_mb": result["process_peak_rss_mb"],
        "device": str(device),
        "precision_mode": "bf16-autocast" if device.type == "cuda" else "float32",
        "torch_version": torch.__version__,
        **({"adalora_ranks": result["adalora_ranks"]} if "adalora_ranks" in result else {}),
        "history": result["history"],
    }
    if record["metric"] is None and "eval_loss" in final:
        record["metric"] = final["eval_loss"]
    return (record, model) if args["return_model"] else record


# --------------------------------------------------------------------------- the three tasks


def finetune_text_classifier(
    train: Any,
    eval: Any,
    *,
    method: str = "lora",
    lora: LoRAConfig | None = None,
    r: int = 8,
    alpha: float = 16,
    target_modules: Sequence[str] | str | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 32,
    max_length: int = 64,
    seed: int = 0,
    model: str = "minilm",
    device: Any = None,
    progress: bool = True,
    dropout: float = 0.0,
    init: str = "kaiming",
    use_rslora: bool = False,
    base: nn.Module | None = None,
    tokenizer: Any = None,
    teacher: nn.Module | None = None,
    temperature: float = 2.0,
    return_model: bool = False,
    **loop: Any,
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Fine-tune a mean-pooling text classifier (``load_text_model("sequence")``) on ``train``
    and report accuracy on ``eval`` (None to skip evaluation).

    ``teacher``: a trained classifier of the same labels (and tokenizer); the model then learns
    from the teacher's probabilities at ``temperature`` instead of the hard labels
    (``lora_edu.distill``: knowledge distillation). Accuracy is still measured on the labels.

    ``base``/``tokenizer``: a classifier already loaded (``load_text_model``; it is trained in
    place, e.g. to look at its weights while it trains) instead of loading ``model`` afresh;
    with ``method="none"`` it is only evaluated.

    ``train``/``eval``: ``datasets.Dataset`` with columns ``text`` (str) and ``label`` (int); the
    number of labels comes from the ``ClassLabel`` feature, else the largest label + 1.
    The LoRA settings come as one ``lora=LoRAConfig(...)`` or, for convenience, as the keywords
    ``r``, ``alpha``, ``target_modules``, ``dropout``, ``init``, ``use_rslora`` (not both).
    ``loop`` may set ``warmup_ratio``, ``weight_decay``, ``max_grad_norm``, ``head_lr`` (see
    ``fit``). Texts are tokenised once (truncated to ``max_length`` tokens).

    Defaults (``defaults.TASK_DEFAULTS["text"]``), each chosen by the SST-2 learning-rate pilot
    on held-out training sentences (4,000 sentences × 2 epochs): ``lr=None`` → probe 1e-2,
    BitFit 3e-3, LoRA 1e-3, full fine-tuning 1e-4 (an adapter or a probe wants a rate 10-100×
    full fine-tuning's: it starts from zero or from random and moves far fewer weights);
    ``target_modules=None`` → query and value (the paper's choice, and the headline's);
    ``epochs=None`` → 2; the new head trains at the method's rate.

    Returns the record (module docstring), and the trained model too when ``return_model=True``.
    """
    # the call's arguments, what was left out taken from the text defaults
    args = _with_defaults(locals(), "text", finetune_text_classifier)
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
    train_collate = encode(train)
    if teacher is not None:
        train_collate, args["loss_fn"] = _distillation(
            teacher, train_collate, len(train), num_labels, temperature, 2 * batch_size
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
        },
        args,
    )


def _distillation(
    teacher: nn.Module, collate: Collate, n: int, num_labels: int, temperature: float,
    batch_size: int,
) -> tuple[Collate, Callable]:  # fmt: skip
    """A collate that yields the teacher's soft labels instead of the hard ones, and the loss."""
    from lora_edu.distill import distillation_loss, soft_targets

    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    logits = []
    with torch.inference_mode():
        for indices in torch.arange(n).split(batch_size):
            inputs, _ = collate(indices)
            logits.append(_logits(teacher(**_to(inputs, device))).float().cpu())
    teacher.train(was_training)
    teacher_logits = torch.cat(logits)
    if teacher_logits.shape[-1] != num_labels:
        raise ValueError(
            f"the teacher predicts {teacher_logits.shape[-1]} classes, the data has {num_labels}"
        )
    soft = soft_targets(teacher_logits, temperature)

    def soft_collate(indices: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        inputs, _ = collate(indices)
        return inputs, soft[indices]

    return soft_collate, distillation_loss(temperature)


def text_classifier_accuracy(
    model: Any,
    data: Any,
    *,
    model_name: str = "minilm",
    max_length: int = 64,
    batch_size: int = 64,
) -> float:
    """Accuracy of ``model`` on ``data`` (a ``datasets.Dataset`` with columns text, label).

    ``model`` is the second value of ``finetune_text_classifier(..., return_model=True)``; the
    texts are tokenised as that function does (``model_name``'s tokenizer, truncation to
    ``max_length``), and the model is put in eval mode. Use it to measure training accuracy
    next to validation accuracy, i.e. the generalisation gap.
    """
    from transformers import AutoTokenizer

    _require_columns(data, ("text", "label"), "text_classifier_accuracy")
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model(model_name))
    collate = _encode_texts(tokenizer, data, max_length)
    return float(_accuracy_evaluator(len(data), collate, batch_size)(model)["metric"])


def finetune_token_classifier(
    train: Any,
    eval: Any,
    *,
    method: str = "lora",
    lora: LoRAConfig | None = None,
    r: int = 8,
    alpha: float = 16,
    target_modules: Sequence[str] | str | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 0,
    model: str = "minilm",
    device: Any = None,
    progress: bool = True,
    dropout: float = 0.0,
    init: str = "kaiming",
    use_rslora: bool = False,
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
    fine-tuning 5e-4; ``target_modules=None`` → ``"all-linear"`` (the MLPs rewrite each token's
    own state: all linear layers beat query, value in the pilot and on the sparse set);
    ``epochs=None`` → 3. The head trains at the method's rate: beside all linear layers its own
    rate (``head_lr=0.1``) changed F1 by less than a single run's noise on the sparse set, while
    beside query, value only it helped a lot: pass ``head_lr=0.1`` with those targets.
    """
    # the call's arguments, what was left out taken from the token defaults
    args = _with_defaults(locals(), "token", finetune_token_classifier)
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
        args,
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


def finetune_vit(
    train: Any,
    eval: Any,
    *,
    base: TinyViT | None = None,
    method: str = "lora",
    lora: LoRAConfig | None = None,
    r: int = 8,
    alpha: float = 16,
    target_modules: Sequence[str] | str | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 128,
    seed: int = 0,
    device: Any = None,
    progress: bool = True,
    dropout: float = 0.0,
    init: str = "kaiming",
    use_rslora: bool = False,
    return_model: bool = False,
    **loop: Any,
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Fine-tune a copy of ``base`` (default: ``pretrained_vit()``, trained on MNIST) with a
    fresh ``classifier`` for the labels of ``train``, and report accuracy on ``eval``.

    ``train``/``eval``: a ``datasets.Dataset`` with columns ``image`` (H×W or C×H×W, uint8 or
    float in [0, 1]) and ``label``, or a pair ``(images, labels)``; ``eval=None`` skips
    evaluation. ``base`` itself is not modified. Other arguments as in
    ``finetune_text_classifier``.

    Defaults (``defaults.TASK_DEFAULTS["image"]``), chosen by the ViT learning-rate pilot on
    held-out training images (MNIST-pretrained TinyViT adapted to 1,150 of scikit-learn's 8×8
    digits): ``lr=None`` → probe 3e-2, BitFit 1e-2, LoRA 2e-3, full fine-tuning 3e-4;
    ``target_modules=None`` → the four attention projections (query, key, value, output);
    ``epochs=None`` → 20, about 360 steps of 64 images on that set: on a larger one, fewer
    epochs give as many steps. The new head trains at the method's rate.
    """
    # the call's arguments, what was left out taken from the image defaults
    args = _with_defaults(locals(), "image", finetune_vit)
    _check_method(method)
    splits = [image_arrays(train)] + ([] if eval is None else [image_arrays(eval)])
    label_feature = getattr(train, "features", {}).get("label")
    num_labels = getattr(label_feature, "num_classes", None) or 1 + max(
        int(labels.max()) for _, labels in splits
    )
    if base is None:
        base = pretrained_vit(progress=progress)
    # Images of another size (e.g. 8×8 digits for a ViT trained on 28×28 MNIST) are resized.
    size = base.config["image_size"]
    resized_from = None
    for i, (images, labels) in enumerate(splits):
        if images.shape[-2:] != (size, size):
            resized_from = list(images.shape[-2:])
            splits[i] = (resize_images(images, size), labels)
    seed_everything(seed)
    net = replace_head(base, num_labels, seed=seed)
    device = torch.device(device) if device is not None else config.device()

    def collate_for(images: np.ndarray, labels: np.ndarray) -> Collate:
        # The whole image array goes to the device once; batches are slices of it.
        images_t, labels_t = torch.from_numpy(images).to(device), torch.from_numpy(labels)
        return lambda indices: ({"images": images_t[indices.to(device)]}, labels_t[indices])

    evaluate = None
    if len(splits) == 2:
        evaluate = _accuracy_evaluator(len(splits[1][1]), collate_for(*splits[1]), 2 * batch_size)

    return _run(
        "image-classification",
        "tinyvit",
        net,
        len(splits[0][1]),
        collate_for(*splits[0]),
        evaluate,
        {
            "max_length": None,
            "metric_name": "accuracy",
            "num_labels": num_labels,
            "n_eval": len(splits[1][1]) if len(splits) == 2 else None,
            "resized_from": resized_from,
            "base": getattr(base, "pretrain_record", None),
            "vit_config": dict(net.config),
        },
        args,
    )


# --------------------------------------------------------------------------- causal LM

#: Learning rates per method for causal-LM fine-tuning (SmolLM2-135M-Instruct, batch 8, AdamW,
#: linear decay), from a first calibration on E2E (120 steps): LoRA 2e-3, full fine-tuning 5e-5.
#: A full-model rate far above 1e-4 damages a 135M model's pretrained knowledge; LoRA's update
#: starts at zero and needs a much larger step. The E2E presets do not rely on these: they use
#: the rates chosen per method on validation data (``experiments.e2e_chosen_lrs``).
CAUSAL_LM_LR: dict[str, float] = {"lora": 2e-3, "full": 5e-5}

#: The attention projections of Llama-style models, LoRA's default targets there (the paper's q, v).
LLAMA_QV = ("q_proj", "v_proj")


def _lm_collate(
    tokenizer: Any, data: Any, max_length: int, mask_prompt: bool
) -> tuple[Collate, int]:
    """Tokenise ``prompt``/``response`` pairs once (``generate.encode_example``) into a collate
    that right-pads each batch; also returns the number of target tokens."""
    from lora_edu.generate import encode_example

    pairs = [
        encode_example(tokenizer, p, r, max_length, mask_prompt)
        for p, r in zip(data["prompt"], data["response"], strict=True)
    ]
    ids, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _text_collate(ids, labels, pad), sum(sum(y != -100 for y in t) for t in labels)


def _lm_loss_evaluator(n: int, collate: Collate, batch_size: int) -> Callable:
    """``evaluate(model) -> {"eval_loss", "perplexity"}``: the mean cross-entropy per target
    token over examples ``0..n-1`` (every target token weighs the same), and its exponential."""

    @torch.inference_mode()
    def evaluate(model: nn.Module) -> dict[str, Any]:
        device = next(model.parameters()).device
        model.eval()
        total, count = 0.0, 0
        for indices in torch.arange(n).split(batch_size):
            inputs, labels = collate(indices)
            with _autocast(device):
                logits = _logits(model(**_to(inputs, device)))
            labels = labels.to(device)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += loss.item()
            count += int((labels != -100).sum())
        mean = total / max(count, 1)
        return {"eval_loss": mean, "perplexity": math.exp(min(mean, 50.0))}

    return evaluate


def causal_lm_loss(
    model: nn.Module,
    tokenizer: Any,
    data: Any,
    *,
    max_length: int = 256,
    batch_size: int = 16,
    mask_prompt: bool = True,
) -> dict[str, float]:
    """Held-out ``eval_loss`` (mean cross-entropy per response token, natural log) and
    ``perplexity`` of ``model`` on ``data`` (columns ``prompt``, ``response``), exactly as
    ``finetune_causal_lm`` measures it; ``mask_prompt=False`` scores the prompt tokens too."""
    _require_columns(data, ("prompt", "response"), "causal_lm_loss")
    collate, _ = _lm_collate(tokenizer, data, max_length, mask_prompt)
    return _lm_loss_evaluator(len(data), collate, batch_size)(model)


def _bleu_evaluator(
    tokenizer: Any, data: Any, max_new_tokens: int, batch_size: int, progress: bool
) -> Callable:
    """``final(model)``: greedy answers to ``data["prompt"]``, scored against
    ``data["references"]`` with corpus BLEU and ROUGE-L; ``metric`` is BLEU / 100."""
    from lora_edu.generate import corpus_bleu, generate, rouge_l

    prompts, references = list(data["prompt"]), [list(r) for r in data["references"]]

    def final(model: nn.Module) -> dict[str, Any]:
        hyps = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=progress)  # fmt: skip
        bleu = corpus_bleu(hyps, references)
        return {
            "metric": bleu / 100,
            "bleu": bleu,
            "rouge_l": rouge_l(hyps, references),
            "n_generated": len(hyps),
            "max_new_tokens": max_new_tokens,
            "generations": hyps,
        }

    return final


def finetune_causal_lm(
    train: Any,
    eval: Any,
    *,
    method: str = "lora",
    lora: LoRAConfig | None = None,
    r: int = 8,
    alpha: float = 16,
    target_modules: Sequence[str] | str = LLAMA_QV,
    epochs: int = 1,
    lr: float | None = None,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
    model: str = "smollm2",
    device: Any = None,
    progress: bool = True,
    dropout: float = 0.0,
    init: str = "kaiming",
    use_rslora: bool = False,
    mask_prompt: bool = True,
    generation_eval: Any = None,
    max_new_tokens: int = 48,
    generation_batch_size: int = 32,
    base: nn.Module | None = None,
    tokenizer: Any = None,
    return_model: bool = False,
    **loop: Any,
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Fine-tune a causal LM (``load_causal_lm(model)``, SmolLM2-135M-Instruct by default) on
    ``prompt → response`` pairs, through the same loop (``fit``) and record as every task.

    ``train``/``eval``: ``datasets.Dataset`` with columns ``prompt`` and ``response`` (see
    ``generate.e2e_examples`` / ``instruction_examples``); each pair is put in the chat template
    and the loss covers the **response tokens only** (``mask_prompt=False`` trains on the prompt
    too). After each epoch the held-out loss per response token on ``eval`` is measured
    (``eval_loss``, ``perplexity``); with ``generation_eval`` (columns ``prompt`` and
    ``references``, one row per input) the trained model then answers every prompt greedily and
    the record gets ``bleu``, ``rouge_l``, ``generations`` and ``metric = bleu / 100``.

    ``method``: ``"lora"`` (default targets ``q_proj``, ``v_proj``), ``"full"``, or ``"none"``
    (no training: the prompted zero-shot baseline). ``lr=None`` → ``CAUSAL_LM_LR[method]``.
    ``base``/``tokenizer``: a model already loaded (it is modified in place) instead of loading
    ``model`` afresh. ``loop`` may set ``warmup_ratio``, ``weight_decay``, ``max_grad_norm``,
    ``eval_every`` and ``on_eval`` (see ``fit``).
    """
    from lora_edu.models import load_causal_lm

    args = dict(locals())  # the call's arguments, recorded as given
    args["lora"] = _lora_settings(finetune_causal_lm, args)  # one LoRAConfig from either form
    args.update(head=None, default_lr=CAUSAL_LM_LR)
    if method not in ("lora", "full", "none"):
        raise ValueError(f"unknown method {method!r} for a causal LM; expected lora, full or none")
    for d in (train, eval):
        if d is not None:
            _require_columns(d, ("prompt", "response"), "finetune_causal_lm")
    if generation_eval is not None:
        _require_columns(generation_eval, ("prompt", "references"), "finetune_causal_lm")
    seed_everything(seed)
    if base is None:
        tokenizer, base = load_causal_lm(model)
    elif tokenizer is None:
        raise ValueError("pass the tokenizer that belongs to base= as tokenizer=")
    train_collate, n_targets = _lm_collate(tokenizer, train, max_length, mask_prompt)
    evaluate = None
    if eval is not None:
        eval_collate, _ = _lm_collate(tokenizer, eval, max_length, mask_prompt=True)
        evaluate = _lm_loss_evaluator(len(eval), eval_collate, 2 * batch_size)
    if generation_eval is not None:
        args["final"] = _bleu_evaluator(
            tokenizer, generation_eval, max_new_tokens, generation_batch_size, progress
        )
    return _run(
        "causal-lm",
        model,
        base,
        len(train),
        train_collate,
        evaluate,
        {
            "max_length": max_length,
            "metric_name": "bleu" if generation_eval is not None else "eval_loss",
            "mask_prompt": mask_prompt,
            "n_target_tokens": n_targets,
            "n_eval": None if eval is None else len(eval),
        },
        args,
    )
