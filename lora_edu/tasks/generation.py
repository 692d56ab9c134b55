"""E2E NLG (the LoRA paper's generation task) on SmolLM2-135M-Instruct: ``e2e`` (BLEU on the
test MRs) and ``e2e-dev`` (held-out validation MRs, for choosing learning rates). Imports
``tasks.common`` and ``tasks.registry``; data, generation and training on use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lora_edu.config import by_profile
from lora_edu.tasks.common import _subset
from lora_edu.tasks.registry import TaskSpec, register_task


def _e2e_budget() -> dict[str, Any]:
    # n_eval: test (or validation) pairs for the held-out loss; n_generate: MRs decoded for BLEU
    # (None: every MR of the split). One LoRA step of batch 8 takes about 3 s on a 2-core CPU.
    return by_profile(
        smoke={"n_train": 8, "n_eval": 8, "n_generate": 4, "epochs": 1, "batch_size": 4,
               "max_new_tokens": 8},
        default={"n_train": 480, "n_eval": 200, "n_generate": None, "epochs": 1, "batch_size": 8,
                 "max_new_tokens": 48},
        full={"n_train": None, "n_eval": None, "n_generate": None, "epochs": 5, "batch_size": 8,
              "max_new_tokens": 64},
    )  # fmt: skip


def _e2e_data(eval_split: str) -> Callable[[], tuple[Any, Any]]:
    """E2E: train on the training MRs of the official validation file; evaluate on
    ``eval_split`` ("test": the official test file, reported; "validation": held-out MRs of the
    validation file, for choosing learning rates). The eval side is a pair (loss pairs, one row
    per MR to decode)."""

    def load():
        from lora_edu.data import load_e2e
        from lora_edu.generate import e2e_examples

        ds, b = load_e2e(), _e2e_budget()
        train = e2e_examples(_subset(ds["train"], b["n_train"], 0))
        loss_eval = e2e_examples(_subset(ds[eval_split], b["n_eval"], 0))
        mrs = e2e_examples(ds[eval_split], unique=True)
        if b["n_generate"] is not None:
            mrs = mrs.select(range(min(b["n_generate"], len(mrs))))
        return train, (loss_eval, mrs)

    return load


def _e2e_finetune(train_ds, eval_pair, **kwargs):
    from lora_edu.train import finetune_causal_lm

    loss_eval, mrs = eval_pair
    b = _e2e_budget()
    return finetune_causal_lm(
        train_ds, loss_eval, generation_eval=mrs, max_new_tokens=b["max_new_tokens"], **kwargs
    )


def _e2e_spec(name: str, split: str) -> Callable[[], TaskSpec]:
    def factory() -> TaskSpec:
        from lora_edu.train import CAUSAL_LM_LR

        return TaskSpec(
            name, "bleu", _e2e_data(split), _e2e_finetune, _e2e_budget, default_lr=CAUSAL_LM_LR
        )

    return factory


register_task("e2e", _e2e_spec("e2e", "test"))
register_task("e2e-dev", _e2e_spec("e2e-dev", "validation"))
