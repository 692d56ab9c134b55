"""Scores of predictions: accuracy, entity-level F1 for IOB2 tags, class shares and the rule
that calls a model collapsed onto one class.

ARCHITECTURE notes: pure functions of labels and predictions (Python lists or numpy arrays); no
torch, no model, no other lora_edu module. ``loop`` (evaluation after each epoch) and the task
modules (``text``, ``images``) import it; it imports numpy and the standard library only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: A class that takes at least this share of the predictions while being at most
#: ``COLLAPSE_TRUE_SHARE`` of the true labels means the model predicts one class for everything.
COLLAPSE_SHARE = 0.99
COLLAPSE_TRUE_SHARE = 0.95


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


# --------------------------------------------------------------------------- collapse onto one class


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
