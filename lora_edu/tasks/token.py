"""CoNLL-2003 named entities (MiniLM-L6; BERT-base at ``full``): the headline task
``conll2003``, its pilot twin ``conll2003-dev``, and ``conll2003-sparse``, a small NER set with
92 % ``O`` tags on which the token-classification defaults are checked. Imports ``tasks.common``
and ``tasks.registry``; data and training on use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lora_edu.config import by_profile
from lora_edu.tasks.common import DEV_SIZE, FULL_TEXT_MODEL, _dev_data, _text_task_data
from lora_edu.tasks.registry import TaskSpec, register_task


def _conll_budget() -> dict[str, Any]:
    return by_profile(
        smoke={"n_train": 48, "n_eval": 48, "epochs": 1, "batch_size": 16},
        default={"n_train": 3000, "n_eval": 1000, "epochs": 3, "batch_size": 32},
        full={"n_train": None, "n_eval": None, "epochs": 5, "batch_size": 32,
              "model": FULL_TEXT_MODEL},
    )  # fmt: skip


#: The sparse NER check (task ``conll2003-sparse``): a small named-entity set like one a user
#: brings, on which the ``finetune_token_classifier`` defaults are checked. Sentences are drawn
#: from CoNLL-2003's training set beyond the examples the other CoNLL tasks use, so that
#: ``o_share`` of the tags are ``O`` (CoNLL-2003 itself: 83 %).
SPARSE_NER = {"skip": 4000, "o_share": 0.92}


def _sparse_ner_budget() -> dict[str, Any]:
    return by_profile(
        smoke={"n_train": 48, "n_eval": 48, "epochs": 1, "batch_size": 16},
        default={"n_train": 1900, "n_eval": 1000, "epochs": 3, "batch_size": 32},
    )


def sparse_selection(tags: Sequence[Sequence[int]], n: int, o_share: float) -> list[int]:
    """Indices of ``n`` sentences (``tags``: each sentence's tag ids, 0 = ``O``) taken in order,
    skipping a sentence with entities whenever it would bring the share of ``O`` tags chosen so
    far below ``o_share``; sentences without entities are always taken."""
    chosen: list[int] = []
    outside = total = 0
    for i, sentence in enumerate(tags):
        o = sum(t == 0 for t in sentence)
        if o < len(sentence) and (outside + o) < o_share * (total + len(sentence)):
            continue
        chosen.append(i)
        outside, total = outside + o, total + len(sentence)
        if len(chosen) == n:
            return chosen
    raise ValueError(f"only {len(chosen)} sentences fit an O share of {o_share}; {n} wanted")


def _sparse_ner_data() -> tuple[Any, Any]:
    from lora_edu.data import load_conll2003

    b = _sparse_ner_budget()
    pool = load_conll2003()["train"].shuffle(seed=0)
    pool = pool.select(range(SPARSE_NER["skip"], len(pool)))
    picked = sparse_selection(pool["ner_tags"], b["n_train"] + b["n_eval"], SPARSE_NER["o_share"])
    return pool.select(picked[: b["n_train"]]), pool.select(picked[b["n_train"] :])


def _finetune_tokens(train_ds, eval_ds, **kwargs):
    from lora_edu.train import finetune_token_classifier

    return finetune_token_classifier(train_ds, eval_ds, **kwargs)


def _load_conll():
    from lora_edu.data import load_conll2003

    return load_conll2003()


register_task(
    "conll2003",
    lambda: TaskSpec(
        "conll2003",
        "f1",
        _text_task_data(_load_conll, _conll_budget),
        _finetune_tokens,
        _conll_budget,
    ),  # fmt: skip
)
register_task(
    "conll2003-dev",
    lambda: TaskSpec(
        "conll2003-dev",
        "f1",
        _dev_data(_load_conll, _conll_budget, DEV_SIZE["conll2003"]),
        _finetune_tokens,
        _conll_budget,
    ),  # fmt: skip
)
register_task(
    "conll2003-sparse",
    lambda: TaskSpec(
        "conll2003-sparse", "f1", _sparse_ner_data, _finetune_tokens, _sparse_ner_budget
    ),
)
