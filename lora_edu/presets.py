"""The pieces every task's presets are built from, and the learning-rate pilot that decides the
headlines' rates. The presets themselves live beside their tasks (``lora_edu.tasks.*``, through
``tasks.registry.register_presets``); this module is what those declarations call.

    preset_grid("sst2", ["headline", "ranks"])   # the runs of named sweeps, each once
    lr_pilot_chosen("sst2")                      # each arm's rate: the pilot's best

A headline runs every arm at the rate its pilot chose, and the pilot is itself a preset of the
task's ``-dev`` twin, so the two meet here: ``headline_grid`` reads ``pilot_decisions``, which
reads the pilot's records through its grid.

Imports ``config``, ``defaults``, ``grid``, ``pilots``, ``kept`` (where results are kept),
``store`` and the task registry; never a task module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lora_edu.config import by_profile, profile
from lora_edu.defaults import FORMER_LR
from lora_edu.grid import make_grid, unique_runs
from lora_edu.kept import results_file
from lora_edu.pilots import ArmDecision, decide_arm
from lora_edu.store import read_results
from lora_edu.tasks.registry import (
    headline_arms,
    headline_lora_targets,
    pilot_rates,
    pilot_seeds,
    task_presets,
)

Grid = list[dict[str, Any]]

#: Seeds of each task's headline rows (every arm at its pilot learning rate).
HEADLINE_SEEDS = (0, 1, 2)


def preset_grid(task: str, names: str | Sequence[str]) -> Grid:
    """The runs of one or more presets of ``task``, in order, each run once."""
    presets = task_presets(task)
    if not presets:
        from lora_edu.tasks.registry import all_presets

        raise ValueError(
            f"no presets for task {task!r}; expected one of {', '.join(all_presets())}"
        )
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in presets]
    if unknown:
        raise ValueError(
            f"unknown preset(s) {unknown} for {task}; expected some of {', '.join(presets)}"
        )
    return unique_runs(run for name in names for run in presets[name]())


def sweep_command(task: str, names: str | Sequence[str]) -> str:
    """The shell command that runs these presets (at the profile in ``LORA_EDU_PROFILE``)."""
    names = [names] if isinstance(names, str) else list(names)
    return f"lora-edu sweep --task {task} --preset {','.join(names)}"


def lora_runs(
    ranks: Sequence[int],
    alphas: Sequence[float] = (16,),
    targets: Sequence[Sequence[str]] = (("query", "value"),),
    seeds: Sequence[int] = (0,),
) -> Grid:
    """LoRA at each rank × α × target set × seed, at LoRA's rate from before the pilot (the rate
    every study beyond the headline ran at)."""
    return make_grid(["lora"], ranks, alphas, targets, seeds, lr=FORMER_LR["lora"])


def arm_runs(
    task: str,
    arm: str,
    lr: float,
    seeds: int | Sequence[int] = 0,
    *,
    head_lr: float | None = None,
) -> Grid:
    """The runs of one arm of ``task``'s pilot or headline at ``lr``: ``arm`` is a method,
    ``lora-all-linear`` (LoRA r = 8 on every linear layer), ``lora-mlp`` (LoRA on the
    headline's targets and a ViT's MLP, ``fc1``, ``fc2``) or ``lora-pos`` (LoRA on the
    headline's targets, the position embedding trained in full beside it); LoRA is r = 8,
    α = 16 on the headline's targets. ``head_lr``: the new head's own rate (None: the
    method's)."""
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not arm.startswith("lora"):
        return make_grid([arm], seeds=seeds, lr=lr, head_lr=head_lr)
    targets = ("all-linear",) if arm == "lora-all-linear" else tuple(headline_lora_targets(task))
    targets += MLP_TARGETS if arm == "lora-mlp" else ()
    also = POSITIONS if arm == "lora-pos" else ()
    return make_grid(["lora"], [8], [16], [targets], seeds, lr=lr, head_lr=head_lr, also_train=also)


#: The MLP layers of the TinyViT (``lora-mlp`` adds them to the headline's LoRA targets) and its
#: position embedding (``lora-pos`` trains it in full beside LoRA).
MLP_TARGETS = ("fc1", "fc2")
POSITIONS = ("position_embedding",)


def headline_grid(task: str) -> Callable[[], Grid]:
    """Every headline arm (``headline_arms``) at its pilot rate (``lr_pilot_chosen``) on the
    reported evaluation set, ``HEADLINE_SEEDS`` each. Seed by seed, so that a sweep stopped
    half-way leaves whole comparisons behind."""

    def grid() -> Grid:
        lrs = lr_pilot_chosen(task)
        seeds = by_profile(smoke=[0], default=list(HEADLINE_SEEDS))
        return [
            run
            for seed in seeds
            for arm in headline_arms(task)
            for run in arm_runs(task, arm, lrs[arm], seed)
        ]

    return grid


def tied_rates_grid(task: str, arms: Sequence[str] = ("lora", "full")) -> Callable[[], Grid]:
    """The headline once more at every rate that ``task``'s pilot could not tell apart from an
    arm's best (``ArmDecision.tied``), for ``arms``, ``HEADLINE_SEEDS`` each: a tie is not a
    choice, so the headline's verdict is checked at each tied rate too. Empty where nothing is
    tied (always in ``smoke``, whose pilot tries one rate per arm)."""

    def grid() -> Grid:
        decisions = pilot_decisions(task)
        seeds = by_profile(smoke=[0], default=list(HEADLINE_SEEDS))
        return [
            run
            for seed in seeds
            for arm in arms
            if arm in decisions
            for lr in decisions[arm].tied
            for run in arm_runs(task, arm, lr, seed)
        ]

    return grid


#: The new head's own learning rates tried beside LoRA and full fine-tuning
#: (``head_rate_pilot_grid``), besides the method's own rate.
HEAD_RATES = (3e-3, 1e-2, 3e-2, 1e-1)


def head_rate_arms(task: str) -> tuple[str, str]:
    """The arms whose head's rate is piloted: the headline's first LoRA arm, and full
    fine-tuning."""
    lora = next(arm for arm in headline_arms(task) if arm.startswith("lora"))
    return lora, "full"


def head_rate_pilot_grid(task: str) -> Callable[[], Grid]:
    """The new head's own rate beside LoRA and beside full fine-tuning (``head_rate_arms``),
    each at its pilot rate (``lr_pilot_chosen``): the head at the method's rate (the pilot's own
    runs, ``head_lr`` left out) and at each of ``HEAD_RATES``, seeds 0 and 1 (and any other
    seed of the pilot), seed by seed, on the ``-dev`` twin (smoke: one head rate, seed 0)."""

    def grid() -> Grid:
        lrs = lr_pilot_chosen(task)
        seeds = by_profile(smoke=[0], default=sorted({0, 1, *pilot_seeds(task)}))
        head_rates = by_profile(smoke=HEAD_RATES[1:2], default=HEAD_RATES)
        runs: Grid = []
        for seed in seeds:
            for arm in head_rate_arms(task):
                runs += arm_runs(task, arm, lrs[arm], seed)
                for head_lr in head_rates:
                    if head_lr != lrs[arm]:  # the same as the method's own rate: the run above
                        runs += arm_runs(task, arm, lrs[arm], seed, head_lr=head_lr)
        return runs

    return grid


def former_lr_grid(task: str) -> Callable[[], Grid]:
    """The headline methods at the one learning rate per method that every task used before the
    pilot (``FORMER_LR``), seeds 0 and 1: what the comparison looked like before it was fair."""

    def grid() -> Grid:
        seeds = by_profile(smoke=[0], default=[0, 1])
        return [
            run
            for arm in pilot_rates(task)
            if arm in FORMER_LR
            for run in arm_runs(task, arm, FORMER_LR[arm], seeds)
        ]

    return grid


def lr_pilot_grid(task: str) -> Callable[[], Grid]:
    """Every arm of ``task``'s pilot at each of its rates, with the pilot's seeds (``pilot_seeds``;
    smoke: one rate per arm, seed 0), seed by seed; the runs belong to the ``-dev`` twin, scored
    on held-out training examples."""

    def grid() -> Grid:
        rates = pilot_rates(task)
        lrs = by_profile(smoke={arm: r[1:2] for arm, r in rates.items()}, default=rates)
        seeds = by_profile(smoke=[0], default=list(pilot_seeds(task)))
        return [
            run
            for seed in seeds
            for arm, rates in lrs.items()
            for lr in rates
            for run in arm_runs(task, arm, lr, seed)
        ]

    return grid


# ------------------------------------------------------------------ what a pilot decides


def pilot_arm(record: dict[str, Any]) -> str:
    """Which arm of the learning-rate pilot a run is: its method, or for LoRA with other
    targets or more trained, ``lora-all-linear``, ``lora-mlp`` or ``lora-pos`` (``arm_runs``)."""
    if record["method"] != "lora":
        return record["method"]
    targets = list(record.get("target_modules") or [])
    if targets == ["all-linear"]:
        return "lora-all-linear"
    if record.get("also_train"):
        also = tuple(record["also_train"])
        return "lora-pos" if also == POSITIONS else "lora+" + "+".join(also)
    if set(MLP_TARGETS) <= set(targets):
        return "lora-mlp"
    return "lora"


def variant_name(record: dict[str, Any]) -> str:
    """Which LoRA variant a LoRA record is: rsLoRA, PiSSA and QLoRA are settings of plain LoRA
    (``use_rslora``, ``init``, ``quantize``), the others a ``variant`` (plain LoRA: ``lora``)."""
    if record.get("quantize"):
        return "qlora"
    if record.get("use_rslora"):
        return "rslora"
    if record.get("init") == "pissa":
        return "pissa"
    return record.get("variant") or "lora"


def decisions_of(
    dev_task: str,
    preset: str,
    name_of: Callable[[dict[str, Any]], str],
    *,
    keep: Callable[[dict[str, Any]], bool] = lambda rec: True,
    score: Callable[[dict[str, Any]], float] = lambda rec: rec["metric"],
    equal_eval: bool = True,
    grid: Grid | None = None,
) -> dict[str, ArmDecision]:
    """What a learning-rate pilot decides (``pilots.decide_arm``): for each arm (``name_of`` a
    run) of the preset's grid, every rate's mean ``score`` over the pilot's seeds, the best rate
    (a tie of means goes to the lower rate) and the rates a paired test cannot tell apart from
    it, among the records ``keep`` accepts. While a run is missing it raises, naming the runs and
    the command to run first, except in ``smoke``, where an incomplete arm is left out. ``grid``:
    the preset's grid when the caller has built it already."""
    grid = grid if grid is not None else preset_grid(dev_task, preset)
    path = results_file(dev_task, preset)

    def ident(rec: dict[str, Any]) -> tuple[str, float, int]:
        return name_of(rec), float(rec["lr"]), int(rec.get("seed", 0))

    wanted = {ident(run) for run in grid}
    records = [rec for rec in read_results(path) if ident(rec) in wanted and keep(rec)]
    missing = sorted(wanted - {ident(rec) for rec in records})
    if missing and profile() != "smoke":
        raise ValueError(
            f"the learning-rate pilot is incomplete in {path} (missing "
            f"{', '.join(f'{arm} at lr {lr:g} seed {seed}' for arm, lr, seed in missing)}); run "
            f"`{sweep_command(dev_task, preset)}` first"
        )
    incomplete = {arm for arm, _, _ in missing}
    decisions = {}
    for arm in dict.fromkeys(name_of(run) for run in grid):
        if arm in incomplete:
            continue
        rates = sorted({float(run["lr"]) for run in grid if name_of(run) == arm})
        mine = [rec for rec in records if name_of(rec) == arm]
        decisions[arm] = decide_arm(arm, rates, mine, score=score, equal_eval=equal_eval)
    return decisions


def choice_of(
    dev_task: str,
    preset: str,
    name_of: Callable[[dict[str, Any]], str],
    fallback: Callable[[str], float],
    **options: Any,
) -> dict[str, float]:
    """Each arm's best rate (``decisions_of``, with its ``options``); in ``smoke`` an arm whose
    pilot runs are incomplete takes ``fallback(arm)``."""
    grid = preset_grid(dev_task, preset)
    decisions = decisions_of(dev_task, preset, name_of, grid=grid, **options)
    return {
        arm: decisions[arm].best if arm in decisions else fallback(arm)
        for arm in dict.fromkeys(name_of(run) for run in grid)
    }


def _plain_lora_or_baseline(record: dict[str, Any]) -> bool:
    """A headline method's run: a baseline, or plain LoRA at r = 8 (not one of the variants that
    share the SST-2 pilot's file)."""
    return record["method"] != "lora" or (record["r"] == 8 and variant_name(record) == "lora")


def pilot_decisions(task: str) -> dict[str, ArmDecision]:
    """The learning-rate pilot of ``task``'s headline, arm by arm (``pilots.ArmDecision``: each
    rate's mean over the seeds, the best, the rates tied with it by a paired test, whether the
    best sits at the grid's edge), from the committed results of ``task``-dev."""
    return decisions_of(f"{task}-dev", "lr-pilot", pilot_arm, keep=_plain_lora_or_baseline)


def head_rate_decisions(task: str) -> dict[str, ArmDecision]:
    """What the head-rate pilot (``head_rate_pilot_grid``, on ``task``-dev) decides for each arm
    of ``head_rate_arms``: a ``pilots.ArmDecision`` whose "rates" are the **head's** rates (the
    method's own rate stands for the runs without ``head_lr``), with its best and its ties.
    Raises, naming the command, while runs are missing, except in ``smoke`` (an incomplete arm
    is left out)."""
    dev = f"{task}-dev"
    grid = preset_grid(dev, "head-rate-pilot")

    def ident(rec: dict[str, Any]) -> tuple[str, float, float | None, int]:
        head = rec.get("head_lr")
        return pilot_arm(rec), float(rec["lr"]), None if head is None else float(head), rec["seed"]

    wanted = {ident(run) for run in grid}
    path = results_file(dev, "head-rate-pilot")
    records = [rec for rec in read_results(path)
               if ident(rec) in wanted and _plain_lora_or_baseline(rec)]  # fmt: skip
    missing = wanted - {ident(rec) for rec in records}
    if missing and profile() != "smoke":
        raise ValueError(
            f"the head-rate pilot is incomplete in {path} ({len(missing)} runs missing); run "
            f"`{sweep_command(dev, 'head-rate-pilot')}` first"
        )
    incomplete = {arm for arm, *_ in missing}
    decisions = {}
    for arm in head_rate_arms(task):
        if arm in incomplete:
            continue
        rows = [{**rec, "lr": rec.get("head_lr") or rec["lr"]}
                for rec in records if pilot_arm(rec) == arm]  # fmt: skip
        rates = sorted({row["lr"] for row in rows})
        decisions[arm] = decide_arm(f"{arm}: the head", rates, rows)
    return decisions


def lr_pilot_chosen(task: str) -> dict[str, float]:
    """Each pilot arm's learning rate on ``task`` (``sst2``, ``conll2003``, ``vit``, ...): the one
    with the best metric on the held-out training examples of the ``-dev`` task, a tie going to
    the lower rate. Raises, naming the missing runs and the command, while the pilot is
    incomplete, except in ``smoke``, where an arm without its pilot runs takes ``FORMER_LR``
    (LoRA's for ``lora-all-linear``)."""
    return choice_of(
        f"{task}-dev",
        "lr-pilot",
        pilot_arm,
        lambda arm: FORMER_LR["lora" if arm.startswith("lora") else arm],
        keep=_plain_lora_or_baseline,
    )
