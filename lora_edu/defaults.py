"""The defaults of the ``finetune_*`` functions, per kind of task, and the evidence for each.

People call ``finetune_text_classifier``, ``finetune_token_classifier`` and ``finetune_vit`` with
the defaults on their own data, so every default here is a measured choice, not a habit:

* **learning rates**: each method's best rate in this project's learning-rate pilot on a task of
  that kind (the rates each task registers with ``tasks.registry.register_pilot``; ``lora-edu sweep --task T-dev --preset lr-pilot``),
  scored on held-out *training* examples, never on the split the headline reports. A test checks
  that they equal ``presets.lr_pilot_chosen`` on the committed pilot results;
* **LoRA's targets** and **epochs**: those of the task's headline comparison;
* **the head's learning rate** beside LoRA, BitFit or full fine-tuning (``head_lr``): None trains
  the new, randomly initialised head at the method's rate; a number gives it its own.

The token defaults were also tried as a user would, on a small and sparse NER set (task
``conll2003-sparse``: 1,900 CoNLL-2003 sentences, 92 % of the words ``O``, 3 epochs, preset
``defaults-check``), where a rate that wins on ordinary data can collapse a model onto ``O``
(BitFit's did; its default is one grid step lower, ``stepped_down``).

``FORMER_LR`` is the one rate per method every task used before the pilot: the sweep studies
other than the headline comparisons (ranks, α, targets, …) ran, and are still defined, at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: LoRA's target sets, by the names the encoders give their linear layers: BERT-style query and
#: value (the LoRA paper's choice) and Llama's, BERT's attention output projection (``output.dense`` alone
#: would also match the MLP's), the TinyViT's attention projections and with them its MLP.
QV = ("query", "value")
ATTN_OUT = "attention.output.dense"
VIT_ATTENTION = ("query", "key", "value", "output")
VIT_ATTENTION_MLP = (*VIT_ATTENTION, "fc1", "fc2")
#: SmolLM2's (Llama's) query and value projections.
LLAMA_QV = ("q_proj", "v_proj")

#: The one learning rate per method that every task used before the learning-rate pilot.
FORMER_LR: dict[str, float] = {"lora": 2e-3, "full": 1e-4, "head": 3e-3, "bitfit": 1e-3}


@dataclass(frozen=True)
class TaskDefaults:
    """What a ``finetune_*`` function of one kind of task uses when an argument is left out."""

    lr: dict[str, float] = field(metadata={"help": "learning rate per method"})
    target_modules: tuple[str, ...] | str = field(metadata={"help": "LoRA's targets"})
    epochs: int = field(metadata={"help": "passes over the training set"})
    head_lr: float | None = field(
        metadata={"help": "the new head's rate beside lora/bitfit/full; None: the method's rate"}
    )
    evidence: str = field(metadata={"help": "where the numbers come from"})
    stepped_down: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "methods whose rate is the pilot grid's next rate below its winner, because "
            "the winner collapsed onto one class in the sparse check"
        },
    )

    def loop(self, method: str, loop: dict[str, Any]) -> dict[str, Any]:
        """``loop`` (the loop settings a caller gave) with the default ``head_lr`` added where it
        applies: a method that trains more than the head, and no ``head_lr`` given (an explicit
        ``head_lr=None`` keeps the head at the method's rate)."""
        if self.head_lr is None or method in ("head", "none") or "head_lr" in loop:
            return loop
        return {**loop, "head_lr": self.head_lr}


#: Defaults per kind of task: ``text`` (sequence classification), ``token`` (NER), ``image``.
TASK_DEFAULTS: dict[str, TaskDefaults] = {
    # SST-2 pilot, MiniLM-L6, 4,000 sentences x 2 epochs, 1,000 held-out training sentences,
    # two seeds per rate: probe 1e-2, BitFit 3e-3, LoRA r=8 on q, v 2e-3 (86.7 %; 5e-4, 1e-3
    # and 5e-3 tied with it: the curve is flat over a factor 10), LoRA on every linear layer
    # 2e-3 as well, full 1e-4.
    "text": TaskDefaults(
        lr={"head": 1e-2, "bitfit": 3e-3, "lora": 2e-3, "full": 1e-4},
        target_modules=QV,
        epochs=2,
        head_lr=None,
        evidence="SST-2 learning-rate pilot (sst2-dev, preset lr-pilot)",
    ),
    # CoNLL-2003 pilot, 3,000 sentences x 3 epochs, 1,000 held-out training sentences: probe
    # 1e-1, BitFit 3e-2, LoRA r=8 on all linear layers 2e-3 (better than q, v at its best rate),
    # full 5e-4. On the sparse set BitFit at 3e-2 predicted O for every word (F1 0), so its
    # default is the grid's next rate down, 1e-2 (within a point of 3e-2 in the pilot). The
    # head at its own rate (0.1) beside all linear layers moved F1 by less than a single run's
    # noise there: the head trains at the method's rate.
    "token": TaskDefaults(
        lr={"head": 1e-1, "bitfit": 1e-2, "lora": 2e-3, "full": 5e-4},
        target_modules="all-linear",
        epochs=3,
        head_lr=None,
        evidence="CoNLL-2003 learning-rate pilot (conll2003-dev, preset lr-pilot) and the "
        "sparse-NER check (conll2003-sparse, preset defaults-check)",
        stepped_down=("bitfit",),
    ),
    # ViT pilot, TinyViT pretrained on MNIST -> scikit-learn's 8x8 digits, 1,150 images x 20
    # epochs (about 360 steps of 64), 288 held-out training images: probe 3e-2, BitFit 1e-2,
    # LoRA r=8 on the attention projections 2e-3, full 3e-4.
    "image": TaskDefaults(
        lr={"head": 3e-2, "bitfit": 1e-2, "lora": 2e-3, "full": 3e-4},
        target_modules=VIT_ATTENTION,
        epochs=20,
        head_lr=None,
        evidence="ViT learning-rate pilot (vit-dev, preset lr-pilot)",
    ),
}

#: ``detection.finetune_detector``'s rates: the detection pilot's winners (notebook 17; 4,000
#: canvases x 10 epochs, scored on canvases of 1,000 held-out training digits; every grid was
#: extended upward while its best sat at the top). A box head and its backbone want rates 3-10x
#: the image classifier's.
DETECTION_LR: dict[str, float] = {"head": 3e-2, "lora": 1e-2, "full": 3e-3}

#: The task each kind's defaults were piloted on (``presets.lr_pilot_chosen(task)``).
PILOT_TASK = {"text": "sst2", "token": "conll2003", "image": "vit"}
