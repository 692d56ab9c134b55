"""The one training loop: which parameters train (``prepare_model``), the loop itself (``fit``),
prediction and evaluation helpers, the batch builders (collates) and seeding.

Methods (``prepare_model``) — what trains; the ``classifier`` head always does:

* ``"lora"``: low-rank adapters ``B A`` on ``target_modules`` (``W`` frozen), see ``lora.py``;
* ``"full"``: every parameter;
* ``"head"``: the classifier only (a linear probe);
* ``"bitfit"``: every bias (including LayerNorm biases, as in BitFit) and the classifier.

The loop (``fit``): AdamW on the trainable parameters, learning rate warmed up linearly over the
first ``warmup_ratio`` of the steps then decayed linearly towards 0 (``schedule="constant"``:
held at its peak instead), gradients clipped to norm
``max_grad_norm``, examples reshuffled each epoch by a generator seeded with ``seed``, bf16
autocast on CUDA only (CPU and MPS run in float32), one evaluation after each epoch.

A batch is built by a *collate*: example indices ``(B,)`` → (the model's keyword inputs, the
targets), all on the CPU; text batches are padded to their own longest sequence (no sorting).

ARCHITECTURE notes: knows nothing of tasks, datasets on disk or records. Imports ``lora`` (the
layer, optimizer groups, AdaLoRA's allocator), ``models.classification_loss`` (the default loss)
and ``training.metrics``; imported by ``training.run``, the task modules, ``lora_edu.train``
(which re-exports it) and any code with its own model and data (``diffusion``, ``figures``).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lora_edu.lora import (
    LoRAConfig,
    adalora_allocator,
    apply_lora,
    mark_only_lora_trainable,
    optimizer_param_groups,
)
from lora_edu.models import classification_loss
from lora_edu.training.metrics import _collapse_message, accuracy, collapsed_class, label_shares

#: The methods every ``finetune_*`` function offers (default rates: ``defaults.TASK_DEFAULTS``).
METHODS = ("lora", "full", "head", "bitfit")

#: Collate: a batch of example indices → (model keyword inputs, labels), all on the CPU.
Collate = Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (every device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    also_train: Sequence[str] = (),
) -> list[str]:
    """Set which parameters of ``model`` train, in place, for ``method`` (see module docstring).

    ``lora`` (the LoRA settings; default ``LoRAConfig(["query", "value"])``: r=8, α=16) is used
    only by ``method="lora"``. ``head`` names the new output layer
    that trains beside every method (``"classifier"``); a causal LM keeps its pretrained
    ``lm_head`` frozen, so it passes ``head=None`` (and then ``"head"``/``"bitfit"`` do not
    apply). ``method="none"`` freezes everything (the untrained baseline). ``also_train``:
    parameters that train in full beside the method, each named by a dotted part of its name
    (``"position_embedding"``, or a module: ``"encoder.layer.0"``); a name that matches no
    parameter raises. Returns the names of the layers LoRA wrapped (``[]`` for the other
    methods).
    """
    targets = _prepare(model, method, lora, head)
    if isinstance(also_train, str):
        also_train = [also_train]
    if also_train and method == "none":
        raise ValueError(
            f"method='none' trains nothing; also_train={list(also_train)} needs a method"
        )
    params = dict(model.named_parameters())
    for wanted in also_train:
        hits = [param for name, param in params.items() if _names_part(name, wanted)]
        if not hits:
            tops = sorted({name.split(".")[0] for name in params})
            raise ValueError(
                f"also_train names {wanted!r}, which matches no parameter of "
                f"{type(model).__name__}; its parameters start with {', '.join(tops)}"
            )
        for param in hits:
            param.requires_grad_(True)
    return targets


def _names_part(name: str, wanted: str) -> bool:
    """Is ``wanted`` a dotted part of parameter ``name`` (the parameter itself, or a module it
    belongs to)?"""
    dotted = "." + name + "."
    return ("." + wanted + ".") in dotted


def _prepare(model: nn.Module, method: str, lora: LoRAConfig | None, head: str | None) -> list[str]:
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


def constant_schedule(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor for step ``step``: the same linear warm-up as ``linear_schedule``,
    then 1 to the end. A model saved after any step has then had the schedule a run of that many
    steps would have had, which lets one run stand for several training budgets."""
    del total_steps  # the same signature as linear_schedule
    return (step + 1) / (warmup_steps + 1) if step < warmup_steps else 1.0


#: The learning-rate schedules ``fit`` offers, by name.
SCHEDULES = {"linear": linear_schedule, "constant": constant_schedule}


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
    schedule: str = "linear",
    checkpoints: Sequence[int] = (),
    on_checkpoint: Callable[[nn.Module, int], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` (already on ``device``, trainable parameters already chosen) on examples
    ``0..n_train-1``, reshuffled each epoch by a generator seeded with ``seed``, minimising
    ``loss_fn(logits, targets)`` (default ``classification_loss``: cross-entropy); call
    ``evaluate(model)`` after each epoch and, with ``eval_every``, also before the first step and
    every ``eval_every`` steps (``history["evals"]``: one ``{step, ...scores}`` each, the data of
    a live learning curve; ``on_eval(history)`` is called after each). ``head_lr`` trains the
    ``classifier`` at its own learning rate (default: ``lr``, like everything else).
    ``schedule``: ``"linear"`` (warm-up, then linear decay to 0) or ``"constant"`` (warm-up, then
    the peak rate to the end; ``SCHEDULES``). ``on_checkpoint(model, step)`` is called after
    each step listed in ``checkpoints`` (0: before the first step), with the model in eval
    mode; its time counts as evaluation. Returns ``history``, timings, memory and ``steps``."""
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
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)}")
    outside = sorted(s for s in checkpoints if not 0 <= s <= total)
    if outside:
        raise ValueError(f"checkpoints {outside} lie outside the run's steps 0..{total}")
    if checkpoints and on_checkpoint is None:
        raise ValueError("checkpoints= needs on_checkpoint= to call at them")
    checkpoint_steps = set(checkpoints)
    # One group at lr, plus one per factor a LoRA variant asks for (LoRA+: B at 16 × lr).
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, lr, weight_decay, head_lr=head_lr))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: SCHEDULES[schedule](step, warmup, total)
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

    def checkpoint_at(step: int) -> None:
        nonlocal eval_seconds
        start = time.perf_counter()
        model.eval()
        on_checkpoint(model, step)
        model.train()
        eval_seconds += time.perf_counter() - start

    periodic = evaluate is not None and eval_every is not None and eval_every > 0
    if periodic:
        evaluate_at(0)
    if 0 in checkpoint_steps:
        checkpoint_at(0)
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
            if step in checkpoint_steps:
                _sync(device)
                train_seconds += time.perf_counter() - start
                checkpoint_at(step)
                start = time.perf_counter()
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
        **({} if allocator is None else {"adalora_ranks": allocator.ranks()}),
    }


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
    }


# --------------------------------------------------------------------------- evaluation helpers


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


# --------------------------------------------------------------------------- data and collates


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
