"""The budget study: *when does LoRA catch up with full fine-tuning?* Each method is trained once
per learning rate and seed for 8× the task's default number of steps, and the model is scored
after ×1, ×2, ×4 and ×8 of those steps: on held-out training examples (to choose the rate per
budget) and on the reported split (to compare the methods), so one run stands for four budgets.

Two choices make that possible, and the notebook says so:

* **one pass over fresh examples**: a budget of ``s`` steps has seen ``s × batch`` examples once
  (SST-2: 8,000 sentences at ×1 … 64,000 at ×8; E2E: 480 … 3,840 pairs), so more budget means
  more data, as in Biderman et al. 2024 ("LoRA Learns Less and Forgets Less");
* **a constant learning rate after a short warm-up** (``training.loop.constant_schedule``): the
  model after ``s`` steps has had the schedule a run of ``s`` steps would have had (only the
  order of its examples differs). The headline runs decay the rate to 0 instead, so the study's
  ×1 is close to, not equal to, the headline.

The rates are chosen by one procedure for every arm and budget (``next_runs``): each rate of the
arm's grid runs with seeds 0 and 1; at each budget the best mean on the held-out examples is
compared with every other rate by a paired test (``pilots.decide_arm``); a best rate at the
grid's edge adds the next rate of ``RATE_LADDER``; then every rate that is best or tied at some
budget gets seed 2, so each reported budget has three seeds at its chosen rate (and at every
rate tied with it). ``lora-edu budget`` runs what is missing, one run at a time, resumably.

ARCHITECTURE notes: a study, not a task: it builds its own data and evaluations and calls the
public ``finetune_*`` functions with ``schedule="constant"`` and checkpoints. Imports ``config``,
``store``, ``pilots`` and (on use) ``data``, ``models``, ``generate``, ``training``; imported by
the CLI and ``budget_report``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from lora_edu.config import by_profile, profile, results_dir
from lora_edu.pilots import ArmDecision, decide_arm
from lora_edu.store import append_record, read_results

#: The budgets, as multiples of the task's default number of steps.
BUDGET_MULTIPLES = (1, 2, 4, 8)
#: The learning rates a grid may grow into, in order (about ×2–2.5 apart).
RATE_LADDER = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
#: Seeds every rate of a grid runs with, and the seed added where a rate is chosen.
PILOT_SEEDS, THIRD_SEED = (0, 1), 2
#: The warm-up: this share of the ×1 budget's steps (as the headline runs warm up).
WARMUP_SHARE = 0.06


@dataclass(frozen=True)
class Arm:
    """One method of the study: ``method`` as the ``finetune_*`` functions name it, the LoRA
    targets (None unless ``method == "lora"``) and the rates its grid starts from."""

    name: str
    method: str
    targets: tuple[str, ...] | str | None = None
    start_rates: tuple[float, ...] = ()


class StudyPlan(Protocol):
    """What the rate procedure (``next_runs``) and the report need of a study: its task, metric
    and arms, and the **points** at which every run is scored (the budget study: multiples of
    the default steps; the data-size study, ``lora_edu.data_size``: training-set sizes), which
    each checkpoint of a record names under ``point_key``."""

    task: str
    metric: str
    arms: tuple[Arm, ...]
    point_key: ClassVar[str]
    point_title: ClassVar[str]

    @property
    def points(self) -> tuple[int, ...]: ...

    def steps_at(self, point: int) -> int: ...

    def label(self, point: int) -> str: ...

    def arm(self, name: str) -> Arm: ...


def find_arm(plan: StudyPlan, name: str) -> Arm:
    """The arm of ``plan`` called ``name``; a ValueError names the arms there are."""
    for arm in plan.arms:
        if arm.name == name:
            return arm
    raise ValueError(
        f"the {plan.task} study has no arm {name!r}; its arms: "
        f"{', '.join(a.name for a in plan.arms)}"
    )


@dataclass(frozen=True)
class BudgetPlan:
    """A task's study set-up at one profile: ``base_steps`` (the ×1 budget: the task's default
    number of steps), the batch size, the held-out and reported examples."""

    task: str
    metric: str
    base_steps: int
    batch_size: int
    n_dev: int
    n_test: int | None
    arms: tuple[Arm, ...]
    point_key: ClassVar[str] = "multiple"
    point_title: ClassVar[str] = "training budget (multiples of the default steps)"

    @property
    def points(self) -> tuple[int, ...]:
        return BUDGET_MULTIPLES

    def steps_at(self, point: int) -> int:
        return point * self.base_steps

    def label(self, point: int) -> str:
        return f"×{point}"

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(m * self.base_steps for m in BUDGET_MULTIPLES)

    @property
    def n_train(self) -> int:
        return self.steps[-1] * self.batch_size

    @property
    def warmup_ratio(self) -> float:
        """The share of the longest run's steps that warms up: ``WARMUP_SHARE`` of ×1's."""
        return WARMUP_SHARE * self.base_steps / self.steps[-1]

    def arm(self, name: str) -> Arm:
        return find_arm(self, name)


def budget_plan(task: str, profile_name: str | None = None) -> BudgetPlan:
    """The study's set-up for ``task`` (``"sst2"`` or ``"e2e"``) at the active profile.

    SST-2 (MiniLM-L6): the headline's 4,000 sentences × 2 epochs at batch 32 are 250 steps;
    held-out: the last 1,000 of the shuffled training sentences; reported: the 872 validation
    sentences. E2E (SmolLM2-135M-Instruct): the headline's 480 pairs at batch 8 are 60 steps;
    held-out: the 55 validation MRs (BLEU) and their pairs (loss); reported: the 630 test MRs.
    The start rates sit around each method's rate chosen at ×1 by the task's own pilot.
    ``profile_name``: another profile than the active one (the one its records were made at)."""
    arms = {
        "sst2": (
            Arm("lora-qv", "lora", ("query", "value"), (1e-3, 2e-3, 5e-3)),
            Arm("full", "full", None, (3e-5, 1e-4, 2e-4)),
            Arm("lora-all", "lora", "all-linear", (1e-3, 2e-3, 5e-3)),
            Arm("head", "head", None, (3e-3, 1e-2, 2e-2)),
        ),
        "e2e": (
            Arm("zero-shot", "none"),
            Arm("lora-qv", "lora", ("q_proj", "v_proj"), (2e-3, 5e-3, 1e-2)),
            Arm("full", "full", None, (2e-5, 5e-5, 1e-4)),
            Arm("lora-all", "lora", "all-linear", (1e-3, 2e-3, 5e-3)),
        ),
    }

    def pick(**sizes: Any) -> Any:
        return by_profile(**sizes, active=profile_name)

    if task == "sst2":
        return BudgetPlan(
            "sst2", "accuracy", pick(smoke=1, default=250), pick(smoke=8, default=32),
            pick(smoke=32, default=1000), pick(smoke=32, default=None), arms["sst2"],
        )  # fmt: skip
    if task == "e2e":
        return BudgetPlan(
            "e2e", "bleu", pick(smoke=1, default=60), pick(smoke=4, default=8),
            pick(smoke=4, default=55), pick(smoke=4, default=None), arms["e2e"],
        )  # fmt: skip
    raise ValueError(f"the budget study covers sst2 and e2e, not {task!r}")


def results_path(task: str, profile_name: str | None = None) -> Path:
    """``data/results/budget/<task>-<profile>.jsonl`` (under ``LORA_EDU_RESULTS``; the active
    profile unless ``profile_name`` names another): a folder of its own, since its records (one
    per run, a result per budget) are not sweep records."""
    return results_dir() / "budget" / f"{task}-{profile_name or profile()}.jsonl"


# --------------------------------------------------------------------------- one run


def _sst2_data(plan: BudgetPlan) -> tuple[Any, Any, Any]:
    from lora_edu.data import load_sst2

    ds = load_sst2()
    shuffled = ds["train"].shuffle(seed=0)
    if plan.n_train + plan.n_dev > len(shuffled):
        raise ValueError(
            f"the study needs {plan.n_train} training and {plan.n_dev} held-out sentences; "
            f"SST-2's training set has {len(shuffled)}"
        )
    dev = shuffled.select(range(len(shuffled) - plan.n_dev, len(shuffled)))
    test = ds["validation"]
    if plan.n_test is not None:
        test = test.select(range(min(plan.n_test, len(test))))
    return shuffled.select(range(plan.n_train)), dev, test


def _run_sst2(plan: BudgetPlan, arm: Arm, lr: float, seed: int, progress: bool) -> dict[str, Any]:
    from lora_edu.lora import LoRAConfig
    from lora_edu.models import load_text_model
    from lora_edu.training.loop import _accuracy_evaluator
    from lora_edu.training.text import _encode_texts, finetune_text_classifier

    train, dev, test = _sst2_data(plan)
    tokenizer, model = load_text_model("sequence", 2, "minilm", seed=seed)
    scorers = {
        split: _accuracy_evaluator(len(data), _encode_texts(tokenizer, data, 64), 64)
        for split, data in (("dev", dev), ("test", test))
    }
    points: list[dict[str, Any]] = []

    def checkpoint(net: Any, step: int) -> None:
        point: dict[str, Any] = {"step": step, "multiple": step // plan.base_steps}
        for split, score in scorers.items():
            scores = score(net)
            point[f"{split}_metric"] = scores["metric"]
            point[f"{split}_correct"] = scores["eval_correct"]  # "0110…", one per example
        points.append(point)

    record = finetune_text_classifier(
        train, None, method=arm.method, lr=lr, epochs=1, batch_size=plan.batch_size, seed=seed,
        lora=LoRAConfig(arm.targets) if arm.method == "lora" else None, progress=progress,
        base=model, tokenizer=tokenizer, schedule="constant", warmup_ratio=plan.warmup_ratio,
        checkpoints=plan.steps, on_checkpoint=checkpoint,
    )  # fmt: skip
    return {**_kept(record), "checkpoints": points, "n_dev": len(dev), "n_test": len(test)}


def _e2e_data(plan: BudgetPlan) -> tuple[Any, Any, Any, Any]:
    from lora_edu.data import load_e2e, load_instructions
    from lora_edu.generate import e2e_examples, instruction_examples

    ds = load_e2e()
    if plan.n_train > len(ds["train"]):
        raise ValueError(
            f"the study needs {plan.n_train} training pairs; E2E's has {len(ds['train'])}"
        )
    train = e2e_examples(ds["train"].shuffle(seed=0).select(range(plan.n_train)))
    dev_mrs = e2e_examples(ds["validation"], unique=True)
    dev_mrs = dev_mrs.select(range(min(plan.n_dev, len(dev_mrs))))
    test_mrs = e2e_examples(ds["test"], unique=True)
    if plan.n_test is not None:
        test_mrs = test_mrs.select(range(min(plan.n_test, len(test_mrs))))
    old = instruction_examples(load_instructions()["test"])
    if profile() == "smoke":
        old = old.select(range(8))
    return train, dev_mrs, test_mrs, old


def _run_e2e(plan: BudgetPlan, arm: Arm, lr: float | None, seed: int, progress: bool) -> dict:
    from lora_edu.generate import bleu_statistics, corpus_bleu, generate
    from lora_edu.lora import LoRAConfig
    from lora_edu.models import load_causal_lm
    from lora_edu.training.causal_lm import causal_lm_loss, finetune_causal_lm

    train, dev_mrs, test_mrs, old = _e2e_data(plan)
    max_new_tokens = by_profile(smoke=8, default=48)
    tokenizer, model = load_causal_lm("smollm2")
    points: list[dict[str, Any]] = []

    def answer(point: dict[str, Any], net: Any, split: str, data: Any) -> None:
        hyps = generate(net, tokenizer, list(data["prompt"]), max_new_tokens=max_new_tokens,
                        batch_size=32, progress=False)  # fmt: skip
        references = [list(r) for r in data["references"]]
        point[f"{split}_metric"] = corpus_bleu(hyps, references) / 100  # like every metric
        point[f"{split}_bleu_stats"] = bleu_statistics(hyps, references)
        point[f"{split}_generations"] = hyps

    def checkpoint(net: Any, step: int) -> None:
        # The old task (the instruction set's test answers): what fine-tuning made worse.
        point: dict[str, Any] = {
            "step": step,
            "multiple": step // plan.base_steps,
            "forget_loss": causal_lm_loss(net, tokenizer, old)["eval_loss"],
        }
        if step > 0 or arm.method == "none":
            answer(point, net, "dev", dev_mrs)
            answer(point, net, "test", test_mrs)
        points.append(point)

    if arm.method == "none":  # the prompted model: every budget is step 0
        start = time.perf_counter()
        checkpoint(model.eval(), 0)
        return {
            "method": "none", "lr": None, "seed": seed, "train_seconds": 0.0,
            "eval_seconds": time.perf_counter() - start, "checkpoints": points,
            "n_dev": len(dev_mrs), "n_test": len(test_mrs), "n_old": len(old),
        }  # fmt: skip
    record = finetune_causal_lm(
        train, None, method=arm.method, lr=lr, epochs=1, batch_size=plan.batch_size, seed=seed,
        lora=LoRAConfig(arm.targets) if arm.method == "lora" else None, progress=progress,
        base=model, tokenizer=tokenizer, schedule="constant", warmup_ratio=plan.warmup_ratio,
        checkpoints=(0, *plan.steps), on_checkpoint=checkpoint,
    )  # fmt: skip
    return {**_kept(record), "checkpoints": points, "n_dev": len(dev_mrs),
            "n_test": len(test_mrs), "n_old": len(old)}  # fmt: skip


#: What a study record keeps of the training record (the rest is per checkpoint).
_KEPT = ("method", "r", "alpha", "lr", "seed", "trainable_params",
         "total_params", "train_seconds", "eval_seconds", "torch_version", "device")  # fmt: skip


def _kept(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in _KEPT}


def run_budget(
    task: str, arm_name: str, lr: float | None, seed: int, *, progress: bool = True
) -> dict[str, Any]:
    """Train one arm of ``task``'s study at ``lr`` with ``seed`` for the longest budget and
    return its record: the run's key (``study``, ``task``, ``profile``, ``arm``, ``lr``,
    ``seed``), its settings, and ``checkpoints``: one entry per budget with ``step``,
    ``multiple``, ``dev_metric``/``test_metric`` (accuracy, or BLEU / 100 for E2E) and the
    per-example data a paired test needs (SST-2: ``dev_correct``/``test_correct`` as strings of
    0/1; E2E: ``dev_``/``test_bleu_stats`` and ``_generations``, and ``forget_loss``: the loss on the instruction set's test
    answers, also at step 0)."""
    plan = budget_plan(task)
    arm = plan.arm(arm_name)
    run = _run_sst2 if task == "sst2" else _run_e2e
    result = run(plan, arm, lr, seed, progress)
    record = {
        "study": "budget", "task": task, "profile": profile(), "arm": arm.name,
        "targets": arm.targets if isinstance(arm.targets, str | None) else list(arm.targets),
        "schedule": "constant", "warmup_steps": int(plan.warmup_ratio * plan.steps[-1]),
        "batch_size": plan.batch_size, "base_steps": plan.base_steps,
        "multiples": list(BUDGET_MULTIPLES), "n_train": plan.n_train, "metric_name": plan.metric,
    }  # fmt: skip
    return {**record, **result, "lr": lr, "seed": seed}


# --------------------------------------------------------------------------- the rates


def budget_view(record: dict[str, Any], multiple: int, split: str = "dev") -> dict[str, Any]:
    """One run at one point (a budget multiple, or what the record's ``point_key`` names: the
    data-size study's training-set size) as a plain result record (``lr``, ``seed``, ``metric``,
    ``metric_name``, ``eval_correct`` where kept), for ``pilots.decide_arm`` and
    ``stats.compare_records``."""
    points, key = record["checkpoints"], record.get("point_key", "multiple")
    if record["method"] == "none":  # the prompted model: the same at every budget
        point = next((p for p in points if f"{split}_metric" in p), None)
    else:
        point = next((p for p in points if p["step"] > 0 and p[key] == multiple), None)
    if point is None:
        raise ValueError(
            f"{record['arm']} lr {record['lr']} seed {record['seed']} has no result at "
            f"{key} = {multiple}"
        )
    view = {"lr": record["lr"], "seed": record["seed"], "metric": point[f"{split}_metric"],
            "metric_name": record["metric_name"], "method": record["method"]}  # fmt: skip
    for kept, field in ((f"{split}_correct", "eval_correct"),
                        (f"{split}_bleu_stats", "eval_bleu_stats"),
                        (f"{split}_generations", "generations")):  # fmt: skip
        if kept in point:
            view[field] = point[kept]
    return view


def _ladder_neighbour(rate: float, direction: int) -> float | None:
    i = min(range(len(RATE_LADDER)), key=lambda k: abs(RATE_LADDER[k] - rate))
    j = i + direction
    return RATE_LADDER[j] if 0 <= j < len(RATE_LADDER) else None


def arm_decisions(
    records: Sequence[dict[str, Any]],
    arm: Arm,
    grid: Sequence[float],
    points: Sequence[int] = BUDGET_MULTIPLES,
) -> dict[int, ArmDecision]:
    """The pilot decision of ``arm`` at each point (budget multiple, or training-set size), from
    its runs of ``grid`` with the pilot seeds (``PILOT_SEEDS``) on the held-out examples; every
    rate needs those runs. A third seed, added where a rate was chosen, does not move the
    decision that chose it."""
    runs = [r for r in records
            if r["arm"] == arm.name and r["lr"] in grid and r["seed"] in PILOT_SEEDS]  # fmt: skip
    return {
        m: decide_arm(arm.name, grid, [budget_view(r, m) for r in runs], equal_eval=True)
        for m in points
    }


def next_runs(task: str, records: Sequence[dict[str, Any]], arms: Sequence[str] | None = None,
              plan: StudyPlan | None = None) -> list[tuple[str, float | None, int]]:  # fmt: skip
    """The runs (arm, lr, seed) the study still needs, given the runs done, arm by arm in the
    plan's order (``arms`` restricts them). For each arm, the first of these that applies:
    (1) a rate of its grid (start rates and rates added before) lacks seed 0 or 1 — those runs;
    (2) at some point the best rate sits at the grid's edge — the next rate of ``RATE_LADDER``
    beyond it, seeds 0 and 1; (3) a rate best or tied at some point lacks ``THIRD_SEED``.
    ``plan``: the study's (default: ``budget_plan(task)``)."""
    plan = plan if plan is not None else budget_plan(task)
    wanted = [plan.arm(a) for a in arms] if arms is not None else list(plan.arms)
    todo: list[tuple[str, float | None, int]] = []
    done = {(r["arm"], r["lr"], r["seed"]) for r in records}
    for arm in wanted:
        if arm.method == "none":
            if (arm.name, None, 0) not in done:
                todo.append((arm.name, None, 0))
            continue
        grid = sorted(set(arm.start_rates) | {r["lr"] for r in records if r["arm"] == arm.name})
        # seed by seed: every rate's first seed before any rate's second (an early look at all)
        missing = [(arm.name, lr, s) for s in PILOT_SEEDS for lr in grid
                   if (arm.name, lr, s) not in done]  # fmt: skip
        if missing:
            todo += missing
            continue
        decisions = arm_decisions(records, arm, grid, plan.points)
        extend = set()
        for decision in decisions.values():
            if decision.at_edge:
                side = -1 if decision.best == min(grid) else 1
                rate = _ladder_neighbour(decision.best, side)
                if rate is not None:
                    extend.add(rate)
        if extend:
            todo += [(arm.name, lr, s) for s in PILOT_SEEDS for lr in sorted(extend)]
            continue
        chosen = sorted({lr for d in decisions.values() for lr in (d.best, *d.tied)})
        todo += [(arm.name, lr, THIRD_SEED) for lr in chosen
                 if (arm.name, lr, THIRD_SEED) not in done]  # fmt: skip
    return todo


def run_study(
    task: str,
    *,
    arms: Sequence[str] | None = None,
    max_runs: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    plan: StudyPlan | None = None,
    run_one: Callable[..., dict[str, Any]] | None = None,
    study: str = "budget study",
) -> int:
    """Run what ``next_runs`` asks for, one run at a time, appending each record to ``out``
    (default ``results_path(task)``) as soon as it ends, until nothing is missing or
    ``max_runs`` runs are done; returns how many ran. Safe to stop and start again.
    Another study (``lora_edu.data_size``) passes its ``plan``, ``run_one(task, arm, lr, seed,
    progress=...)``, its ``out`` and its name."""
    path = Path(out) if out is not None else results_path(task)
    run_one = run_one if run_one is not None else run_budget
    ran = 0
    while max_runs is None or ran < max_runs:
        records = read_results(path, repair=True) if path.exists() else []
        todo = next_runs(task, records, arms, plan)
        if not todo:
            log(f"{study} {task}: nothing left to run ({len(records)} runs in {path})")
            break
        arm, lr, seed = todo[0]
        log(f"{study} {task}: {arm} lr={lr} seed={seed} ({len(todo)} runs planned now)")
        start = time.perf_counter()
        record = run_one(task, arm, lr, seed, progress=progress)
        append_record(path, record)
        ran += 1
        key = record.get("point_key", "multiple")
        log(f"  done in {time.perf_counter() - start:.0f} s: " + ", ".join(
            f"{key} {p[key]}: {p['test_metric']:.4f}" for p in record["checkpoints"]
            if "test_metric" in p))  # fmt: skip
    return ran
