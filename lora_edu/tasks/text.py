"""SST-2 sentiment (MiniLM-L6; BERT-base at ``full``): the headline task ``sst2``, its pilot
twin ``sst2-dev``, and notebook 14's set-ups built on the fully fine-tuned model
(``sst2_teacher``): ``sst2-distill`` (a student on its soft labels) and ``sst2-ffn<rank>`` (its
feed-forward weights truncated, then healed with LoRA). Imports ``tasks.common`` and
``tasks.registry``; data, models and training on use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from lora_edu.config import by_profile, cache_dir, profile
from lora_edu.defaults import FORMER_LR
from lora_edu.tasks.common import DEV_SIZE, FULL_TEXT_MODEL, _dev_data, _text_task_data
from lora_edu.tasks.registry import TaskSpec, register_task


def _sst2_budget() -> dict[str, Any]:
    return by_profile(
        smoke={"n_train": 64, "n_eval": 64, "epochs": 1, "batch_size": 16},
        default={"n_train": 4000, "n_eval": None, "epochs": 2, "batch_size": 32},
        full={"n_train": None, "n_eval": None, "epochs": 3, "batch_size": 32,
              "model": FULL_TEXT_MODEL},
    )  # fmt: skip


#: The ranks of the feed-forward compression study (``sst2-ffn<rank>``); MiniLM's feed-forward
#: layers are 384 × 1536, so a rank below 307 stores fewer numbers.
COMPRESSION_RANKS = (256, 128, 64, 32)


def _distill_finetune(train_ds, eval_ds, **kwargs):
    """SST-2 learnt from the fully fine-tuned teacher's soft labels (``sst2_teacher``)."""
    from lora_edu.train import finetune_text_classifier

    _, teacher, _ = sst2_teacher(progress=False)
    return finetune_text_classifier(train_ds, eval_ds, teacher=teacher, **kwargs)


def _compressed_finetune(rank: int) -> Callable[..., dict[str, Any]]:
    """The teacher with every feed-forward weight replaced by its rank-``rank`` SVD, evaluated
    as it is (method ``none``) or healed with LoRA (its head trains too)."""

    def finetune(train_ds, eval_ds, **kwargs):
        import copy

        from lora_edu.compression import compress_feed_forward
        from lora_edu.train import finetune_text_classifier

        tokenizer, teacher, _ = sst2_teacher(progress=False)
        base = copy.deepcopy(teacher).requires_grad_(True)
        compress_feed_forward(base, rank)
        return finetune_text_classifier(train_ds, eval_ds, base=base, tokenizer=tokenizer, **kwargs)

    return finetune


def sst2_teacher(progress: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """The fully fine-tuned SST-2 classifier that notebook 14 distils and compresses (and
    notebook 02 studies), trained once: (tokenizer, classifier in eval mode, its training
    record).

    It is the ``full`` run of the SST-2 headline at the active profile's budget (seed 0, full
    fine-tuning's former default learning rate, the same 4,000 training sentences in
    ``default``), so its accuracy is that run's. The weights are cached under
    ``LORA_EDU_CACHE`` (about 90 MB in float32) with the run's record beside them; later calls
    only read them."""
    import safetensors.torch

    from lora_edu.data import load_sst2
    from lora_edu.models import load_text_model
    from lora_edu.train import finetune_text_classifier

    b = _sst2_budget()
    train, eval_ = _text_task_data(load_sst2, _sst2_budget)()
    stem = f"sst2-teacher-{profile()}-n{len(train)}-e{b['epochs']}-s0"
    weights, meta = cache_dir() / f"{stem}.safetensors", cache_dir() / f"{stem}.json"
    tokenizer, model = load_text_model("sequence", 2, b.get("model", "minilm"), seed=0)
    if weights.is_file() and meta.is_file():
        safetensors.torch.load_model(model, weights)
        return tokenizer, model.eval(), json.loads(meta.read_text())
    record, trained = finetune_text_classifier(
        train, eval_, method="full", lr=FORMER_LR["full"], epochs=b["epochs"],
        batch_size=b["batch_size"], seed=0, model=b.get("model", "minilm"), progress=progress,
        return_model=True,
    )  # fmt: skip
    trained = trained.cpu().eval()
    weights.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_model(trained, weights)
    meta.write_text(json.dumps({k: v for k, v in record.items() if k != "history"}))
    trained.requires_grad_(False)
    return tokenizer, trained, record


def _sst2_spec(name: str, load: Callable[[], tuple[Any, Any]], finetune: Callable) -> Callable:
    def factory() -> TaskSpec:
        return TaskSpec(name, "accuracy", load, finetune, _sst2_budget)

    return factory


def _finetune_text(train_ds, eval_ds, **kwargs):
    from lora_edu.train import finetune_text_classifier

    return finetune_text_classifier(train_ds, eval_ds, **kwargs)


def _load_sst2():
    from lora_edu.data import load_sst2

    return load_sst2()


register_task("sst2", _sst2_spec("sst2", _text_task_data(_load_sst2, _sst2_budget), _finetune_text))
register_task(
    "sst2-dev",
    _sst2_spec("sst2-dev", _dev_data(_load_sst2, _sst2_budget, DEV_SIZE["sst2"]), _finetune_text),
)
register_task(
    "sst2-distill",
    _sst2_spec("sst2-distill", _text_task_data(_load_sst2, _sst2_budget), _distill_finetune),
)
for _rank in COMPRESSION_RANKS:
    register_task(
        f"sst2-ffn{_rank}",
        _sst2_spec(
            f"sst2-ffn{_rank}",
            _text_task_data(_load_sst2, _sst2_budget),
            _compressed_finetune(_rank),
        ),
    )
