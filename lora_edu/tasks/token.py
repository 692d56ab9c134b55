"""CoNLL-2003 named entities (MiniLM-L6; BERT-base at ``full``): the headline task
``conll2003``, its pilot twin ``conll2003-dev``, and ``conll2003-sparse``, a small NER set with
92 % ``O`` tags on which the token-classification defaults are checked; beside them, their
presets (notebook 07's named sweeps and the sparse check). Imports ``tasks.common``,
``tasks.registry`` and ``presets``; data and training on use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lora_edu.config import by_profile
from lora_edu.defaults import FORMER_LR, QV, TASK_DEFAULTS
from lora_edu.grid import make_grid
from lora_edu.presets import (
    former_lr_grid,
    head_rate_pilot_grid,
    headline_grid,
    lora_runs,
    lr_pilot_grid,
)
from lora_edu.tasks.common import DEV_SIZE, FULL_TEXT_MODEL, _dev_data, _text_task_data
from lora_edu.tasks.registry import TaskSpec, register_pilot, register_presets, register_task


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


# ------------------------------------------------------------------ CoNLL-2003's presets

#: The learning-rate pilot of the CoNLL-2003 headline (``conll2003-dev``). Every grid whose best
#: sat at an end was extended beyond it (the four arms; the probe and BitFit three times: on a
#: token task the new head wants a rate of 0.03–0.1). LoRA also runs on every linear layer.
CONLL_PILOT_LRS: dict[str, tuple[float, ...]] = {
    "lora": (1e-3, 2e-3, 5e-3, 1e-2),
    "lora-all-linear": (1e-3, 2e-3, 5e-3),
    "full": (5e-5, 1e-4, 2e-4, 5e-4, 1e-3),
    "head": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    "bitfit": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
}
#: The headline reports the better LoRA arm of the pilot on the held-out training sentences
#: (all-linear, 84.1 against 80.9 entity F1).
CONLL_HEADLINE_ARMS = ("lora-all-linear", "full", "head", "bitfit")
#: The rank sweep (``default``/``full``): a CoNLL-2003 run costs about 4× an SST-2 run on the
#: project's CPU, so the sweep is coarser than SST-2's.
CONLL_RANKS = (1, 4, 8, 64)

#: The sparse NER check (task ``conll2003-sparse``: 1,900 sentences, 92 % ``O`` tags, 3 epochs,
#: seed 0): the token-classification defaults from before the pilot (every method at its former
#: rate, and two LoRA settings a user saw collapse onto ``O`` on a set like this one: all-linear at
#: 2e-3, q, v at 5e-3),
#: then every method at its CoNLL-2003 pilot rate, and LoRA with the new head at its own rate (the
#: probe's pilot rate, and a third of it) and with a longer warm-up.
#: Each entry: (method, LoRA targets or None, lr, ``make_grid`` keywords: head_lr, warmup_ratio).
SPARSE_CHECK_RUNS: tuple[tuple[str, tuple[str, ...] | None, float, dict[str, float]], ...] = (
    ("head", None, 3e-3, {}),
    ("bitfit", None, 1e-3, {}),
    ("full", None, 1e-4, {}),
    ("lora", QV, 2e-3, {}),
    ("lora", ("all-linear",), 2e-3, {}),
    ("lora", QV, 5e-3, {}),
    ("head", None, 1e-1, {}),
    ("bitfit", None, 3e-2, {}),
    ("full", None, 5e-4, {}),
    ("lora", QV, 5e-3, {"head_lr": 1e-1}),
    ("lora", ("all-linear",), 2e-3, {"head_lr": 1e-1}),
    ("lora", ("all-linear",), 2e-3, {"head_lr": 3e-2}),
    ("lora", ("all-linear",), 2e-3, {"warmup_ratio": 0.2}),
    # BitFit at its pilot rate collapsed onto O here: the grid's next rate down
    ("bitfit", None, 1e-2, {}),
)


def token_default_or_former(entry: tuple[str, tuple[str, ...] | None, float, dict]) -> bool:
    """Whether a sparse-check run is a method at its former rate (LoRA on q, v, the former
    default targets) or at today's token default (``defaults.TASK_DEFAULTS["token"]``)."""
    method, targets, lr, loop = entry
    token = TASK_DEFAULTS["token"]
    targets_now = token.target_modules
    default_targets = (targets_now,) if isinstance(targets_now, str) else tuple(targets_now)
    if loop:
        return False
    if method != "lora":
        return lr in (FORMER_LR[method], token.lr[method])
    return (targets, lr) in ((QV, FORMER_LR["lora"]), (default_targets, token.lr["lora"]))


def _sparse_check(
    keep: Callable[[tuple[str, tuple[str, ...] | None, float, dict]], bool] = lambda entry: True,
) -> list[dict[str, Any]]:
    runs = []
    for method, targets, lr, loop in filter(keep, SPARSE_CHECK_RUNS):
        if method == "lora":
            runs += make_grid(["lora"], [8], [16], [targets], lr=lr, **loop)
        else:
            runs += make_grid([method], lr=lr, **loop)
    return runs


def _conll_alphas() -> list[dict[str, Any]]:
    """CoNLL-2003 at the rank sweep's top, r = 64, with α = 2r (scaling 2 instead of α = 16's
    0.25): is the large rank held back by its small scaling? (smoke: r = 1.)"""
    return [
        run for r in by_profile(smoke=[1], default=[64]) for run in lora_runs([r], alphas=[2 * r])
    ]


register_pilot("conll2003", CONLL_PILOT_LRS, lora_targets=QV, headline_arms=CONLL_HEADLINE_ARMS)
register_presets(
    "conll2003",
    {
        "headline": headline_grid("conll2003"),
        "former-lr": former_lr_grid("conll2003"),
        "ranks": lambda: lora_runs(by_profile(smoke=[1, 8], default=list(CONLL_RANKS))),
        "alphas": _conll_alphas,
    },
)
register_presets(
    "conll2003-dev",
    {"lr-pilot": lr_pilot_grid("conll2003"), "head-rate-pilot": head_rate_pilot_grid("conll2003")},
)
register_presets(
    "conll2003-sparse",
    {
        "defaults-check": _sparse_check,
        # the same runs in two tables: the rates before the pilot against the token defaults,
        # then the other suspects of a collapse
        "defaults-before-after": lambda: _sparse_check(token_default_or_former),
        "defaults-suspects": lambda: _sparse_check(lambda e: not token_default_or_former(e)),
    },
)
