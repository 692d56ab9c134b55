"""The named sweeps behind notebooks 06–09: one definition used by the notebooks, the
``lora-edu sweep --preset`` command that produced the committed results, and ``lora-edu figures``.

    records = run_presets("sst2", ["headline", "ranks"])       # trains only what is missing
    print(sweep_command("sst2", ["headline", "ranks"]))         # the equivalent shell command

Where results go (``results_file``): in ``default`` and ``full`` the profile-specific file under
``data/results/`` (``sst2-default.jsonl`` is committed, so the notebooks re-use it instead of
training); in ``smoke`` a fresh temporary file, so CI runs a tiny live sweep through every code
path and never writes into the repository.

Every preset is a function of the active profile: ``smoke`` keeps the structure (every method,
several ranks, alphas and target sets) with fewer points; ``default`` and ``full`` share a grid
and differ only in the training budget that each task (``lora_edu.tasks``) picks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lora_edu.config import by_profile, profile
from lora_edu.defaults import FORMER_LR, TASK_DEFAULTS
from lora_edu.grid import _canonical, key_value, make_grid, unique_runs

# what the repository keeps, under the names the notebooks and older code use
from lora_edu.kept import PRESET_FILES as PRESET_FILES
from lora_edu.kept import RUN_RECORD as RUN_RECORD
from lora_edu.kept import kept_adapter_dir as kept_adapter_dir
from lora_edu.kept import kept_adapters as kept_adapters
from lora_edu.kept import kept_run_record as kept_run_record
from lora_edu.kept import results_file as results_file
from lora_edu.kept import to_float16 as to_float16
from lora_edu.pilots import ArmDecision, decide_arm
from lora_edu.runner import run_sweep
from lora_edu.styles import DENOISER_TARGETS, STYLES
from lora_edu.tasks.text import COMPRESSION_RANKS

QV = ("query", "value")
#: BERT's attention output projection (``output.dense`` alone would also match the MLP's).
ATTN_OUT = "attention.output.dense"
VIT_ATTENTION = ("query", "key", "value", "output")
VIT_ATTENTION_MLP = (*VIT_ATTENTION, "fc1", "fc2")
HEADLINE_METHODS = ("head", "bitfit", "lora", "full")

#: LoRA paper Table 5 at our scale: each set gets the rank that gives q,v at r=8's budget
#: (73,728 trainable LoRA parameters on MiniLM-L6); all-linear cannot hit it exactly (41,472
#: per unit of rank: r=2 is 82,944, r=1 41,472), so it takes the nearest rank above.
TABLE5_TARGETS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (16, ("query",)),
    (16, ("key",)),
    (16, ("value",)),
    (16, (ATTN_OUT,)),
    (8, ("query", "key")),
    (8, QV),
    (4, ("query", "key", "value", ATTN_OUT)),
    (2, ("all-linear",)),
)

#: The adapters the paper figures read (A and B kept): q,v at r = 4, 8, 64 (two seeds for 8, 64).
PAPER_ADAPTERS: tuple[tuple[int, int], ...] = ((4, 0), (8, 0), (8, 1), (64, 0), (64, 1))


def _lora(ranks, alphas=(16,), targets=(QV,), seeds=(0,)) -> list[dict[str, Any]]:
    # the studies beyond the headline ran at LoRA's rate from before the pilot
    return make_grid(["lora"], ranks, alphas, targets, seeds, lr=FORMER_LR["lora"])


#: Seeds of each task's headline rows (every method at its pilot learning rate).
HEADLINE_SEEDS = (0, 1, 2)


#: The arms of a task's headline where they are not every arm of its pilot: on CoNLL-2003 the
#: pilot tried LoRA on query, value and on every linear layer, and the headline reports the
#: better one on the held-out training sentences (all-linear, 84.1 against 80.9 entity F1).
HEADLINE_ARMS: dict[str, tuple[str, ...]] = {
    "conll2003": ("lora-all-linear", "full", "head", "bitfit"),
}


def headline_arms(task: str) -> tuple[str, ...]:
    """The pilot arms ``task``'s headline runs (``HEADLINE_ARMS``, else every pilot arm)."""
    return HEADLINE_ARMS.get(task, tuple(LR_PILOT_LRS[task]))


def _headline(task: str) -> Callable[[], list[dict[str, Any]]]:
    """Every headline arm (``headline_arms``) at its pilot rate (``lr_pilot_chosen``) on the
    reported evaluation set, ``HEADLINE_SEEDS`` each. Seed by seed, so that a sweep stopped
    half-way leaves whole comparisons behind."""

    def grid() -> list[dict[str, Any]]:
        lrs = lr_pilot_chosen(task)
        seeds = by_profile(smoke=[0], default=list(HEADLINE_SEEDS))
        return [
            run
            for seed in seeds
            for arm in headline_arms(task)
            for run in _pilot_arm(task, arm, lrs[arm], seed)
        ]

    return grid


def _former_lr(task: str) -> Callable[[], list[dict[str, Any]]]:
    """The headline methods at the one learning rate per method that every task used before the
    pilot (``FORMER_LR``), seeds 0 and 1: what the comparison looked like before it was fair."""

    def grid() -> list[dict[str, Any]]:
        seeds = by_profile(smoke=[0], default=[0, 1])
        return [
            run
            for arm in LR_PILOT_LRS[task]
            if arm != "lora-all-linear"
            for run in _pilot_arm(task, arm, FORMER_LR[arm], seeds)
        ]

    return grid


#: The ranks of each task's rank sweep in ``default``/``full``. CoNLL-2003 runs cost about 4× an
#: SST-2 run on the project's CPU, so its sweep is coarser.
SWEEP_RANKS = {
    "sst2": [1, 2, 4, 8, 16, 32, 64],
    "conll2003": [1, 4, 8, 64],
}
#: The ranks at which α = r and α = 2r are run besides α = 16 (SST-2): the ends and the middle of
#: the rank sweep, as many as the CPU budget of the committed results allowed.
ALPHA_RANKS = [1, 8, 64]


def _ranks(task: str = "sst2") -> Callable[[], list[dict[str, Any]]]:
    def grid() -> list[dict[str, Any]]:
        return _lora(by_profile(smoke=[1, 8], default=SWEEP_RANKS[task]))

    return grid


def _alphas() -> list[dict[str, Any]]:
    """α = r (scaling 1) and α = 2r (scaling 2) at ``ALPHA_RANKS``; α = 16 is the ``ranks``
    preset."""
    ranks = by_profile(smoke=[1, 8], default=ALPHA_RANKS)
    return [run for r in ranks for run in _lora([r], alphas=[r, 2 * r])]


def _conll_alphas() -> list[dict[str, Any]]:
    """CoNLL-2003 at the rank sweep's top, r = 64, with α = 2r (scaling 2 instead of α = 16's
    0.25): is the large rank held back by its small scaling? (smoke: r = 1.)"""
    return [run for r in by_profile(smoke=[1], default=[64]) for run in _lora([r], alphas=[2 * r])]


def _table5() -> list[dict[str, Any]]:
    sets = by_profile(smoke=TABLE5_TARGETS[-3::2], default=TABLE5_TARGETS)  # smoke: q,v; all-linear
    return [run for r, targets in sets for run in _lora([r], targets=[targets])]


def _query_ranks() -> list[dict[str, Any]]:
    # with r = 16 from the ``targets`` preset, Wq alone is seen at r = 1, 16, 64
    return _lora(by_profile(smoke=[8], default=[1, 64]), targets=[("query",)])


def _paper_adapters() -> list[dict[str, Any]]:
    return [run for r, seed in PAPER_ADAPTERS for run in _lora([r], seeds=[seed])]


def _vit_ranks() -> list[dict[str, Any]]:
    ranks = by_profile(smoke=[1, 8], default=[1, 2, 4, 8, 16])
    return _lora(ranks, targets=[VIT_ATTENTION, VIT_ATTENTION_MLP])


# ------------------------------------------------------------------ the learning-rate pilot

#: The learning-rate pilot of the headline comparisons, per task and method: three or more rates
#: a factor 2–3 apart around the one rate every task used before the pilot
#: (``FORMER_LR``), each scored on held-out *training* examples (the task's ``-dev`` twin, see
#: ``tasks.common.DEV_SIZE``), never on the evaluation set the headline reports. LoRA is r = 8 on the
#: headline's targets (``HEADLINE_LORA_TARGETS``).
LR_PILOT_LRS: dict[str, dict[str, tuple[float, ...]]] = {
    "sst2": {
        "lora": (5e-4, 1e-3, 2e-3, 5e-3),
        "full": (5e-5, 1e-4, 2e-4),
        "head": (1e-3, 3e-3, 1e-2, 3e-2),
        "bitfit": (3e-4, 1e-3, 3e-3, 1e-2),
    },
    "conll2003": {
        "lora": (1e-3, 2e-3, 5e-3, 1e-2),
        "lora-all-linear": (1e-3, 2e-3, 5e-3),
        "full": (5e-5, 1e-4, 2e-4, 5e-4, 1e-3),
        "head": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
        "bitfit": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    },
    "vit": {
        "lora": (1e-3, 2e-3, 5e-3),
        "full": (5e-5, 1e-4, 3e-4, 1e-3),
        "head": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
        "bitfit": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    },
    # notebook 17: the new head has to learn boxes (detection) or a shared space (matching)
    "detection": {
        "lora": (1e-3, 2e-3, 5e-3, 1e-2, 2e-2),
        "full": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
        "head": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    },
    "matching": {  # on the ViT task's 8×8 digits, so around the ViT pilot's choices
        "lora": (5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2),
        "full": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3),
        "head": (1e-3, 3e-3, 1e-2, 3e-2),
    },
    # notebook 16: a style adapter for the digit denoiser (pretrained at 1e-3), against tuning
    # every weight of the UNet
    "style-thick": {"lora": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3), "full": (3e-6, 1e-5, 3e-5, 1e-4, 3e-4)},
    "style-sevens": {
        "lora": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
        "full": (3e-5, 1e-4, 3e-4, 1e-3),
    },
}
#: A grid whose best rate sat at an end was extended beyond it, one rate at a time, until it did
#: not (SST-2's linear probe and BitFit; the ViT's linear probe, twice, and BitFit; CoNLL-2003's four arms,
#: its probe and BitFit three times: on a token task the new head wants a rate of 0.03-0.1;
#: detection's three arms, two rates each: a box head and its backbone want higher rates;
#: matching's LoRA twice and its full fine-tuning once, upward; the thick style's LoRA and full
#: fine-tuning twice each, downward: its score saturates near 95 %, best at low rates (LoRA 1e-4,
#: full fine-tuning 1e-5); the sevens style's LoRA twice and its full fine-tuning once,
#: upward, until at 3e-2 the classifier called none of LoRA's samples a 7 and at 1e-3 only
#: 14 % of full fine-tuning's).
#: CoNLL-2003 also has LoRA on every linear layer as a second LoRA arm.
#: LoRA's targets in each task's headline row (r = 8, α = 16).
HEADLINE_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "sst2": QV, "conll2003": QV, "vit": VIT_ATTENTION, "detection": VIT_ATTENTION,
    "matching": QV,  # query and value in both towers
    # the attention projections and the residual blocks' convolutions, as in image-generation LoRAs
    **{f"style-{style}": DENOISER_TARGETS for style in STYLES},
}  # fmt: skip


def _pilot_arm(
    task: str, arm: str, lr: float, seeds: int | Sequence[int] = 0
) -> list[dict[str, Any]]:
    """The runs of one arm of the pilot or the headline at ``lr``: ``arm`` is a method, or
    ``lora-all-linear`` (LoRA r = 8 on every linear layer); LoRA is r = 8, α = 16."""
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if arm == "lora-all-linear":
        return make_grid(["lora"], [8], [16], [("all-linear",)], seeds, lr=lr)
    if arm == "lora":
        return make_grid(["lora"], [8], [16], [HEADLINE_LORA_TARGETS[task]], seeds, lr=lr)
    return make_grid([arm], seeds=seeds, lr=lr)


def _lr_pilot(task: str) -> Callable[[], list[dict[str, Any]]]:
    def grid() -> list[dict[str, Any]]:
        lrs = by_profile(
            smoke={arm: rates[1:2] for arm, rates in LR_PILOT_LRS[task].items()},
            default=LR_PILOT_LRS[task],
        )
        return [
            run for arm, rates in lrs.items() for lr in rates for run in _pilot_arm(task, arm, lr)
        ]

    return grid


def _pilot_decisions(
    dev_task: str,
    preset: str,
    name_of: Callable[[dict[str, Any]], str],
    *,
    keep: Callable[[dict[str, Any]], bool] = lambda rec: True,
    score: Callable[[dict[str, Any]], float] = lambda rec: rec["metric"],
    equal_eval: bool = True,
) -> dict[str, ArmDecision]:
    """What every learning-rate pilot decides (``pilots.decide_arm``): for each arm (``name_of``
    a run) of the preset's grid, every rate's mean ``score`` over the pilot's seeds, the best
    rate (a tie of means goes to the lower rate) and the rates a paired test cannot tell apart
    from it, among the records ``keep`` accepts. While a run is missing it raises, naming the
    runs and the command to run first, except in ``smoke``, where an incomplete arm is left
    out."""
    from lora_edu.store import read_results

    grid = PRESETS[dev_task][preset]()
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


def _pilot_choice(
    dev_task: str,
    preset: str,
    name_of: Callable[[dict[str, Any]], str],
    fallback: Callable[[str], float],
    *,
    keep: Callable[[dict[str, Any]], bool] = lambda rec: True,
    score: Callable[[dict[str, Any]], float] = lambda rec: rec["metric"],
    equal_eval: bool = True,
) -> dict[str, float]:
    """Each arm's best rate (``_pilot_decisions``); in ``smoke`` an arm whose pilot runs are
    incomplete takes ``fallback(arm)``."""
    grid = PRESETS[dev_task][preset]()
    decisions = _pilot_decisions(
        dev_task, preset, name_of, keep=keep, score=score, equal_eval=equal_eval
    )
    return {
        arm: decisions[arm].best if arm in decisions else fallback(arm)
        for arm in dict.fromkeys(name_of(run) for run in grid)
    }


def pilot_decisions(task: str) -> dict[str, ArmDecision]:
    """The learning-rate pilot of ``task``'s headline, arm by arm (``pilots.ArmDecision``: each
    rate's mean over the seeds, the best, the rates tied with it by a paired test, whether the
    best sits at the grid's edge), from the committed results of ``task``-dev."""
    return _pilot_decisions(f"{task}-dev", "lr-pilot", pilot_arm, keep=_plain_lora_or_baseline)


def pilot_arm(record: dict[str, Any]) -> str:
    """Which arm of the learning-rate pilot a run is: its method, or ``lora-all-linear``."""
    if record["method"] == "lora" and list(record.get("target_modules") or []) == ["all-linear"]:
        return "lora-all-linear"
    return record["method"]


def lr_pilot_chosen(task: str) -> dict[str, float]:
    """Each pilot arm's learning rate on ``task`` (``sst2``, ``conll2003``, ``vit``): the one with
    the best metric on the held-out training examples of the ``-dev`` task, a tie going to the
    lower rate. Raises, naming the missing runs and the command, while the pilot is incomplete,
    except in ``smoke``, where an arm without its pilot runs takes ``FORMER_LR`` (LoRA's for
    ``lora-all-linear``)."""
    return _pilot_choice(
        f"{task}-dev",
        "lr-pilot",
        pilot_arm,
        lambda arm: FORMER_LR["lora" if arm.startswith("lora") else arm],
        keep=_plain_lora_or_baseline,
    )


def _plain_lora_or_baseline(record: dict[str, Any]) -> bool:
    """A headline method's run: a baseline, or plain LoRA at r = 8 (not one of the variants that
    share the SST-2 pilot's file)."""
    return record["method"] != "lora" or (record["r"] == 8 and variant_name(record) == "lora")


# ------------------------------------------------------------------ the defaults on sparse NER

#: The sparse NER check (task ``conll2003-sparse``: 1,900 sentences, 92 % ``O`` tags, 3 epochs,
#: seed 0): the token-classification defaults from before the pilot (every method at its former
#: rate, and two LoRA settings a user saw collapse onto ``O`` on a set like this one: all-linear at
#: 2e-3, q, v at 5e-3),
#: then every method at its CoNLL-2003 pilot rate, and LoRA with the new head at its own rate (the
#: probe's pilot rate, and a third of it) and with a longer warm-up.
#: Each entry: (method, LoRA targets or None, lr, ``make_grid`` keywords: head_lr, warmup_ratio).
SPARSE_CHECK_RUNS: tuple[tuple[str, tuple[str, ...] | None, float, dict[str, float]], ...] = (
    ("head", None, 3e-3, {}),
    ("bitfit", None, 1e-3, {}),
    ("full", None, 1e-4, {}),
    ("lora", QV, 2e-3, {}),
    ("lora", ("all-linear",), 2e-3, {}),
    ("lora", QV, 5e-3, {}),
    ("head", None, 1e-1, {}),
    ("bitfit", None, 3e-2, {}),
    ("full", None, 5e-4, {}),
    ("lora", QV, 5e-3, {"head_lr": 1e-1}),
    ("lora", ("all-linear",), 2e-3, {"head_lr": 1e-1}),
    ("lora", ("all-linear",), 2e-3, {"head_lr": 3e-2}),
    ("lora", ("all-linear",), 2e-3, {"warmup_ratio": 0.2}),
    # BitFit at its pilot rate collapsed onto O here: the grid's next rate down
    ("bitfit", None, 1e-2, {}),
)


def _token_default_or_former(entry: tuple[str, tuple[str, ...] | None, float, dict]) -> bool:
    """Whether a sparse-check run is a method at its former rate (LoRA on q, v, the former
    default targets) or at today's token default (``defaults.TASK_DEFAULTS["token"]``)."""
    method, targets, lr, loop = entry
    token = TASK_DEFAULTS["token"]
    targets_now = token.target_modules
    default_targets = (targets_now,) if isinstance(targets_now, str) else tuple(targets_now)
    if loop:
        return False
    if method != "lora":
        return lr in (FORMER_LR[method], token.lr[method])
    return (targets, lr) in ((QV, FORMER_LR["lora"]), (default_targets, token.lr["lora"]))


def _sparse_check(
    keep: Callable[[tuple[str, tuple[str, ...] | None, float, dict]], bool] = lambda entry: True,
) -> list[dict[str, Any]]:
    runs = []
    for method, targets, lr, loop in filter(keep, SPARSE_CHECK_RUNS):
        if method == "lora":
            runs += make_grid(["lora"], [8], [16], [targets], lr=lr, **loop)
        else:
            runs += make_grid([method], lr=lr, **loop)
    return runs


# ------------------------------------------------------------------ E2E NLG (notebook 11)

LLAMA_QV = ("q_proj", "v_proj")
#: The learning rates the E2E pilot tries per method, around the values that worked in a first
#: calibration (LoRA 2e-3, full fine-tuning 5e-5), each a factor 2–2.5 apart. The grids were
#: extended upward while their upper end was best (LoRA: 1e-2 and 2e-2 added; full fine-tuning:
#: 2e-4 and 5e-4 added): a best value at the edge of a grid is not an optimum.
E2E_PILOT_LRS = {"lora": (1e-3, 2e-3, 5e-3, 1e-2, 2e-2), "full": (2e-5, 5e-5, 1e-4, 2e-4, 5e-4)}
#: LoRA ranks of the Table-3-style grid (q, v), and the rank of the all-linear row.
E2E_RANKS, E2E_ALL_LINEAR_RANK = (1, 4, 8, 16), 8
#: Seeds of the headline rows (LoRA r=8 on q, v and full fine-tuning); one seed elsewhere.
E2E_HEADLINE_SEEDS = (0, 1, 2)


def _e2e_lr_pilot() -> list[dict[str, Any]]:
    """LoRA r=8 on q, v and full fine-tuning at each pilot learning rate, scored on held-out
    validation MRs (task ``e2e-dev``), never on the test set."""
    lrs = by_profile(smoke={m: v[1:2] for m, v in E2E_PILOT_LRS.items()}, default=E2E_PILOT_LRS)
    runs = [run for lr in lrs["lora"] for run in make_grid(["lora"], [8], [16], [LLAMA_QV], lr=lr)]
    return runs + [run for lr in lrs["full"] for run in make_grid(["full"], lr=lr)]


def e2e_chosen_lrs() -> dict[str, float]:
    """The best pilot learning rate per method: the lowest held-out **validation loss** per
    response token (``e2e-dev`` results of the ``lr-pilot`` preset, 500 pairs of the validation
    MRs). The loss is the steadier criterion: BLEU on the 55 validation MRs moves by a point or
    two from run to run, while a loss over ~12,000 response tokens barely does. Every pilot run
    must be there: otherwise it raises, naming the missing runs and the command to run first,
    except in ``smoke``, where a method whose pilot is incomplete falls back to
    ``train.CAUSAL_LM_LR``."""
    from lora_edu.train import CAUSAL_LM_LR

    return _pilot_choice(
        "e2e-dev",
        "lr-pilot",
        lambda rec: rec["method"],
        CAUSAL_LM_LR.__getitem__,
        score=lambda rec: -rec["eval_loss"],
        # known defect, to be fixed by rerunning this pilot: its losses were computed on 500
        # validation pairs for the first six rates and on 200 for the four added later
        equal_eval=False,
    )


def _e2e_table3() -> list[dict[str, Any]]:
    """The Table-3-style grid on the E2E test MRs: zero-shot, LoRA r ∈ E2E_RANKS on q, v, LoRA on
    all linear layers, full fine-tuning; each method at its pilot learning rate. The headline
    comparison comes first (zero-shot, then LoRA r=8 and full fine-tuning seed by seed), then the
    other ranks and the all-linear row (one seed each; not in smoke)."""
    lrs = e2e_chosen_lrs()
    seeds = by_profile(smoke=[0], default=list(E2E_HEADLINE_SEEDS))
    ranks = by_profile(smoke=[8], default=list(E2E_RANKS))

    def lora(r: int, targets: Sequence[str], seed: int) -> list[dict[str, Any]]:
        return make_grid(["lora"], [r], [16], [targets], [seed], lr=lrs["lora"])

    runs = make_grid(["none"])
    for seed in seeds:
        runs += lora(8, LLAMA_QV, seed) + make_grid(["full"], seeds=[seed], lr=lrs["full"])
    runs += [run for r in ranks if r != 8 for run in lora(r, LLAMA_QV, 0)]
    all_linear = lora(E2E_ALL_LINEAR_RANK, ("all-linear",), 0)
    return runs + by_profile(smoke=[], default=all_linear)  # smoke: the headline rows only


# ------------------------------------------------------------------ LoRA's variants (notebook 12)

#: The variant comparison on SST-2 at LoRA r=8 on q, v's budget (73,728 adapter parameters):
#: name → (rank, ``make_grid`` keywords). LoRA-FA trains B only, so twice the rank gives the same
#: budget; DoRA adds one magnitude per output feature (+4,608). VeRA trains r + d_out numbers per
#: layer and cannot reach the budget at a sensible cost (r=256 gives 7,680): that is its point.
#: AdaLoRA starts every matrix at rank 12 and prunes to an average of 8 (LoRA's budget at the
#: end; 12/8 = PEFT's defaults). QLoRA is LoRA r=8 on a base whose linear layers are stored in
#: NF4 (``lora_edu.quant``).
VARIANT_RUNS: dict[str, tuple[int, dict[str, Any]]] = {
    "lora": (8, {}),
    "rslora": (8, {"use_rslora": True}),
    "pissa": (8, {"init": "pissa"}),
    "dora": (8, {"variant": "dora"}),
    "lora-plus": (8, {"variant": "lora-plus"}),
    "lora-fa": (16, {"variant": "lora-fa"}),
    "vera": (256, {"variant": "vera"}),
    "adalora": (12, {"variant": "adalora"}),
    "qlora": (8, {"quantize": "nf4"}),
}
#: Three learning rates per variant, a factor 2–2.5 apart, around LoRA's 2e-3: lower for rsLoRA
#: (scaling α/√r is 2.8× α/r at r=8) and LoRA+ (B learns at 16× the rate), higher for VeRA
#: (only scaling vectors train; its paper uses 1e-2 and above). PiSSA starts on W's principal
#: directions, where large steps change the model most: its grid starts lower too. A grid whose
#: best rate was at an end was extended beyond that end, one rate at a time, while that held
#: (LoRA, DoRA downward; rsLoRA, LoRA+, QLoRA upward once; LoRA-FA, AdaLoRA upward twice): a
#: best value at the edge of a grid is not an optimum.
VARIANT_PILOT_LRS: dict[str, tuple[float, ...]] = {
    "lora": (5e-4, 1e-3, 2e-3, 5e-3),
    "rslora": (5e-4, 1e-3, 2e-3, 5e-3),
    "pissa": (5e-4, 1e-3, 2e-3),
    "dora": (5e-4, 1e-3, 2e-3, 5e-3),
    "lora-plus": (2e-4, 5e-4, 1e-3, 2e-3),
    "lora-fa": (1e-3, 2e-3, 5e-3, 1e-2, 2e-2),
    "vera": (5e-3, 1e-2, 2e-2),
    "adalora": (1e-3, 2e-3, 5e-3, 1e-2, 2e-2),
    "qlora": (1e-3, 2e-3, 5e-3, 1e-2),
}


def variant_name(record: dict[str, Any]) -> str:
    """Which entry of ``VARIANT_RUNS`` a LoRA record is: rsLoRA, PiSSA and QLoRA are settings of
    plain LoRA (``use_rslora``, ``init``, ``quantize``), the others a ``variant``."""
    if record.get("quantize"):
        return "qlora"
    if record.get("use_rslora"):
        return "rslora"
    if record.get("init") == "pissa":
        return "pissa"
    return record.get("variant") or "lora"


def _variant_runs(name: str, lr: float, seeds: Sequence[int]) -> list[dict[str, Any]]:
    r, settings = VARIANT_RUNS[name]
    return make_grid(["lora"], [r], [16], [QV], seeds, lr=lr, **settings)


def _variants_pilot() -> list[dict[str, Any]]:
    """Every variant at each pilot learning rate, seed 0, scored on held-out training sentences
    (task ``sst2-dev``), never on the validation set that the comparison reports."""
    lrs = by_profile(
        smoke={k: v[1:2] for k, v in VARIANT_PILOT_LRS.items()}, default=VARIANT_PILOT_LRS
    )
    return [
        run for name, rates in lrs.items() for lr in rates for run in _variant_runs(name, lr, [0])
    ]


def variants_chosen_lrs() -> dict[str, float]:
    """Each variant's learning rate: the one with the best held-out accuracy in the pilot
    (``sst2-dev``; a tie goes to the lower rate). Raises, naming the command, while the pilot is
    incomplete, except in ``smoke``, where a variant without pilot runs takes its middle rate."""
    middle = {name: rates[1] for name, rates in VARIANT_PILOT_LRS.items()}
    return _pilot_choice(
        "sst2-dev",
        "variants-pilot",
        variant_name,
        middle.__getitem__,
        keep=lambda rec: rec["method"] == "lora",
    )


#: Seeds of the variant comparison (each variant at its pilot learning rate).
VARIANT_SEEDS = (0, 1)


def _variants() -> list[dict[str, Any]]:
    """Every variant at its pilot learning rate, on the reported SST-2 validation set."""
    lrs = variants_chosen_lrs()
    seeds = by_profile(smoke=[0], default=list(VARIANT_SEEDS), full=[0, 1, 2])
    return [run for name in VARIANT_RUNS for run in _variant_runs(name, lrs[name], seeds)]


#: Seeds of the distillation study: LoRA r=8 on q, v from soft labels, against the same runs of
#: the SST-2 headline (hard labels, same budget, same learning rate).
DISTILL_SEEDS = (0, 1)


def _distillation() -> list[dict[str, Any]]:
    return _lora([8], targets=[QV], seeds=by_profile(smoke=[0], default=list(DISTILL_SEEDS)))


def _style_headline(task: str) -> Callable[[], list[dict[str, Any]]]:
    """The base denoiser as it is (its samples scored once), then LoRA and full fine-tuning at
    their pilot rates, three seeds each (``_headline``)."""
    return lambda: make_grid(["none"]) + _headline(task)()


def _compression() -> list[dict[str, Any]]:
    """The compressed teacher as it is, and healed by LoRA r=8 on q, v (one seed)."""
    return make_grid(["none"]) + _lora([8], targets=[QV])


#: task → preset name → the grid (at the active profile).
PRESETS: dict[str, dict[str, Callable[[], list[dict[str, Any]]]]] = {
    "sst2": {
        "headline": _headline("sst2"),
        "former-lr": _former_lr("sst2"),
        "ranks": _ranks("sst2"),
        "alphas": _alphas,
        "targets": _table5,
        "query-ranks": _query_ranks,
        "paper-adapters": _paper_adapters,
        "variants": _variants,
        # the distillation study's hard-label side, with per-sentence verdicts, in its own file
        "distillation-labels": _distillation,
    },
    "sst2-dev": {"variants-pilot": _variants_pilot, "lr-pilot": _lr_pilot("sst2")},
    "conll2003-dev": {"lr-pilot": _lr_pilot("conll2003")},
    "vit-dev": {"lr-pilot": _lr_pilot("vit")},
    "conll2003-sparse": {
        "defaults-check": _sparse_check,
        # the same runs in two tables: the rates before the pilot against the token defaults,
        # then the other suspects of a collapse
        "defaults-before-after": lambda: _sparse_check(_token_default_or_former),
        "defaults-suspects": lambda: _sparse_check(lambda e: not _token_default_or_former(e)),
    },
    **{name: {"headline": _headline(name)} for name in ("detection", "matching")},
    **{f"{name}-dev": {"lr-pilot": _lr_pilot(name)} for name in ("detection", "matching")},
    **{f"style-{style}": {"headline": _style_headline(f"style-{style}")} for style in STYLES},
    **{f"style-{style}-dev": {"lr-pilot": _lr_pilot(f"style-{style}")} for style in STYLES},
    "sst2-distill": {"distillation": _distillation},
    **{f"sst2-ffn{rank}": {"compression": _compression} for rank in COMPRESSION_RANKS},
    "conll2003": {
        "headline": _headline("conll2003"),
        "former-lr": _former_lr("conll2003"),
        "ranks": _ranks("conll2003"),
        "alphas": _conll_alphas,
    },
    "vit": {"headline": _headline("vit"), "former-lr": _former_lr("vit"), "ranks": _vit_ranks},
    "e2e-dev": {"lr-pilot": _e2e_lr_pilot},
    "e2e": {"table3": _e2e_table3},
}


def preset_grid(task: str, names: str | Sequence[str]) -> list[dict[str, Any]]:
    """The runs of one or more presets of ``task``, in order, each run once."""
    if task not in PRESETS:
        raise ValueError(f"no presets for task {task!r}; expected one of {', '.join(PRESETS)}")
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in PRESETS[task]]
    if unknown:
        raise ValueError(
            f"unknown preset(s) {unknown} for {task}; expected some of {', '.join(PRESETS[task])}"
        )
    return unique_runs(run for name in names for run in PRESETS[task][name]())


#: The fields a record must share with a grid entry to be that entry's run (the task, budget and
#: seed aside), each compared as run keys compare it.
_MATCH_FIELDS = (
    "method", "r", "alpha", "target_modules", "init", "use_rslora", "variant", "quantize",
    "head_lr", "warmup_ratio",
)  # fmt: skip


@functools.cache
def _default_lrs(task: str) -> dict[str, float]:
    """Each method's default learning rate on ``task`` (looked up once per task)."""
    from lora_edu.tasks import task_spec

    return task_spec(task).default_lr


def _in_grid(record: dict[str, Any], grid: Sequence[dict[str, Any]]) -> bool:
    """Whether ``record`` is one of the ``grid``'s runs (a run without a learning rate takes its
    method's default rate for the task; the budget is the profile's)."""

    defaults = _default_lrs(record["task"])
    for run in grid:
        lr = run.get("lr") if run.get("lr") is not None else defaults.get(run["method"])
        if all(key_value(run, k) == key_value(record, k) for k in _MATCH_FIELDS) and (
            run["method"] == "none" or _canonical(lr) == _canonical(record.get("lr"))
        ):
            return True
    return False


def preset_records(task: str, preset: str) -> list[dict[str, Any]]:
    """The runs of ``task``'s ``preset`` already in its results file at the active profile, in
    the file's order; nothing is trained (``run_presets`` trains what is missing). Empty while
    the preset's grid cannot be built yet (a learning-rate pilot still incomplete)."""
    from lora_edu.store import read_results

    try:
        grid = preset_grid(task, preset)
    except ValueError:
        return []
    return [
        rec
        for rec in read_results(results_file(task, preset))
        if rec.get("task") == task and _in_grid(rec, grid)
    ]


#: How the notebooks and the README name each arm of the pilot and the headline.
ARM_NAMES = {
    "lora": "LoRA r=8",
    "lora-all-linear": "LoRA r=8 (all linear)",
    "full": "full fine-tuning",
    "head": "the linear probe",
    "bitfit": "BitFit",
    "none": "the base model",
}


def arm_name(task: str, arm: str) -> str:
    """``ARM_NAMES[arm]``, except that on the tasks whose head is more than a linear layer on
    frozen features (detection's box-and-class head, matching's projections) ``head`` is "the
    head alone"."""
    if arm == "head" and task.split("-")[0] in ("detection", "matching"):
        return "the head alone"
    return ARM_NAMES[arm]


def headline_comparisons(
    records: Sequence[dict[str, Any]], task: str, *, samples: int = 2000
) -> list[dict[str, Any]]:
    """Each LoRA arm of ``task``'s headline against every other arm, by a paired bootstrap over
    the same evaluation examples and all seeds of both (``stats.compare_records``): one dict per
    pair with ``a``, ``b`` (arm names), the test's result and its plain ``verdict``. Only the
    headline's own runs count; pairs whose runs are not all there yet are left out."""
    from lora_edu.stats import compare_records, verdict

    grid = preset_grid(task, "headline")
    mine = [rec for rec in records if rec.get("task") == task and _in_grid(rec, grid)]
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for run in grid:
        match = [rec for rec in mine if rec["seed"] == run["seed"] and _in_grid(rec, [run])]
        by_arm.setdefault(pilot_arm(run), []).extend(match[:1])
    arms = [arm for arm in by_arm if len(by_arm[arm]) == sum(pilot_arm(r) == arm for r in grid)]
    rows = []
    for a in (arm for arm in arms if arm.startswith("lora")):
        for b in (arm for arm in arms if arm != a):
            result = compare_records(by_arm[a], by_arm[b], samples=samples)
            text = verdict(result, arm_name(task, a), arm_name(task, b))
            rows.append({"a": a, "b": b, **result, "verdict": text})
    return rows


def run_presets(
    task: str,
    names: str | Sequence[str],
    *,
    out: str | Path | None = None,
    keep_adapters: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the presets' grid with ``run_sweep`` (finished runs in the results file are re-used,
    so with the committed results nothing is trained) and return its records."""
    out = results_file(task, names) if out is None else Path(out)
    return run_sweep(
        task, preset_grid(task, names), out, keep_adapters=keep_adapters, progress=progress
    )


def sweep_command(task: str, names: str | Sequence[str]) -> str:
    """The shell command that runs these presets (at the profile in ``LORA_EDU_PROFILE``)."""
    names = [names] if isinstance(names, str) else list(names)
    return f"lora-edu sweep --task {task} --preset {','.join(names)}"


def select(records: Sequence[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    """The records whose fields equal the given values (``target_modules`` as a list or tuple),
    e.g. ``select(records, method="lora", r=8)``."""

    def norm(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    return [rec for rec in records if all(norm(rec.get(k)) == norm(v) for k, v in fields.items())]


def every_seed(
    chosen: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One configuration, one number: ``report.aggregate`` of every record in ``records`` whose
    configuration (all but the seed) is one of ``chosen``'s, so a view that picked some seeds of
    a configuration still shows all of them."""
    from lora_edu.grid import run_key
    from lora_edu.report import aggregate

    keys = {run_key({**rec, "seed": None}) for rec in chosen}
    return aggregate([rec for rec in records if run_key({**rec, "seed": None}) in keys])


def training_memory_mb(record: dict[str, Any], bytes_per_value: int = 4) -> float:
    """The memory that training holds for the model's state, from the run's parameter counts:
    every weight (fp32) plus a gradient and Adam's two moments for each trainable one. This is
    the part LoRA shrinks (the paper's VRAM saving); activations come on top and are about
    the same for every method. On CUDA, records also carry the measured ``peak_memory_mb``."""
    total = record.get("total_params") or 0
    trainable = record.get("trainable_params") or 0
    return bytes_per_value * (total + 3 * trainable) / 2**20
