"""The fully fine-tuned SST-2 classifier that notebook 14 distils and compresses, trained once.

    tokenizer, model, record = sst2_teacher()

It is the ``full`` run of the SST-2 headline at the active profile's budget (seed 0, full
fine-tuning's default learning rate, the same 4,000 training sentences in ``default``), so its
accuracy is that run's. The weights are cached under ``LORA_EDU_CACHE`` (about 90 MB in float32)
with the run's record beside them; later calls only read them.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from lora_edu.config import cache_dir, profile


def sst2_teacher(progress: bool = True) -> tuple[Any, nn.Module, dict[str, Any]]:
    """(tokenizer, classifier in eval mode, its training record), trained on first use."""
    import safetensors.torch

    from lora_edu.data import load_sst2
    from lora_edu.defaults import FORMER_LR
    from lora_edu.models import load_text_model
    from lora_edu.sweep import _sst2_budget, _text_task_data
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
