"""SST-2 sentiment (MiniLM-L6; BERT-base at ``full``): the headline task ``sst2``, its pilot
twin ``sst2-dev``, and notebook 18's compression set-up built on the fully fine-tuned model
(``sst2_teacher``): ``sst2-ffn<rank>`` (its feed-forward weights truncated, then healed with
LoRA); beside them, their presets (the named sweeps of notebooks 06, 09, 12, 14 and 18:
headline, pilot, ranks, α, targets, variants, compression). Distillation has a plug-in of its
own (``tasks.distillation``). Imports ``tasks.common``, ``tasks.registry`` and ``presets``;
data, models and training on use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lora_edu.config import by_profile, profile
from lora_edu.defaults import ATTN_OUT, FORMER_LR, QV
from lora_edu.grid import make_grid
from lora_edu.presets import (
    HEADLINE_SEEDS,
    arm_runs,
    choice_of,
    former_lr_grid,
    head_rate_pilot_grid,
    headline_grid,
    lora_runs,
    lr_pilot_chosen,
    lr_pilot_grid,
    pilot_decisions,
    tied_rates_grid,
    variant_name,
)
from lora_edu.tasks.common import (
    DEV_SIZE,
    FULL_TEXT_MODEL,
    _cached_classifier,
    _dev_data,
    _text_task_data,
)
from lora_edu.tasks.registry import TaskSpec, register_pilot, register_presets, register_task


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


def _compressed_finetune(rank: int, start: str = "teacher") -> Callable[..., dict[str, Any]]:
    """A model with every feed-forward weight replaced by its rank-``rank`` SVD, then trained
    with the run's method. ``start="teacher"``: the fully fine-tuned SST-2 classifier
    (``sst2_teacher``), evaluated as it is (method ``none``) or healed (LoRA, its head training
    too; or full fine-tuning). ``start="pretrained"``: the pretrained MiniLM with a fresh head,
    compressed before it ever sees SST-2 and then fine-tuned (the control: compress first, adapt
    after)."""

    def finetune(train_ds, eval_ds, **kwargs):
        import copy

        from lora_edu.compression import compress_feed_forward
        from lora_edu.models import load_text_model
        from lora_edu.train import finetune_text_classifier

        if start == "teacher":
            tokenizer, teacher, _ = sst2_teacher(progress=False)
            base = copy.deepcopy(teacher).requires_grad_(True)
        else:
            name = kwargs.get("model", "minilm")
            tokenizer, base = load_text_model("sequence", 2, name, seed=kwargs.get("seed", 0))
        compress_feed_forward(base, rank)
        return finetune_text_classifier(train_ds, eval_ds, base=base, tokenizer=tokenizer, **kwargs)

    return finetune


#: The typo rates (per letter, ``lora_edu.typos``) at which task ``sst2-typos`` scores every
#: validation sentence besides its clean form; the typos are drawn with seed 0, the same for
#: every run.
TYPO_RATES = (0.05, 0.1, 0.2)


def _typos_finetune(train_ds, eval_ds, *, return_model: bool = False, **kwargs):
    """The SST-2 headline run, then its model scored on the validation sentences mistyped at
    each of ``TYPO_RATES``: per-sentence verdicts in ``typo_correct`` (rate → a "0"/"1" string,
    as ``eval_correct``), accuracies in ``typo_accuracy``."""
    from datasets import Dataset

    from lora_edu.train import finetune_text_classifier, text_classifier_verdicts
    from lora_edu.typos import typo_texts

    record, model = finetune_text_classifier(train_ds, eval_ds, return_model=True, **kwargs)
    record["typo_correct"], record["typo_accuracy"] = {}, {}
    for rate in TYPO_RATES:
        noisy = typo_texts(eval_ds["text"], rate)
        noisy_ds = Dataset.from_dict({"text": noisy, "label": eval_ds["label"]})
        right = text_classifier_verdicts(model, noisy_ds, model_name=kwargs.get("model", "minilm"))
        record["typo_correct"][f"{rate:g}"] = "".join("1" if r else "0" for r in right)
        record["typo_accuracy"][f"{rate:g}"] = float(right.mean())
    return (record, model) if return_model else record


def sst2_teacher(progress: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """The fully fine-tuned SST-2 classifier that notebook 18 compresses (and
    notebook 02 studies), trained once: (tokenizer, classifier in eval mode, its training
    record).

    It is the ``full`` run of the SST-2 headline at the active profile's budget (seed 0, full
    fine-tuning's former default learning rate, the same 4,000 training sentences in
    ``default``), so its accuracy is that run's. The weights are cached under
    ``LORA_EDU_CACHE`` (about 90 MB in float32) with the run's record beside them; later calls
    only read them."""
    from lora_edu.data import load_sst2

    b = _sst2_budget()
    train, eval_ = _text_task_data(load_sst2, _sst2_budget)()
    return _cached_classifier(
        f"sst2-teacher-{profile()}-n{len(train)}-e{b['epochs']}-s0", train, eval_,
        lr=FORMER_LR["full"], epochs=b["epochs"], batch_size=b["batch_size"],
        model=b.get("model", "minilm"), progress=progress,
    )  # fmt: skip


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
    "sst2-typos",
    _sst2_spec("sst2-typos", _text_task_data(_load_sst2, _sst2_budget), _typos_finetune),
)
for _rank in COMPRESSION_RANKS:
    for _start, _suffix in (("teacher", ""), ("pretrained", "-pretrained")):
        register_task(
            f"sst2-ffn{_rank}{_suffix}",
            _sst2_spec(
                f"sst2-ffn{_rank}{_suffix}",
                _text_task_data(_load_sst2, _sst2_budget),
                _compressed_finetune(_rank, _start),
            ),
        )


# ------------------------------------------------------------------ SST-2's presets

#: The learning-rate pilot of the SST-2 headline (``sst2-dev``): rates a factor 2–3 apart around
#: the one rate every task used before the pilot (``FORMER_LR``), two seeds each
#: (``SST2_PILOT_SEEDS``). The linear probe's and BitFit's grids were extended while their best
#: sat at an end. LoRA r = 8 on every linear layer (``lora-all-linear``) is an arm of its own.
SST2_PILOT_LRS: dict[str, tuple[float, ...]] = {
    "lora": (5e-4, 1e-3, 2e-3, 5e-3),
    "lora-all-linear": (5e-4, 1e-3, 2e-3, 5e-3),
    "full": (5e-5, 1e-4, 2e-4),
    "head": (1e-3, 3e-3, 1e-2, 3e-2),
    "bitfit": (3e-4, 1e-3, 3e-3, 1e-2),
}
SST2_PILOT_SEEDS = (0, 1)
#: LoRA's headline rate before the pilot had two seeds (its one-seed pilot's best; the two-seed
#: pilot ties it with the best, 2e-3): its headline runs are kept as what they are (preset
#: ``former-headline``) and compared in notebook 06.
SST2_FORMER_HEADLINE_LORA_LR = 1e-3

#: The ranks of the rank sweep (``default``/``full``), and the ranks at which α = r and α = 2r
#: run besides α = 16: the ends and the middle of the sweep.
SST2_RANKS = (1, 2, 4, 8, 16, 32, 64)
ALPHA_RANKS = (1, 8, 64)

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

#: The variant comparison on SST-2 at LoRA r=8 on q, v's budget (73,728 adapter parameters):
#: name → (rank, ``make_grid`` keywords). LoRA-FA trains B only, so twice the rank gives the same
#: budget; DoRA adds one magnitude per output feature (+4,608). VeRA trains r + d_out numbers per
#: layer and cannot reach the budget at a sensible cost (r=256 gives 7,680): that is its point.
#: AdaLoRA starts every matrix at rank 12 and prunes to an average of 8 (LoRA's budget at the
#: end; 12/8 = PEFT's defaults). QLoRA is LoRA r=8 on a base whose linear layers are stored in
#: NF4 (``lora_edu.quant``). ``presets.variant_name`` says which entry a record is.
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
#: Seeds of the variant comparison (each variant at its pilot learning rate).
VARIANT_SEEDS = (0, 1)


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
    return choice_of(
        "sst2-dev",
        "variants-pilot",
        variant_name,
        middle.__getitem__,
        keep=lambda rec: rec["method"] == "lora" and rec["target_modules"] == list(QV),
    )


def _variants() -> list[dict[str, Any]]:
    """Every variant at its pilot learning rate, on the reported SST-2 validation set."""
    lrs = variants_chosen_lrs()
    seeds = by_profile(smoke=[0], default=list(VARIANT_SEEDS), full=[0, 1, 2])
    return [run for name in VARIANT_RUNS for run in _variant_runs(name, lrs[name], seeds)]


def _alphas() -> list[dict[str, Any]]:
    """α = r (scaling 1) and α = 2r (scaling 2) at ``ALPHA_RANKS``; α = 16 is the ``ranks``
    preset."""
    ranks = by_profile(smoke=[1, 8], default=list(ALPHA_RANKS))
    return [run for r in ranks for run in lora_runs([r], alphas=[r, 2 * r])]


def _table5() -> list[dict[str, Any]]:
    sets = by_profile(smoke=TABLE5_TARGETS[-3::2], default=TABLE5_TARGETS)  # smoke: q,v; all-linear
    return [run for r, targets in sets for run in lora_runs([r], targets=[targets])]


#: Seeds of the compression study's trained arms (the compressed teacher as it is is one
#: deterministic evaluation).
COMPRESSION_SEEDS = (0, 1)


def _compression() -> list[dict[str, Any]]:
    """Task ``sst2-ffn<rank>``: the compressed teacher as it is, healed by the SST-2 headline's
    LoRA arm (r=8 on q, v) and by full fine-tuning, each at its SST-2 pilot rate,
    ``COMPRESSION_SEEDS`` each; the LoRA runs are the compress-first control's
    (``_compressed_first``), so the two orders differ in nothing else."""
    seeds = by_profile(smoke=[0], default=list(COMPRESSION_SEEDS))
    full_lr = lr_pilot_chosen("sst2")["full"]
    return make_grid(["none"]) + _compressed_first() + make_grid(["full"], seeds=seeds, lr=full_lr)


def _compressed_first() -> list[dict[str, Any]]:
    """Task ``sst2-ffn<rank>-pretrained``: the pretrained model compressed, then LoRA r=8 on q, v
    at the SST-2 headline's LoRA rate, ``COMPRESSION_SEEDS`` each: the headline's LoRA arm on a
    compressed base."""
    seeds = by_profile(smoke=[0], default=list(COMPRESSION_SEEDS))
    return arm_runs("sst2", "lora", lr_pilot_chosen("sst2")["lora"], seeds)


def _typos() -> list[dict[str, Any]]:
    """Task ``sst2-typos``: the headline's linear probe, LoRA r = 8 on q, v and full fine-tuning
    at their pilot rates, and full fine-tuning at every rate its pilot tied with the best (among
    them the rate whose clean accuracy comes nearest LoRA's: the comparison at matched clean
    accuracy), ``HEADLINE_SEEDS`` each, seed by seed: 15 runs in ``default``."""
    chosen, decisions = lr_pilot_chosen("sst2"), pilot_decisions("sst2")
    tied = decisions["full"].tied if "full" in decisions else ()  # smoke: nothing is tied
    arms = [("head", chosen["head"]), ("lora", chosen["lora"]), ("full", chosen["full"])]
    arms += [("full", lr) for lr in tied]
    seeds = by_profile(smoke=[0], default=list(HEADLINE_SEEDS))
    return [run for seed in seeds for arm, lr in arms for run in arm_runs("sst2", arm, lr, seed)]


register_pilot("sst2", SST2_PILOT_LRS, lora_targets=QV, seeds=SST2_PILOT_SEEDS)
register_presets(
    "sst2",
    {
        "headline": headline_grid("sst2"),
        "tied-rates": tied_rates_grid("sst2"),
        "former-headline": lambda: [
            run
            for seed in by_profile(smoke=[0], default=[0, 1, 2])
            for run in arm_runs("sst2", "lora", SST2_FORMER_HEADLINE_LORA_LR, seed)
        ],
        "former-lr": former_lr_grid("sst2"),
        "ranks": lambda: lora_runs(by_profile(smoke=[1, 8], default=list(SST2_RANKS))),
        "alphas": _alphas,
        "targets": _table5,
        # with r = 16 from the ``targets`` preset, Wq alone is seen at r = 1, 16, 64
        "query-ranks": lambda: lora_runs(
            by_profile(smoke=[8], default=[1, 64]), targets=[("query",)]
        ),
        "paper-adapters": lambda: [
            run for r, seed in PAPER_ADAPTERS for run in lora_runs([r], seeds=[seed])
        ],
        "variants": _variants,
    },
    files={"variants": "variants"},
)
register_presets(
    "sst2-dev",
    {
        "variants-pilot": _variants_pilot,
        "lr-pilot": lr_pilot_grid("sst2"),
        "head-rate-pilot": head_rate_pilot_grid("sst2"),
    },
)
register_presets("sst2-typos", {"typos": _typos})
for _rank in COMPRESSION_RANKS:
    register_presets(
        f"sst2-ffn{_rank}", {"compression": _compression}, files={"compression": "compression"}
    )
    register_presets(
        f"sst2-ffn{_rank}-pretrained",
        {"compression": _compressed_first},
        files={"compression": "compression"},
    )
