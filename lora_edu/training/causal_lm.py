"""Fine-tuning a causal language model on ``prompt → response`` pairs (``finetune_causal_lm``),
and measuring one: held-out loss per response token and perplexity (``causal_lm_loss``), BLEU
and ROUGE-L of greedy answers (with ``generation_eval``).

The pairs go through the chat template (``generate.encode_example``) and the loss covers the
response tokens only; the model keeps its own ``lm_head`` (no new head: ``head=None``).

ARCHITECTURE notes: imports ``lora`` (``LoRAConfig``), ``models`` (``load_causal_lm``),
``generate`` (encoding, generation, BLEU; on use, so sacrebleu loads only when scoring) and
``training.loop``, ``run``; imported by ``lora_edu.train`` (which re-exports it). Never imports
another task module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lora_edu.defaults import LLAMA_QV
from lora_edu.lora import LoRAConfig
from lora_edu.models import load_causal_lm
from lora_edu.training.loop import (
    Collate,
    _autocast,
    _logits,
    _require_columns,
    _text_collate,
    _to,
    seed_everything,
)
from lora_edu.training.run import LoopSettings, TrainSettings, _run, lora_or_default

#: Learning rates per method for causal-LM fine-tuning (SmolLM2-135M-Instruct, batch 8, AdamW,
#: linear decay), from a first calibration on E2E (120 steps): LoRA 2e-3, full fine-tuning 5e-5.
#: A full-model rate far above 1e-4 damages a 135M model's pretrained knowledge; LoRA's update
#: starts at zero and needs a much larger step. The E2E presets do not rely on these: they use
#: the rates chosen per method on validation data (``tasks.generation.e2e_chosen_lrs``).
CAUSAL_LM_LR: dict[str, float] = {"lora": 2e-3, "full": 5e-5}

#: The attention projections of Llama-style models, LoRA's default targets there (the paper's
#: q, v): ``defaults.LLAMA_QV``.


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
    epochs: int = 1,
    lr: float | None = None,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
    model: str = "smollm2",
    device: Any = None,
    progress: bool = True,
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

    ``method``: ``"lora"`` (``lora=None`` → ``LoRAConfig(LLAMA_QV)``: r = 8, α = 16 on
    ``q_proj``, ``v_proj``), ``"full"``, or ``"none"`` (no training: the prompted zero-shot
    baseline). ``lr=None`` → ``CAUSAL_LM_LR[method]``. ``base``/``tokenizer``: a model already
    loaded (it is modified in place) instead of loading ``model`` afresh. ``loop`` may set
    ``warmup_ratio``, ``weight_decay``, ``max_grad_norm``, ``eval_every`` and ``on_eval`` (see
    ``fit``).
    """
    loop_settings = LoopSettings.from_keywords("finetune_causal_lm()", loop, LLAMA_QV)
    lora = lora_or_default(lora, LLAMA_QV)
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
    final = None
    if generation_eval is not None:
        final = _bleu_evaluator(
            tokenizer, generation_eval, max_new_tokens, generation_batch_size, progress
        )
    settings = TrainSettings(
        method=method,
        lora=lora,
        epochs=epochs,
        lr=lr,
        default_lr=CAUSAL_LM_LR,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        return_model=return_model,
        head=None,  # the model keeps its own output layer (lm_head), frozen
        final=final,
        loop=loop_settings,
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
        settings,
    )
