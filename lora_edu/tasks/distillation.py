"""Knowledge distillation on SST-2 (notebook 18 §3), set up so that distillation *can* help:
a teacher fine-tuned on about 54,000 labelled sentences teaches a LoRA student that has 4,000
labels of its own and 4,000 sentences nobody labelled for it (the classic *transfer set*).

    split = distillation_split()        # labelled, dev, transfer, teacher: disjoint texts
    _, teacher, record = sst2_transfer_teacher()

Tasks ``sst2-distill`` (scored on SST-2's validation set) and ``sst2-distill-dev`` (scored on
1,000 held-out training sentences, the ``sst2-dev`` ones: the pilot that chooses the temperature
and the soft/hard mix). A run's ``transfer_labels`` says what the student learns on the
transfer set (``TRANSFER_LABELS``); every arm takes the same 250 steps. Imports ``config``,
``defaults``, ``presets``, ``stats`` and ``tasks.common``/``registry``; data, models and
training on use.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lora_edu.config import by_profile, profile
from lora_edu.defaults import QV
from lora_edu.grid import make_grid
from lora_edu.presets import HEADLINE_SEEDS, lr_pilot_chosen, preset_grid, sweep_command
from lora_edu.tasks.common import DEV_SIZE, FULL_TEXT_MODEL, _cached_classifier
from lora_edu.tasks.registry import TaskSpec, register_presets, register_task

#: What the student learns on the transfer set, one arm each: ``none`` (its own labels alone,
#: seen four times over in the same number of steps), ``teacher-argmax`` (the teacher's answer
#: as a hard label), ``teacher-soft`` (the teacher's probabilities at temperature T, mixed with
#: the true label where one exists) and ``true`` (the transfer set's true labels: what labelling
#: it by hand would give, the ceiling).
TRANSFER_LABELS = ("none", "teacher-argmax", "teacher-soft", "true")
#: The fields of a distillation run beside the usual ones (``grid.KEY_FIELDS``).
DISTILL_FIELDS = ("transfer_labels", "distill_temperature", "distill_soft_weight")

#: The pilot's grid (task ``sst2-distill-dev``): temperature × the soft term's weight on the
#: labelled sentences (1: soft labels alone), ``DISTILL_PILOT_SEEDS`` each.
DISTILL_TEMPERATURES = (1.0, 2.0, 4.0)
DISTILL_SOFT_WEIGHTS = (0.5, 1.0)
DISTILL_PILOT_SEEDS = (0, 1)
#: The teacher's learning rate: the usual rate for fully fine-tuning a BERT-sized encoder for an
#: epoch of tens of thousands of sentences (Devlin et al. 2019 use 2e-5 to 5e-5), not piloted:
#: the teacher only has to be good, and its accuracy is reported beside the students'.
TEACHER_LR = 5e-5


def _sizes() -> dict[str, int | None]:
    return by_profile(
        smoke={"labelled": 64, "dev": DEV_SIZE["sst2"]["smoke"], "reserve": 64, "transfer": 64,
               "teacher": 256, "n_eval": 64},
        default={"labelled": 4000, "dev": DEV_SIZE["sst2"]["default"], "reserve": 12000,
                 "transfer": 4000, "teacher": None, "n_eval": None},
    )  # fmt: skip


def _budget() -> dict[str, Any]:
    """One pass over labelled + transfer sentences (8,000 in ``default``: 250 steps of 32, the
    SST-2 headline's number of steps)."""
    budget = {"epochs": 1, "batch_size": by_profile(smoke=16, default=32)}
    if profile() == "full":
        budget["model"] = FULL_TEXT_MODEL
    return budget


def distillation_split() -> dict[str, Any]:
    """SST-2's training set, shuffled with seed 0 (as every SST-2 task shuffles it), cut into parts
    with no sentence in two of them:

    - ``labelled``: the first 4,000, the SST-2 headline's own training sentences;
    - ``dev``: the next 1,000, the learning-rate pilot's held-out sentences (``sst2-dev``);
    - ``transfer``: the next 4,000, whose labels only the ``true`` arm reads: the first part of a
      *reserve* of 12,000 sentences that the teacher never sees (so a larger transfer set can be
      tried without training another teacher);
    - ``teacher``: every other sentence (the labelled ones included) whose text is neither in
      ``dev`` nor in the reserve (SST-2 repeats some short phrases), for training the teacher.

    ``smoke`` takes 64, 64, 64 (of a reserve of 64) and 256. Computed once per profile."""
    return dict(_split(profile()))


@functools.cache
def _split(active: str) -> dict[str, Any]:
    from lora_edu.data import load_sst2

    sizes = _sizes()
    shuffled = load_sst2()["train"].shuffle(seed=0)
    n_l, n_d, n_r = sizes["labelled"], sizes["dev"], sizes["reserve"]
    parts = {
        "labelled": shuffled.select(range(n_l)),
        "dev": shuffled.select(range(n_l, n_l + n_d)),
        "transfer": shuffled.select(range(n_l + n_d, n_l + n_d + sizes["transfer"])),
    }
    texts = list(shuffled["text"])
    held_out = set(texts[n_l : n_l + n_d + n_r])
    rest = itertools.chain(range(n_l), range(n_l + n_d + n_r, len(texts)))
    teacher = [i for i in rest if texts[i] not in held_out]
    if sizes["teacher"] is not None:
        teacher = teacher[: sizes["teacher"]]
    parts["teacher"] = shuffled.select(teacher)
    return parts


def _data(eval_split: str):
    def load():
        from datasets import concatenate_datasets

        from lora_edu.data import load_sst2

        split = distillation_split()
        labelled = split["labelled"].add_column("transfer", [False] * len(split["labelled"]))
        transfer = split["transfer"].add_column("transfer", [True] * len(split["transfer"]))
        train = concatenate_datasets([labelled, transfer])
        if eval_split == "dev":
            return train, split["dev"]
        validation = load_sst2()["validation"]
        n_eval = _sizes()["n_eval"]
        return train, validation if n_eval is None else validation.select(range(n_eval))

    return load


def sst2_transfer_teacher(progress: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """The teacher of the distillation study, trained once: MiniLM-L6 fully fine-tuned for one
    epoch on ``distillation_split()["teacher"]`` (about 54,000 sentences in ``default``) at
    ``TEACHER_LR``, seed 0, scored on SST-2's validation set. Returns (tokenizer, classifier in
    eval mode with gradients off, its training record). Cached under ``LORA_EDU_CACHE`` (about
    90 MB) with the record beside it; later calls only read them."""
    teacher_data = distillation_split()["teacher"]
    _, validation = _data("validation")()
    return _cached_classifier(
        f"sst2-transfer-teacher-{profile()}-n{len(teacher_data)}-s0", teacher_data, validation,
        lr=TEACHER_LR, epochs=1, batch_size=_budget()["batch_size"],
        model=_budget().get("model", "minilm"), progress=progress,
    )  # fmt: skip


def _finetune(
    train_ds,
    eval_ds,
    *,
    transfer_labels: str = "teacher-soft",
    distill_temperature: float | None = None,
    distill_soft_weight: float | None = None,
    **kwargs,
):
    """One arm of the study: the student's training set built from the labelled and transfer
    sentences as ``transfer_labels`` says, always ``len(train_ds)`` sentences (so every arm takes
    the same steps), then ``finetune_text_classifier``. The arms that read the teacher record
    it beside the student: ``teacher_n_train``, and its verdicts (``teacher_eval_correct``) and
    accuracy (``teacher_metric``) on the same evaluation sentences."""
    import torch
    from datasets import Dataset

    from lora_edu.train import finetune_text_classifier, text_classifier_logits

    if transfer_labels not in TRANSFER_LABELS:
        raise ValueError(
            f"transfer_labels must be one of {', '.join(TRANSFER_LABELS)}, got {transfer_labels!r}"
        )
    columns = (list(train_ds["text"]), list(train_ds["label"]), list(train_ds["transfer"]))
    rows = list(zip(*columns, strict=True))
    labelled = [(text, int(y)) for text, y, t in rows if not t]
    transfer = [(text, int(y)) for text, y, t in rows if t]
    teacher = teacher_record = None
    if transfer_labels == "none":  # its own sentences again and again, as many as the others see
        pairs = (labelled * -(-len(rows) // len(labelled)))[: len(rows)]
    elif transfer_labels == "true":
        pairs = labelled + transfer
    else:
        tokenizer, teacher, teacher_record = sst2_transfer_teacher(progress=False)
        teacher_logits = text_classifier_logits(teacher, eval_ds["text"], tokenizer)
        teacher_right = (teacher_logits.argmax(-1) == torch.tensor(eval_ds["label"])).tolist()
        texts = [text for text, _ in transfer]
        if transfer_labels == "teacher-argmax":
            answers = text_classifier_logits(teacher, texts, tokenizer).argmax(-1).tolist()
            teacher = None  # its answers as hard labels: the ordinary loss
        else:
            answers = [-1] * len(texts)  # no label: the soft term alone
        pairs = labelled + list(zip(texts, answers, strict=True))
    features = train_ds.features.copy()
    del features["transfer"]
    data = Dataset.from_dict(
        {"text": [text for text, _ in pairs], "label": [y for _, y in pairs]}, features=features
    )
    distill = {}
    if teacher is not None:
        if distill_temperature is None or distill_soft_weight is None:
            raise ValueError(
                "the teacher-soft arm needs distill_temperature and distill_soft_weight"
            )
        distill = {"teacher": teacher, "temperature": distill_temperature,
                   "soft_weight": distill_soft_weight}  # fmt: skip
    record = finetune_text_classifier(data, eval_ds, **distill, **kwargs)
    result = record[0] if isinstance(record, tuple) else record
    result["transfer_labels"] = transfer_labels
    if teacher_record is not None:  # the teacher, scored on the same sentences as the student
        result["teacher_n_train"] = teacher_record["n_train"]
        result["teacher_eval_correct"] = "".join("1" if ok else "0" for ok in teacher_right)
        result["teacher_metric"] = sum(teacher_right) / len(teacher_right)
    return record


def _spec(name: str, eval_split: str):
    def factory() -> TaskSpec:
        return TaskSpec(
            name, "accuracy", _data(eval_split), _finetune, _budget, run_fields=DISTILL_FIELDS
        )

    return factory


register_task("sst2-distill", _spec("sst2-distill", "validation"))
register_task("sst2-distill-dev", _spec("sst2-distill-dev", "dev"))


# ------------------------------------------------------------------ presets


def _student_lr() -> float:
    """The student's rate: the SST-2 pilot's LoRA rate (r = 8 on query, value)."""
    return lr_pilot_chosen("sst2")["lora"]


def distill_runs(
    transfer_labels: str,
    seeds: Sequence[int],
    temperature: float | None = None,
    soft_weight: float | None = None,
) -> list[dict[str, Any]]:
    """The runs of one arm: LoRA r = 8 on query, value at ``_student_lr()``, one per seed."""
    fields: dict[str, Any] = {"transfer_labels": transfer_labels}
    if transfer_labels == "teacher-soft":
        fields |= {"distill_temperature": temperature, "distill_soft_weight": soft_weight}
    return [{**run, **fields} for run in make_grid(["lora"], [8], [16], [QV], seeds,
                                                    lr=_student_lr())]  # fmt: skip


def _pilot() -> list[dict[str, Any]]:
    settings = by_profile(
        smoke=[(2.0, 0.5)],
        default=list(itertools.product(DISTILL_TEMPERATURES, DISTILL_SOFT_WEIGHTS)),
    )
    seeds = by_profile(smoke=[0], default=list(DISTILL_PILOT_SEEDS))
    return [run for T, w in settings for run in distill_runs("teacher-soft", seeds, T, w)]


@dataclass(frozen=True)
class DistillPilot:
    """What the pilot decided: each (temperature, soft weight)'s mean held-out accuracy over the
    seeds and its seeds' range; ``n_eval`` (every run scored on the same sentences); ``best``
    (highest mean; a tie of means goes to the lower T, then the lower weight); ``p_values``:
    every other setting against the best, paired bootstrap over sentences and seeds; ``tied``:
    those with p ≥ 0.05. ``at_edge``: the best T is the grid's smallest or largest."""

    means: dict[tuple[float, float], float]
    lows: dict[tuple[float, float], float]
    highs: dict[tuple[float, float], float]
    n_eval: int
    best: tuple[float, float]
    p_values: dict[tuple[float, float], float]
    tied: tuple[tuple[float, float], ...]
    at_edge: bool


def distill_pilot() -> DistillPilot:
    """The pilot's decision from the results of ``sst2-distill-dev`` (preset ``distill-pilot``).
    Raises, naming the command, while a run is missing, except in ``smoke``, where the runs
    there are decide."""
    from lora_edu.kept import results_file
    from lora_edu.stats import SIGNIFICANCE, compare_records
    from lora_edu.store import read_results

    def setting(rec: dict[str, Any]) -> tuple[float, float]:
        return float(rec["distill_temperature"]), float(rec["distill_soft_weight"])

    grid = preset_grid("sst2-distill-dev", "distill-pilot")
    wanted = {(setting(run), run["seed"]) for run in grid}
    path = results_file("sst2-distill-dev", "distill-pilot")
    records = [rec for rec in read_results(path)
               if rec.get("transfer_labels") == "teacher-soft"
               and float(rec["lr"]) == _student_lr() and (setting(rec), rec["seed"]) in wanted]  # fmt: skip
    missing = wanted - {(setting(rec), rec["seed"]) for rec in records}
    if missing and (profile() != "smoke" or not records):
        raise ValueError(
            f"the distillation pilot is incomplete in {path} ({len(missing)} runs missing); run "
            f"`{sweep_command('sst2-distill-dev', 'distill-pilot')}` first"
        )
    by_setting: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for rec in records:
        by_setting.setdefault(setting(rec), []).append(rec)
    sizes = {len(rec["eval_correct"]) for rec in records}
    if len(sizes) != 1:
        raise ValueError(f"the pilot's runs were scored on different numbers of sentences {sizes}")
    means = {k: sum(r["metric"] for r in v) / len(v) for k, v in by_setting.items()}
    best = max(means, key=lambda k: (means[k], -k[0], -k[1]))
    p_values = {k: compare_records(by_setting[best], v)["p_value"]
                for k, v in by_setting.items() if k != best}  # fmt: skip
    temperatures = sorted({k[0] for k in means})
    return DistillPilot(
        means=means,
        lows={k: min(r["metric"] for r in v) for k, v in by_setting.items()},
        highs={k: max(r["metric"] for r in v) for k, v in by_setting.items()},
        n_eval=sizes.pop(),
        best=best,
        p_values=p_values,
        tied=tuple(k for k, p in p_values.items() if p >= SIGNIFICANCE),
        at_edge=len(temperatures) > 1 and best[0] in (temperatures[0], temperatures[-1]),
    )


def _seeds() -> list[int]:
    return by_profile(smoke=[0], default=list(HEADLINE_SEEDS))


def _decided() -> DistillPilot | None:
    """``distill_pilot()``; in ``smoke`` without pilot runs, None (the smoke setting stands)."""
    try:
        return distill_pilot()
    except ValueError:
        if profile() == "smoke":
            return None
        raise


def _headline() -> list[dict[str, Any]]:
    """Every arm, ``HEADLINE_SEEDS`` each, the soft arm at the pilot's best setting."""
    decided = _decided()
    T, w = decided.best if decided else (2.0, 0.5)
    return [
        run
        for arm in TRANSFER_LABELS
        for run in distill_runs(arm, _seeds(), *((T, w) if arm == "teacher-soft" else ()))
    ]


def _tied() -> list[dict[str, Any]]:
    """The soft arm at every setting the pilot could not tell apart from the best."""
    decided = _decided()
    return [run for T, w in (decided.tied if decided else ())
            for run in distill_runs("teacher-soft", _seeds(), T, w)]  # fmt: skip


register_presets(
    "sst2-distill-dev", {"distill-pilot": _pilot}, files={"distill-pilot": "distillation-pilot"}
)
register_presets(
    "sst2-distill",
    {"distillation": _headline, "distillation-tied": _tied},
    files={"distillation": "distillation", "distillation-tied": "distillation-tied"},
)
