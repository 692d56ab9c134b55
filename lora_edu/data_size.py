"""The data-size study: *with very little data, is LoRA better or worse than full fine-tuning?*
(the guide's 8.2.2). On SST-2 (MiniLM-L6), each method is trained on the first 100, 300, 1,000
and 4,000 sentences of one shuffled training set, for the same number of epochs at every size
(so a smaller set also means fewer steps), and scored on held-out training sentences (to choose
the rate per size) and on the 872 validation sentences (to compare the methods).

One run of the study is one method at one learning rate and seed, trained once **per size**
(from the same pretrained model and the same new head each time), so that the rate procedure of
the budget study applies unchanged, with sizes where the budget study has budgets
(``budget.next_runs``: every rate with seeds 0 and 1, a best rate at the grid's edge extends the
grid, every rate best or tied at some size gets seed 2). ``lora-edu data-size`` runs what is
missing, one run at a time, resumably, into ``data/results/data_size/sst2-<profile>.jsonl``;
``budget_report`` reads it as it reads the budget study (``study_plan("sst2-data")``).

The schedule is the headline's (linear warm-up over 6 % of the steps, then linear decay to 0).

ARCHITECTURE notes: a study beside ``budget``, whose rate procedure and runner it uses (imports
``budget``, ``config``); ``data``, ``models``, ``lora`` and ``training`` on use. Imported by the
CLI and ``budget_report``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lora_edu.budget import Arm, find_arm
from lora_edu.config import by_profile, profile, results_dir

#: The study's name in the CLI and in ``budget_report.study_plan``.
STUDY_TASK = "sst2-data"


@dataclass(frozen=True)
class DataSizePlan:
    """The data-size study at one profile: the training-set ``sizes``, ``epochs`` at every size,
    the batch size, the held-out and reported examples, the arms."""

    task: str
    metric: str
    sizes: tuple[int, ...]
    epochs: int
    batch_size: int
    n_dev: int
    n_test: int | None
    arms: tuple[Arm, ...]
    point_key: ClassVar[str] = "n_train"
    point_title: ClassVar[str] = "training sentences"

    @property
    def points(self) -> tuple[int, ...]:
        return self.sizes

    def steps_at(self, point: int) -> int:
        """Training steps at ``point`` sentences: ``epochs`` × ⌈n / batch⌉."""
        return self.epochs * math.ceil(point / self.batch_size)

    def label(self, point: int) -> str:
        return f"n = {point:,}"

    def arm(self, name: str) -> Arm:
        return find_arm(self, name)


def data_size_plan(profile_name: str | None = None) -> DataSizePlan:
    """SST-2 at the active profile: 100–4,000 training sentences × 4 epochs at batch 16 (the
    smallest set gets 28 steps, the largest 1,000); held-out: the last 1,000 sentences of the
    shuffled training set; reported: the 872 validation sentences. The linear probe (``head``),
    LoRA r = 8 on q, v (α = 16) and full fine-tuning, each from rates around its SST-2 pilot's.
    ``profile_name``: another profile than the active one."""
    arms = (
        Arm("head", "head", None, (3e-3, 1e-2, 3e-2)),
        Arm("lora-qv", "lora", ("query", "value"), (1e-3, 2e-3, 5e-3)),
        Arm("full", "full", None, (5e-5, 1e-4, 2e-4)),
    )

    def pick(**sizes: Any) -> Any:
        return by_profile(**sizes, active=profile_name)

    return DataSizePlan(
        "sst2", "accuracy",
        pick(smoke=(16, 32), default=(100, 300, 1000, 4000)),
        pick(smoke=1, default=4), pick(smoke=8, default=16),
        pick(smoke=32, default=1000), pick(smoke=32, default=None), arms,
    )  # fmt: skip


def results_path(profile_name: str | None = None) -> Path:
    """``data/results/data_size/sst2-<profile>.jsonl`` (under ``LORA_EDU_RESULTS``; the active
    profile unless ``profile_name`` names another)."""
    return results_dir() / "data_size" / f"sst2-{profile_name or profile()}.jsonl"


def _data(plan: DataSizePlan) -> tuple[Any, Any, Any]:
    from lora_edu.data import load_sst2

    ds = load_sst2()
    shuffled = ds["train"].shuffle(seed=0)
    if max(plan.sizes) + plan.n_dev > len(shuffled):
        raise ValueError(
            f"the study needs {max(plan.sizes)} training and {plan.n_dev} held-out sentences; "
            f"SST-2's training set has {len(shuffled)}"
        )
    dev = shuffled.select(range(len(shuffled) - plan.n_dev, len(shuffled)))
    test = ds["validation"]
    if plan.n_test is not None:
        test = test.select(range(min(plan.n_test, len(test))))
    return shuffled, dev, test


def run_data_size(
    task: str, arm_name: str, lr: float, seed: int, *, progress: bool = True
) -> dict[str, Any]:
    """Train one arm at ``lr`` with ``seed`` on each training-set size and return the run's
    record: its key (``study``, ``task``, ``profile``, ``arm``, ``lr``, ``seed``), settings, and
    ``checkpoints``: one entry per size with ``n_train``, ``step`` (the steps it trained),
    ``train_seconds``, ``dev_metric``/``test_metric`` (accuracy) and ``dev_correct``/
    ``test_correct`` (one 0/1 per sentence, for paired tests). ``task`` must be ``STUDY_TASK``
    (the runner's signature, shared with the budget study)."""
    from lora_edu.lora import LoRAConfig
    from lora_edu.models import load_text_model
    from lora_edu.training.loop import _accuracy_evaluator
    from lora_edu.training.text import _encode_texts, finetune_text_classifier

    if task != STUDY_TASK:
        raise ValueError(f"the data-size study's task is {STUDY_TASK!r}, got {task!r}")
    plan = data_size_plan()
    arm = plan.arm(arm_name)
    shuffled, dev, test = _data(plan)
    points: list[dict[str, Any]] = []
    kept: dict[str, Any] = {}
    for n in plan.sizes:
        tokenizer, model = load_text_model("sequence", 2, "minilm", seed=seed)
        scorers = {
            split: _accuracy_evaluator(len(data), _encode_texts(tokenizer, data, 64), 64)
            for split, data in (("dev", dev), ("test", test))
        }
        point: dict[str, Any] = {"n_train": n, "step": plan.steps_at(n)}

        def score(net: Any, step: int, point: dict = point, scorers: dict = scorers) -> None:
            for split, scorer in scorers.items():
                scores = scorer(net)
                point[f"{split}_metric"] = scores["metric"]
                point[f"{split}_correct"] = scores["eval_correct"]  # "0110…", one per sentence

        record = finetune_text_classifier(
            shuffled.select(range(n)), None, method=arm.method, lr=lr, epochs=plan.epochs,
            batch_size=plan.batch_size, seed=seed, progress=progress, base=model,
            lora=LoRAConfig(arm.targets) if arm.method == "lora" else None, tokenizer=tokenizer,
            checkpoints=(plan.steps_at(n),), on_checkpoint=score,
        )  # fmt: skip
        point["train_seconds"] = record["train_seconds"]
        points.append(point)
        kept = {k: record.get(k) for k in ("method", "r", "alpha", "trainable_params",
                                           "total_params", "torch_version", "device")}  # fmt: skip
    return {
        "study": "data-size", "task": task, "profile": profile(), "arm": arm.name,
        "targets": arm.targets if isinstance(arm.targets, str | None) else list(arm.targets),
        "schedule": "linear", "epochs": plan.epochs, "batch_size": plan.batch_size,
        "sizes": list(plan.sizes), "point_key": plan.point_key, "metric_name": plan.metric,
        **kept, "checkpoints": points, "n_dev": len(dev), "n_test": len(test),
        "lr": lr, "seed": seed,
    }  # fmt: skip
