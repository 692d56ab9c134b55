"""What one ``finetune_*`` call trains with, and what it returns.

The settings travel as objects, built once from the call's keywords by name:

* ``LoRAConfig`` (``lora.py``): the LoRA settings (``target_modules``, ``r``, ``alpha``,
  ``dropout``, ``init``, ``use_rslora``, ``variant``, ``quantize``), the only way a
  ``finetune_*`` function takes them (``lora=``). ``lora_or_default`` checks what was given;
* ``LoopSettings``: the loop's own knobs that a call may add (``warmup_ratio``,
  ``weight_decay``, ``max_grad_norm``, ``head_lr``, ``eval_every``, ``on_eval``), checked by
  ``LoopSettings.from_keywords``, which also names the replacement of a LoRA keyword given the
  old way (``r=8`` → ``lora=LoRAConfig(..., r=8)``);
* ``TrainSettings``: everything ``_run`` needs: method, LoRA, epochs, learning rate (and the
  task kind's default rates), batch size, seed, device, loss, head, loop settings.

``_run`` is the shared tail of every ``finetune_*`` function: prepare the model for the method,
train it with ``fit`` (or only evaluate it, for ``method="none"``), and build the *record*, a
JSON-ready dict:

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
| (``process_peak_rss_mb``) | in records written before 2026-12: the process's resident-memory high-water mark since it started, which cannot compare runs (a long process keeps its maximum); no longer recorded — peak training memory is measured in a fresh process per run (``lora_edu.bench``) |
| ``device``, ``precision_mode`` | e.g. ``"cpu"`` and ``"float32"`` / ``"bf16-autocast"`` |
| ``history`` | ``loss`` and ``lr`` per step; ``epochs``: one ``{epoch, train_loss, metric}`` per epoch |
| ``torch_version`` | for reproducing the run |

ARCHITECTURE notes: imports ``config`` (the default device), ``lora`` (``LoRAConfig``, the
record's LoRA fields, parameter counts) and ``training.loop``; imported by the task modules
(``training.text``, ``images``, ``causal_lm``) and by task code outside this package
(``detection``, ``matching``, ``diffusion``). It knows no task: the task modules pass what is
theirs (data, collates, evaluation, record entries) as arguments.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lora_edu import config
from lora_edu.lora import LORA_RECORD_FIELDS, LoRAConfig, count_parameters
from lora_edu.training.loop import Collate, _evaluate_only, fit, prepare_model

#: Keywords that name a LoRA setting: ``LoRAConfig``'s fields (the first six were separate
#: keywords of the ``finetune_*`` functions before ``lora=``), and PEFT's name for the dropout.
_LORA_KEYWORDS = {f.name: f.name for f in dataclasses.fields(LoRAConfig)} | {
    "lora_dropout": "dropout"
}


@dataclass(frozen=True)
class LoopSettings:
    """The loop's knobs beyond what every ``finetune_*`` call names (see ``fit``)."""

    warmup_ratio: float = field(
        default=0.06, metadata={"help": "share of the steps over which the rate rises linearly"}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW's decoupled decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradients clipped to this norm"})
    head_lr: float | None = field(
        default=None, metadata={"help": "the classifier's own rate; None: the method's rate"}
    )
    also_train: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "parameters trained in full beside the method, each named by a dotted part "
            "of its name (e.g. ('position_embedding',)); they train at the method's rate"
        },
    )
    eval_every: int | None = field(
        default=None, metadata={"help": "also evaluate every so many steps (a live curve)"}
    )
    on_eval: Callable[[dict[str, Any]], None] | None = field(
        default=None, metadata={"help": "called with the history after each evaluation"}
    )
    schedule: str = field(
        default="linear", metadata={"help": "after warm-up: linear (decay to 0) or constant"}
    )
    checkpoints: tuple[int, ...] = field(
        default=(), metadata={"help": "steps after which on_checkpoint is called (0: before)"}
    )
    on_checkpoint: Callable[[nn.Module, int], None] | None = field(
        default=None, metadata={"help": "on_checkpoint(model, step), the model in eval mode"}
    )

    @classmethod
    def from_keywords(
        cls,
        func: str,
        keywords: Mapping[str, Any],
        lora_targets: Sequence[str] | str = ("query", "value"),
    ) -> LoopSettings:
        """The settings from a ``finetune_*`` call's extra keywords (its ``**loop``).

        A LoRA setting given as a keyword (``r=8``, the old way) raises a ``TypeError`` that
        names the keyword and shows the ``lora=LoRAConfig(...)`` to pass instead
        (``lora_targets``: the targets to show when none were given); any other unknown keyword
        raises one that lists the loop's keywords. ``func`` names the function in the messages,
        e.g. ``"finetune_vit()"``.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        moved = {k: v for k, v in keywords.items() if k in _LORA_KEYWORDS and k not in known}
        if moved:
            raise TypeError(_moved_lora_message(func, moved, lora_targets))
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise TypeError(
                f"{func} got unexpected keyword argument(s) {', '.join(unknown)}; besides its "
                f"named arguments it takes the loop's: {', '.join(sorted(known))}"
            )
        return cls(**keywords)


def _moved_lora_message(func: str, moved: Mapping[str, Any], targets: Sequence[str] | str) -> str:
    settings = {_LORA_KEYWORDS[k]: v for k, v in moved.items()}
    targets = settings.pop("target_modules", targets)
    targets = targets if isinstance(targets, str) else tuple(targets)
    arguments = ", ".join([repr(targets), *(f"{k}={v!r}" for k, v in settings.items())])
    names = ", ".join(f"{k}=" for k in moved)
    return (
        f"{func} no longer takes {names}; the LoRA settings travel as one object: pass "
        f"lora=LoRAConfig({arguments}) (from lora_edu import LoRAConfig; its fields are "
        "target_modules, r, alpha, dropout, init, use_rslora, variant, quantize)"
    )


def lora_or_default(lora: LoRAConfig | None, default_targets: Sequence[str] | str) -> LoRAConfig:
    """``lora`` when given (it must be a ``LoRAConfig``), else ``LoRAConfig(default_targets)``
    with LoRAConfig's defaults (r=8, α=16, no dropout, Kaiming init, α/r scaling)."""
    if lora is None:
        return LoRAConfig(default_targets)
    if not isinstance(lora, LoRAConfig):
        raise TypeError(f"lora= takes a lora_edu.LoRAConfig, got {type(lora).__name__}")
    return lora


@dataclass(frozen=True)
class TrainSettings:
    """Everything ``_run`` needs to train one model, besides the model and its data."""

    method: str = field(metadata={"help": "lora | full | head | bitfit | none"})
    epochs: int = field(metadata={"help": "passes over the training set"})
    lr: float | None = field(metadata={"help": "the rate; None: default_lr[method]"})
    default_lr: Mapping[str, float] = field(metadata={"help": "the task kind's rate per method"})
    batch_size: int = field(metadata={"help": "examples per optimizer step"})
    seed: int = field(metadata={"help": "seeds the head, the adapters and the shuffling"})
    lora: LoRAConfig | None = field(
        default=None, metadata={"help": "used by method='lora'; None: prepare_model's default"}
    )
    device: Any = field(default=None, metadata={"help": "None: config.device()"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    return_model: bool = field(default=False, metadata={"help": "return (record, model)"})
    head: str | None = field(
        default="classifier",
        metadata={"help": "the new output layer that trains beside every method; None: none"},
    )
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = field(
        default=None, metadata={"help": "loss_fn(outputs, targets); None: cross-entropy"}
    )
    final: Callable[[nn.Module], dict[str, Any]] | None = field(
        default=None, metadata={"help": "scores measured once after training (e.g. BLEU)"}
    )
    loop: LoopSettings = field(
        default_factory=LoopSettings, metadata={"help": "warm-up, decay, clipping, head rate …"}
    )

    @property
    def used_lr(self) -> float | None:
        """The learning rate that trains: ``lr``, else the method's default (None: no training)."""
        if self.method == "none":
            return None
        return self.default_lr[self.method] if self.lr is None else self.lr


def _run(
    task: str,
    model_name: str,
    model: nn.Module,
    n_train: int,
    collate: Collate,
    evaluate: Callable[[nn.Module], dict[str, Any]] | None,
    extra: dict[str, Any],
    settings: TrainSettings,
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Shared tail of the ``finetune_*`` functions: prepare ``model`` for ``settings.method``,
    train it on examples ``0..n_train-1`` (batches from ``collate``), evaluate it, build the
    record (module docstring). ``extra`` are task-specific record entries."""
    method, loop = settings.method, settings.loop
    device = config.device() if settings.device is None else torch.device(settings.device)
    targets = prepare_model(
        model, method, settings.lora, head=settings.head, also_train=loop.also_train
    )
    counts = count_parameters(model)
    model.to(device)
    used_lr, epochs = settings.used_lr, settings.epochs
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
            batch_size=settings.batch_size,
            seed=settings.seed,
            device=device,
            progress=settings.progress,
            warmup_ratio=loop.warmup_ratio,
            weight_decay=loop.weight_decay,
            max_grad_norm=loop.max_grad_norm,
            desc=f"{task} · {method}",
            eval_every=loop.eval_every,
            on_eval=loop.on_eval,
            loss_fn=settings.loss_fn,
            head_lr=loop.head_lr,
            schedule=loop.schedule,
            checkpoints=loop.checkpoints,
            on_checkpoint=loop.on_checkpoint,
        )
    final = dict(result["history"]["epochs"][-1])
    # Per-example verdicts are kept once, for the final model, not in every epoch's history.
    for entry in (*result["history"]["epochs"], *result["history"].get("evals", [])):
        entry.pop("eval_correct", None)
        entry.pop("eval_entity_counts", None)
    if settings.final is not None:  # measured once after training (e.g. BLEU of generations)
        start = time.perf_counter()
        final = {**final, **settings.final(model)}
        result["eval_seconds"] += time.perf_counter() - start
    lora = LoRAConfig(["query", "value"]) if settings.lora is None else settings.lora
    record = {
        "task": task,
        "model": model_name,
        "method": method,
        **(lora.record() if method == "lora" else dict.fromkeys(LORA_RECORD_FIELDS)),
        "lora_targets": targets,
        "lr": used_lr,
        "lr_is_default": settings.lr is None,
        "epochs": epochs,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "warmup_ratio": loop.warmup_ratio,
        "weight_decay": loop.weight_decay,
        "max_grad_norm": loop.max_grad_norm,
        **({"head_lr": loop.head_lr} if loop.head_lr is not None else {}),
        **({"also_train": list(loop.also_train)} if loop.also_train else {}),
        **({"schedule": loop.schedule} if loop.schedule != "linear" else {}),
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
        "device": str(device),
        "precision_mode": "bf16-autocast" if device.type == "cuda" else "float32",
        "torch_version": torch.__version__,
        **({"adalora_ranks": result["adalora_ranks"]} if "adalora_ranks" in result else {}),
        "history": result["history"],
    }
    if record["metric"] is None and "eval_loss" in final:
        record["metric"] = final["eval_loss"]
    return (record, model) if settings.return_model else record
