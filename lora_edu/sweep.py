"""Resumable sweeps: a grid of fine-tuning runs → one JSON line per finished run.

    grid = make_grid(methods=["lora", "full"], ranks=[4, 8], alphas=[16], seeds=[0])
    records = run_sweep("sst2", grid, "data/results/sst2.jsonl")

Every finished run appends one line to the results file, written in one piece, on a line of its
own and flushed, under a file lock, so an interrupted sweep loses at most the run in progress and
two writers never mix their lines. Running the same sweep again skips every run already in the file
(matched on its configuration, see ``run_key``) and continues where it stopped. A record cut off
mid-write is reported, moved to ``<file>.corrupt`` and ignored; any other broken line is an
error, so results are never dropped silently.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_edu.config import by_profile, profile
from lora_edu.defaults import FORMER_LR
from lora_edu.styles import STYLE_METRICS, STYLES

if TYPE_CHECKING:  # torch is imported only when a sweep runs
    from lora_edu.lora import LoRAConfig

#: The fields that identify a run: two records with equal values here are the same run.
KEY_FIELDS = (
    "task",
    "method",
    "r",
    "alpha",
    "target_modules",
    "init",
    "use_rslora",
    "variant",  # absent from records older than the variants: read as None, plain LoRA
    "quantize",  # absent from records older than QLoRA: read as None, a full-precision base
    "seed",
    "n_train",
    "epochs",
    "lr",
    "head_lr",  # absent unless the new head trained at its own rate beside the method
    "warmup_ratio",  # absent from a grid: the loop's default (``LOOP_DEFAULTS``)
)
#: A key field missing from a run (or None) means the training loop's default, so a grid entry
#: that leaves it out and a record that writes the default down are the same run.
LOOP_DEFAULTS = {"warmup_ratio": 0.06}

#: Methods that adapt no low-rank update: rank, alpha and targets do not apply to them
#: (``none``: no training at all, the zero-shot baseline of a generative task).
NON_LORA_METHODS = ("full", "head", "bitfit", "none")
METHODS = ("lora", *NON_LORA_METHODS)


# ---------------------------------------------------------------------------------- the grid


def make_grid(
    methods: Sequence[str] = ("lora",),
    ranks: Sequence[int] = (8,),
    alphas: Sequence[float | None] = (16,),
    target_sets: Sequence[Sequence[str]] = (("query", "value"),),
    seeds: Sequence[int] = (0,),
    *,
    init: str = "kaiming",
    use_rslora: bool = False,
    lr: float | None = None,
    variant: str | None = None,
    quantize: str | None = None,
    head_lr: float | None = None,
    warmup_ratio: float | None = None,
) -> list[dict[str, Any]]:
    """All run configurations of methods × ranks × alphas × target sets × seeds.

    LoRA runs take every combination; ``full``, ``head`` and ``bitfit`` ignore rank, alpha and
    targets, so they appear once per seed (with ``r``, ``alpha``, ``target_modules`` set to None).
    An alpha of None means ``alpha = r`` (scaling 1). ``lr=None`` lets each method use its
    default learning rate. ``variant`` (e.g. ``"dora"``) and ``quantize`` (``"nf4"``: QLoRA, the
    frozen base in 4 bits) apply to the LoRA runs. ``head_lr`` (the new head's own learning rate
    beside LoRA, BitFit or full fine-tuning) and ``warmup_ratio`` are the loop's settings (see
    ``train.fit``); left at None they are not written, and the loop's defaults apply.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {', '.join(METHODS)}")
    if variant is not None:
        from lora_edu.variants import VARIANTS

        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    bad_ranks = [r for r in ranks if isinstance(r, bool) or r != int(r) or int(r) < 1]
    if bad_ranks:
        raise ValueError(f"ranks must be whole numbers ≥ 1, got {bad_ranks}")
    # A string is one target name (or "all-linear"), never a sequence of one-letter names.
    target_sets = [[t] if isinstance(t, str) else list(t) for t in target_sets]
    runs: list[dict[str, Any]] = []
    for method in methods:
        if method == "lora":
            combos = itertools.product(ranks, alphas, target_sets)
            for r, alpha, targets in combos:
                for seed in seeds:
                    runs.append(
                        {
                            "method": "lora",
                            "r": int(r),
                            "alpha": float(r if alpha is None else alpha),
                            "target_modules": list(targets),
                            "init": init,
                            "use_rslora": use_rslora,
                            "variant": variant,
                            "quantize": quantize,
                            "seed": int(seed),
                            "lr": lr,
                        }
                    )
        else:
            for seed in seeds:
                runs.append(
                    {
                        "method": method,
                        "r": None,
                        "alpha": None,
                        "target_modules": None,
                        "init": None,
                        "use_rslora": None,
                        "variant": None,
                        "quantize": None,
                        "seed": int(seed),
                        "lr": lr,
                    }
                )
    loop = {
        k: v for k, v in (("head_lr", head_lr), ("warmup_ratio", warmup_ratio)) if v is not None
    }
    return [{**run, **loop} for run in runs]


def _canonical(value: Any) -> Any:
    # 16 and 16.0 are one alpha (and one learning rate): numbers compare as floats.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def run_key(record: dict[str, Any]) -> str:
    """A canonical string for the identifying fields of a run (``KEY_FIELDS``); numbers are
    compared by value, so ``alpha=16`` and ``alpha=16.0`` are the same run."""

    return json.dumps({k: key_value(record, k) for k in KEY_FIELDS}, sort_keys=True)


def key_value(record: dict[str, Any], field_name: str) -> Any:
    """One identifying field of a run as runs are compared: a number by value, and a loop
    setting left out (or None) as the loop's default (``LOOP_DEFAULTS``)."""
    value = record.get(field_name)
    return _canonical(LOOP_DEFAULTS.get(field_name) if value is None else value)


def unique_runs(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` in order with repeats (equal ``run_key``) dropped: the first one is kept."""
    unique: dict[str, dict[str, Any]] = {}
    for run in runs:
        unique.setdefault(run_key(run), run)
    return list(unique.values())


# ---------------------------------------------------------------------------------- the file


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (POSIX ``flock``) for the block, so
    that appends and repairs by several processes never interleave. Where ``fcntl`` does not
    exist (Windows) the block runs unlocked: there, run one writer per file."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


#: A token a writer may stop inside: a number (``16.``, ``-``, ``1e``) or a literal (``fal``).
_PARTIAL_TOKEN = re.compile(r"(?:[-+.0-9eE]+|[a-z]+)$")


def _cut_off(line: str, err: json.JSONDecodeError) -> bool:
    """Whether a line that does not parse is the start of a record that a writer stopped
    writing: it opens an object, and the parser ran out of text, inside a string or (once a
    half-written number or literal at its end is set aside) at the end of the line."""
    if not line.lstrip().startswith("{"):
        return False
    if err.msg.startswith("Unterminated string") or err.pos >= len(line.rstrip()):
        return True
    head = _PARTIAL_TOKEN.sub("", line.rstrip())
    try:
        json.loads(head)
    except json.JSONDecodeError as inner:
        return inner.pos >= len(head.rstrip())
    return False


def _parse(path: Path, text: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of a results file's ``text`` and the indices of cut-off records. A record is
    cut off when a writer crashed mid-line: the last line of the file without its newline that
    does not parse (``append_record`` ends every record with one), or a line before it that
    stops where a record could go on (since ``append_record`` starts every record on a new line,
    later records follow intact). Any other broken line, or valid JSON that is not an object,
    raises a ValueError naming it."""
    lines = text.splitlines()
    unfinished = len(lines) - 1 if text and not text.endswith("\n") else None
    records: list[dict[str, Any]] = []
    cut: list[int] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == unfinished or _cut_off(line, err):
                cut.append(i)  # a truncated record
                continue
            raise ValueError(
                f"{path}:{i + 1}: not a JSON record ({err.msg}); it is not a record cut off "
                "by an interruption either, so this file was edited or damaged: fix or remove "
                "that line by hand (the other records are intact)"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}:{i + 1}: a JSON {type(record).__name__}, not a record (a JSON object "
                "with the run's fields); fix or remove that line by hand"
            )
        records.append(record)
    return records, cut


def read_results(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a results file (an empty list when it does not exist).

    A record cut off mid-write (a run interrupted while writing) is reported with a warning and
    ignored; with ``repair=True`` it is also moved to ``<path>.corrupt``, under the file's lock
    and re-reading the file first, so records another process appended meanwhile are kept. Any
    other broken line raises a ValueError naming the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    records, cut = _parse(path, path.read_text(encoding="utf-8"))
    if not cut:
        return records
    where = ", ".join(f"{path}:{i + 1}" for i in cut)
    warnings.warn(
        f"{where}: not a complete JSON record (a run interrupted while writing?); ignoring it"
        f"{' and moving it to ' + path.name + '.corrupt' if repair else ''}",
        stacklevel=2,
    )
    if repair:
        with _locked(path):
            text = path.read_text(encoding="utf-8")
            records, cut = _parse(path, text)
            lines = text.splitlines()
            if cut:
                with open(f"{path}.corrupt", "a", encoding="utf-8") as f:
                    f.writelines(lines[i] + "\n" for i in cut)
                kept = "".join(line + "\n" for i, line in enumerate(lines) if i not in cut)
                partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                partial.write_text(kept, encoding="utf-8")
                os.replace(partial, path)  # readers see the old file or the new one, never half
    return records


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as one JSON line, flushed to disk before returning. The line always
    starts on a line of its own (a newline is added first if a crashed writer left the last line
    unfinished), and the append holds the file's lock (see ``read_results``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    with _locked(path), path.open("ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------- the tasks


@dataclass(frozen=True)
class TaskSpec:
    """How to run one task: where its data comes from, which fine-tuning function, what budget."""

    name: str
    metric_name: str
    load: Callable[[], tuple[Any, Any]]  # () → (train, eval) datasets at the profile's budget
    finetune: Callable[..., dict[str, Any]]
    budget: Callable[[], dict[str, Any]]  # the profile's n_train, n_eval, epochs, batch_size
    extra: dict[str, Any] = field(default_factory=dict)
    # a run without a learning rate: the rate every sweep used before the pilot
    default_lr: dict[str, float] = field(default_factory=lambda: dict(FORMER_LR))


def _subset(dataset, n: int | None, seed: int):
    if n is None or n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(n))


def _text_task_data(loader: Callable[[], Any], budget: Callable[[], dict]):
    def load():
        ds = loader()
        b = budget()
        # The training subset is drawn with a fixed seed (0), not the run's seed, so runs with
        # different seeds differ in initialisation and order only, not in which examples they see.
        return _subset(ds["train"], b["n_train"], 0), _subset(ds["validation"], b["n_eval"], 0)

    return load


#: Training examples held out of each task's training set for choosing learning rates (the
#: ``-dev`` tasks: ``sst2-dev``, ``conll2003-dev``, ``vit-dev``; ``matching-dev`` holds out the
#: ViT task's).
DEV_SIZE = {
    "sst2": {"smoke": 64, "default": 1000, "full": 1000},
    "conll2003": {"smoke": 48, "default": 1000, "full": 1000},
    "vit": {"smoke": 64, "default": 288, "full": 288},
}


def _dev_data(
    loader: Callable[[], Any], budget: Callable[[], dict], dev_size: dict[str, int]
) -> Callable[[], tuple[Any, Any]]:
    """A task's data for choosing learning rates: the same training subset as the task itself
    (the first ``n_train`` of the training set shuffled with seed 0), scored on the next
    ``dev_size`` training examples, never on the evaluation set that the task's results report.
    Where the task trains on the whole training set (``vit``; ``full``), those examples are
    taken out of it, so the pilot trains on slightly fewer."""

    def load():
        b, n_dev = budget(), dev_size[profile()]
        shuffled = loader()["train"].shuffle(seed=0)
        n_train = b["n_train"] if b["n_train"] is not None else len(shuffled) - n_dev
        return shuffled.select(range(n_train)), shuffled.select(range(n_train, n_train + n_dev))

    return load


#: The sparse NER check (task ``conll2003-sparse``): a small named-entity set like one a user
#: brings, on which the ``finetune_token_classifier`` defaults are checked. Sentences are drawn
#: from CoNLL-2003's training set beyond the examples the other CoNLL tasks use, so that
#: ``o_share`` of the tags are ``O`` (CoNLL-2003 itself: 83 %).
SPARSE_NER = {"skip": 4000, "o_share": 0.92}


def _sparse_ner_budget() -> dict[str, Any]:
    return by_profile(
        smoke={"n_train": 48, "n_eval": 48, "epochs": 1, "batch_size": 16},
        default={"n_train": 1900, "n_eval": 1000, "epochs": 3, "batch_size": 32},
    )


def sparse_selection(tags: Sequence[Sequence[int]], n: int, o_share: float) -> list[int]:
    """Indices of ``n`` sentences (``tags``: each sentence's tag ids, 0 = ``O``) taken in order,
    skipping a sentence with entities whenever it would bring the share of ``O`` tags chosen so
    far below ``o_share``; sentences without entities are always taken."""
    chosen: list[int] = []
    outside = total = 0
    for i, sentence in enumerate(tags):
        o = sum(t == 0 for t in sentence)
        if o < len(sentence) and (outside + o) < o_share * (total + len(sentence)):
            continue
        chosen.append(i)
        outside, total = outside + o, total + len(sentence)
        if len(chosen) == n:
            return chosen
    raise ValueError(f"only {len(chosen)} sentences fit an O share of {o_share}; {n} wanted")


def _sparse_ner_data() -> tuple[Any, Any]:
    from lora_edu.data import load_conll2003

    b = _sparse_ner_budget()
    pool = load_conll2003()["train"].shuffle(seed=0)
    pool = pool.select(range(SPARSE_NER["skip"], len(pool)))
    picked = sparse_selection(pool["ner_tags"], b["n_train"] + b["n_eval"], SPARSE_NER["o_share"])
    return pool.select(picked[: b["n_train"]]), pool.select(picked[b["n_train"] :])


#: The encoder of the text tasks at the ``full`` profile: base size (110 M parameters, 12 layers
#: of width 768), a BERT like MiniLM, so the same layer names (query, key, value, dense) and code
#: path; read from the Hub (or its cache) on first use. Smoke and default use the offline MiniLM.
FULL_TEXT_MODEL = "google-bert/bert-base-uncased"


def _sst2_budget() -> dict[str, Any]:
    return by_profile(
        smoke={"n_train": 64, "n_eval": 64, "epochs": 1, "batch_size": 16},
        default={"n_train": 4000, "n_eval": None, "epochs": 2, "batch_size": 32},
        full={"n_train": None, "n_eval": None, "epochs": 3, "batch_size": 32,
              "model": FULL_TEXT_MODEL},
    )  # fmt: skip


def _conll_budget() -> dict[str, Any]:
    return by_profile(
        smoke={"n_train": 48, "n_eval": 48, "epochs": 1, "batch_size": 16},
        default={"n_train": 3000, "n_eval": 1000, "epochs": 3, "batch_size": 32},
        full={"n_train": None, "n_eval": None, "epochs": 5, "batch_size": 32,
              "model": FULL_TEXT_MODEL},
    )  # fmt: skip


def _vit_budget() -> dict[str, Any]:
    # pretrain_*: the source-task training of TinyViT on MNIST (cached after the first call).
    return by_profile(
        smoke={"n_train": 128, "n_eval": 64, "epochs": 1, "batch_size": 64,
               "pretrain_epochs": 1, "pretrain_max_train": 512},
        default={"n_train": None, "n_eval": None, "epochs": 20, "batch_size": 64,
                 "pretrain_epochs": 10, "pretrain_max_train": None},
        full={"n_train": None, "n_eval": None, "epochs": 40, "batch_size": 64,
              "pretrain_epochs": 30, "pretrain_max_train": None},
    )  # fmt: skip


def _digits_data(budget: Callable[[], dict]) -> Callable[[], tuple[Any, Any]]:
    """The shifted target task: scikit-learn's 8×8 digits (other writers, other resolution),
    upsampled by ``finetune_vit`` (or ``finetune_matcher``) to the 28×28 input of the
    MNIST-pretrained TinyViT; ``budget``'s ``n_train`` of the training split, ``n_eval`` of the
    test split."""

    def load():
        from lora_edu.data import load_digits

        ds, b = load_digits(seed=0), budget()
        return _subset(ds["train"], b["n_train"], 0), _subset(ds["test"], b["n_eval"], 0)

    return load


def _vit_finetune(train_ds, eval_ds, **kwargs):
    from lora_edu.models import pretrained_vit
    from lora_edu.train import finetune_vit

    b = _vit_budget()
    base = pretrained_vit(
        epochs=b["pretrain_epochs"], max_train=b["pretrain_max_train"], progress=False
    )
    return finetune_vit(train_ds, eval_ds, base=base, **kwargs)


def _e2e_budget() -> dict[str, Any]:
    # n_eval: test (or validation) pairs for the held-out loss; n_generate: MRs decoded for BLEU
    # (None: every MR of the split). One LoRA step of batch 8 takes about 3 s on a 2-core CPU.
    return by_profile(
        smoke={"n_train": 16, "n_eval": 16, "n_generate": 8, "epochs": 1, "batch_size": 8,
               "max_new_tokens": 16},
        default={"n_train": 480, "n_eval": 200, "n_generate": None, "epochs": 1, "batch_size": 8,
                 "max_new_tokens": 48},
        full={"n_train": None, "n_eval": None, "n_generate": None, "epochs": 5, "batch_size": 8,
              "max_new_tokens": 64},
    )  # fmt: skip


def _e2e_data(eval_split: str) -> Callable[[], tuple[Any, Any]]:
    """E2E: train on the training MRs of the official validation file; evaluate on
    ``eval_split`` ("test": the official test file, reported; "validation": held-out MRs of the
    validation file, for choosing learning rates). The eval side is a pair (loss pairs, one row
    per MR to decode)."""

    def load():
        from lora_edu.data import load_e2e
        from lora_edu.generate import e2e_examples

        ds, b = load_e2e(), _e2e_budget()
        train = e2e_examples(_subset(ds["train"], b["n_train"], 0))
        loss_eval = e2e_examples(_subset(ds[eval_split], b["n_eval"], 0))
        mrs = e2e_examples(ds[eval_split], unique=True)
        if b["n_generate"] is not None:
            mrs = mrs.select(range(min(b["n_generate"], len(mrs))))
        return train, (loss_eval, mrs)

    return load


def _e2e_finetune(train_ds, eval_pair, **kwargs):
    from lora_edu.train import finetune_causal_lm

    loss_eval, mrs = eval_pair
    b = _e2e_budget()
    return finetune_causal_lm(
        train_ds, loss_eval, generation_eval=mrs, max_new_tokens=b["max_new_tokens"], **kwargs
    )


#: The ranks of the feed-forward compression study (``sst2-ffn<rank>``); MiniLM's feed-forward
#: layers are 384 × 1536, so a rank below 307 stores fewer numbers.
COMPRESSION_RANKS = (256, 128, 64, 32)


def _distill_finetune(train_ds, eval_ds, **kwargs):
    """SST-2 learnt from the fully fine-tuned teacher's soft labels (``lora_edu.teacher``)."""
    from lora_edu.teacher import sst2_teacher
    from lora_edu.train import finetune_text_classifier

    _, teacher, _ = sst2_teacher(progress=False)
    return finetune_text_classifier(train_ds, eval_ds, teacher=teacher, **kwargs)


def _compressed_finetune(rank: int) -> Callable[..., dict[str, Any]]:
    """The teacher with every feed-forward weight replaced by its rank-``rank`` SVD, evaluated
    as it is (method ``none``) or healed with LoRA (its head trains too)."""

    def finetune(train_ds, eval_ds, **kwargs):
        import copy

        from lora_edu.compression import compress_feed_forward
        from lora_edu.teacher import sst2_teacher
        from lora_edu.train import finetune_text_classifier

        tokenizer, teacher, _ = sst2_teacher(progress=False)
        base = copy.deepcopy(teacher).requires_grad_(True)
        compress_feed_forward(base, rank)
        return finetune_text_classifier(train_ds, eval_ds, base=base, tokenizer=tokenizer, **kwargs)

    return finetune


# ------------------------------------------------------------- detection and matching (notebook 17)


def _detection_budget() -> dict[str, Any]:
    """Detection: canvases for training, held out of training (the ``-dev`` task's evaluation, for
    choosing learning rates) and for evaluation (from MNIST's test part); the image tower is the
    ViT task's MNIST-pretrained TinyViT."""
    vit = _vit_budget()
    return by_profile(
        smoke={"n_train": 64, "n_dev": 32, "n_eval": 32, "epochs": 1, "batch_size": 32},
        default={"n_train": 4000, "n_dev": 1000, "n_eval": 1000, "epochs": 10,
                 "batch_size": 64},
    ) | {k: vit[k] for k in ("pretrain_epochs", "pretrain_max_train")}  # fmt: skip


def _mnist_parts(dev: bool) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """(training images, labels) and the evaluation pair: for ``dev`` the next ``n_dev`` training
    images, else the first ``n_eval`` of MNIST's test part."""
    from lora_edu.data import load_mnist
    from lora_edu.models import image_arrays

    b = _detection_budget()
    ds = load_mnist(seed=0)
    train_images, train_labels = image_arrays(ds["train"])
    if dev:
        n, k = b["n_train"], b["n_dev"]
        return (train_images[:n], train_labels[:n]), (
            train_images[n : n + k],
            train_labels[n : n + k],
        )
    test_images, test_labels = image_arrays(ds["test"])
    return (train_images[: b["n_train"]], train_labels[: b["n_train"]]), (
        test_images[: b["n_eval"]],
        test_labels[: b["n_eval"]],
    )


def _detection_data(dev: bool) -> Callable[[], tuple[Any, Any]]:
    def load():
        from lora_edu.detection import place_digits

        (train_x, train_y), (eval_x, eval_y) = _mnist_parts(dev)
        b = _detection_budget()
        n_eval = b["n_dev"] if dev else b["n_eval"]
        return (
            place_digits(train_x, train_y, b["n_train"], seed=0),
            place_digits(eval_x, eval_y, n_eval, seed=1),
        )

    return load


def _pretrained_image_tower() -> Any:
    from lora_edu.models import pretrained_vit

    b = _detection_budget()
    return pretrained_vit(
        epochs=b["pretrain_epochs"], max_train=b["pretrain_max_train"], progress=False
    )


def _detection_finetune(train_ds, eval_ds, **kwargs):
    from lora_edu.detection import finetune_detector

    return finetune_detector(train_ds, eval_ds, base=_pretrained_image_tower(), **kwargs)


def _matching_budget() -> dict[str, Any]:
    """Image–text matching on the ViT task's shifted images (scikit-learn's 8×8 digits, other
    writers, upsampled to the MNIST-pretrained image tower's 28×28): on MNIST itself the
    pretrained tower already separates the digits, and in a first trial LoRA (four learning
    rates) and full fine-tuning matched all 1,000 held-out images zero-shot, leaving nothing to
    compare."""
    vit = _vit_budget()
    return by_profile(
        smoke={"n_train": 64, "n_eval": 32, "epochs": 1, "batch_size": 32},
        default={"n_train": None, "n_eval": None, "epochs": 10, "batch_size": 64},
        full={"n_train": None, "n_eval": None, "epochs": 20, "batch_size": 64},
    ) | {k: vit[k] for k in ("pretrain_epochs", "pretrain_max_train")}  # fmt: skip


def _matching_finetune(train_ds, eval_ds, **kwargs):
    from lora_edu.matching import finetune_matcher

    return finetune_matcher(train_ds, eval_ds, image_base=_pretrained_image_tower(), **kwargs)


# ------------------------------------------------------------- style adapters (notebook 16)


def _style_budget() -> dict[str, Any]:
    """The style adapters of the digit denoiser: style images made from MNIST's held-out part,
    the samples scored, and the denoiser's own pretraining (``diffusion.pretrained_denoiser``;
    at ``default``, 8,000 images x 30 epochs = 3,750 steps took 1,085 s on a 2-core CPU, final
    loss 0.019)."""
    return by_profile(
        smoke={"n_train": 64, "epochs": 1, "batch_size": 32, "n_samples": 8, "sample_steps": 5,
               "pretrain_epochs": 1, "pretrain_max_train": 256},
        default={"n_train": 1000, "epochs": 20, "batch_size": 64, "n_samples": 256,
                 "sample_steps": 50, "pretrain_epochs": 30, "pretrain_max_train": None},
    )  # fmt: skip


def _style_data(style: str, dev: bool) -> Callable[[], tuple[Any, Any]]:
    """A style task's training images and its sampling plan: the reported task samples from the
    noise of seed 0, its ``-dev`` twin (for choosing learning rates) from seed 1."""

    def load():
        from lora_edu.data import load_mnist
        from lora_edu.diffusion import style_images
        from lora_edu.models import image_arrays

        b = _style_budget()
        images, labels = image_arrays(load_mnist(seed=0)["test"])
        train = style_images(style, images, labels)[: b["n_train"]]
        return train, {"n_samples": b["n_samples"], "steps": b["sample_steps"], "seed": int(dev)}

    return load


def _style_finetune(style: str) -> Callable[..., dict[str, Any]]:
    def finetune(train_ds, eval_spec, **kwargs):
        from lora_edu.diffusion import finetune_denoiser, style_budget_denoiser

        base = style_budget_denoiser()
        classifier = _pretrained_image_tower() if style == "sevens" else None
        return finetune_denoiser(
            train_ds, eval_spec, base=base, style=style, classifier=classifier, **kwargs
        )

    return finetune


def task_spec(name: str) -> TaskSpec:
    """The ``TaskSpec`` of ``sst2``, ``sst2-dev`` (the same training, accuracy on held-out
    training sentences: for choosing learning rates; likewise ``conll2003-dev`` and
    ``vit-dev``), ``conll2003-sparse`` (a small NER set with 92 % ``O`` tags, ``SPARSE_NER``: the
    check of the token-classification defaults), ``sst2-distill`` (the same, learnt from a
    teacher's soft labels), ``sst2-ffn<rank>`` (the fully fine-tuned model with its feed-forward
    weights truncated to that rank, ``COMPRESSION_RANKS``), ``conll2003``, ``vit`` (MNIST-pretrained TinyViT adapted
    to scikit-learn's digits), ``e2e`` (SmolLM2 on E2E NLG, BLEU on the test MRs) or
    ``e2e-dev`` (the same training, BLEU on held-out validation MRs: for choosing learning
    rates); imports the training code on demand."""
    from lora_edu import data, train

    specs = {
        "sst2": TaskSpec(
            "sst2",
            "accuracy",
            _text_task_data(data.load_sst2, _sst2_budget),
            train.finetune_text_classifier,
            _sst2_budget,
        ),
        "conll2003": TaskSpec(
            "conll2003",
            "f1",
            _text_task_data(data.load_conll2003, _conll_budget),
            train.finetune_token_classifier,
            _conll_budget,
        ),
        "sst2-dev": TaskSpec(
            "sst2-dev",
            "accuracy",
            _dev_data(data.load_sst2, _sst2_budget, DEV_SIZE["sst2"]),
            train.finetune_text_classifier,
            _sst2_budget,
        ),
        "conll2003-dev": TaskSpec(
            "conll2003-dev",
            "f1",
            _dev_data(data.load_conll2003, _conll_budget, DEV_SIZE["conll2003"]),
            train.finetune_token_classifier,
            _conll_budget,
        ),
        "conll2003-sparse": TaskSpec(
            "conll2003-sparse",
            "f1",
            _sparse_ner_data,
            train.finetune_token_classifier,
            _sparse_ner_budget,
        ),
        "vit": TaskSpec("vit", "accuracy", _digits_data(_vit_budget), _vit_finetune, _vit_budget),
        "vit-dev": TaskSpec(
            "vit-dev",
            "accuracy",
            _dev_data(lambda: data.load_digits(seed=0), _vit_budget, DEV_SIZE["vit"]),
            _vit_finetune,
            _vit_budget,
        ),
        "sst2-distill": TaskSpec(
            "sst2-distill",
            "accuracy",
            _text_task_data(data.load_sst2, _sst2_budget),
            _distill_finetune,
            _sst2_budget,
        ),
        **{
            f"sst2-ffn{rank}": TaskSpec(
                f"sst2-ffn{rank}",
                "accuracy",
                _text_task_data(data.load_sst2, _sst2_budget),
                _compressed_finetune(rank),
                _sst2_budget,
            )
            for rank in COMPRESSION_RANKS
        },
        **{
            name: TaskSpec(
                name,
                "bleu",
                _e2e_data(split),
                _e2e_finetune,
                _e2e_budget,
                default_lr=train.CAUSAL_LM_LR,
            )  # fmt: skip
            for name, split in (("e2e", "test"), ("e2e-dev", "validation"))
        },
        **{
            name: TaskSpec(
                name,
                "accuracy_at_iou",
                _detection_data(dev),
                _detection_finetune,
                _detection_budget,
            )  # fmt: skip
            for name, dev in (("detection", False), ("detection-dev", True))
        },
        "matching": TaskSpec(
            "matching",
            "zero_shot_accuracy",
            _digits_data(_matching_budget),
            _matching_finetune,
            _matching_budget,
        ),
        "matching-dev": TaskSpec(
            "matching-dev",
            "zero_shot_accuracy",
            _dev_data(lambda: data.load_digits(seed=0), _matching_budget, DEV_SIZE["vit"]),
            _matching_finetune,
            _matching_budget,
        ),
        **{
            f"style-{style}{'-dev' * dev}": TaskSpec(
                f"style-{style}{'-dev' * dev}",
                STYLE_METRICS[style],
                _style_data(style, dev),
                _style_finetune(style),
                _style_budget,
                default_lr={"lora": 1e-3, "full": 2e-4},
            )
            for style in STYLES
            for dev in (False, True)
        },
    }
    if name not in specs:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(specs)}")
    return specs[name]


# ---------------------------------------------------------------------------------- running


def n_examples(data: Any) -> int:
    """How many training examples a task's data holds: a ``datasets.Dataset``, an
    ``(images, labels)`` pair (matching) or a dict of arrays with ``labels`` (detection)."""
    if isinstance(data, dict):
        return len(data["labels"])
    if isinstance(data, tuple):
        return len(data[-1])
    return len(data)


def _full_config(
    task: TaskSpec, run: dict[str, Any], n_train: int, budget: dict[str, Any]
) -> dict[str, Any]:
    # The learning rate actually used is part of the run's identity: resolve the default here.
    defaults = task.default_lr
    if run["method"] == "none":
        lr = None  # nothing trains
    else:
        lr = defaults[run["method"]] if run.get("lr") is None else float(run["lr"])
    return {**run, "lr": lr, "task": task.name, "n_train": n_train, "epochs": budget["epochs"]}


def run_sweep(
    task: str | TaskSpec,
    runs: Iterable[dict[str, Any]],
    out: str | os.PathLike,
    *,
    keep_adapters: bool = False,
    progress: bool = True,
    device: Any = None,
) -> list[dict[str, Any]]:
    """Run every configuration of ``runs`` not yet in ``out``; return all records of the grid.

    Each record holds the run's configuration (``KEY_FIELDS``) and what it measured:
    ``trainable_params``, ``total_params``, ``metric_name``, ``metric``, ``train_seconds``,
    ``device``, ``profile``, ``version``, ``history`` (loss per step, metric per epoch) and,
    with ``keep_adapters``, ``adapter_path`` (a PEFT-format adapter folder next to the results
    file).
    """
    from tqdm.auto import tqdm

    spec, out, done, budget, (train_ds, eval_ds) = prepare_sweep(task, out)
    runs = list(runs)  # a sized list: the progress bar shows the total
    records: list[dict[str, Any]] = []
    bar = tqdm(runs, desc=f"sweep {spec.name}", unit="run", disable=not progress)
    for run in bar:
        config = _full_config(spec, run, n_examples(train_ds), budget)
        key = run_key(config)
        if key in done:
            records.append(done[key])
            continue
        bar.set_postfix_str(_describe(config))
        record, files = train_one(spec, config, train_ds, eval_ds, keep_adapters, device)
        write_record(out, record, files)
        done[key] = record
        records.append(record)
    return records


def prepare_sweep(
    task: str | TaskSpec, out: str | os.PathLike
) -> tuple[TaskSpec, Path, dict[str, dict[str, Any]], dict[str, Any], tuple[Any, Any]]:
    """What every sweep runner starts from: the task's spec, the results path, the runs already
    in it (by ``run_key``), the profile's budget and the (train, eval) data. Every run of a grid
    sees the same data (only initialisation and order vary with the seed); even a finished sweep
    loads it, since the training-set size is part of each key."""
    spec = task_spec(task) if isinstance(task, str) else task
    out = Path(out)
    done = {run_key(r): r for r in read_results(out, repair=True)}
    return spec, out, done, spec.budget(), spec.load()


def train_one(
    spec: TaskSpec,
    config: dict[str, Any],
    train_ds: Any,
    eval_ds: Any,
    keep_adapters: bool = False,
    device: Any = None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Train one run of a sweep (``config``: a grid entry completed by ``_full_config``) and
    return its record and, with ``keep_adapters``, the files of its LoRA adapter (name → bytes;
    ``write_record`` puts them next to the results file). Writes nothing itself, so it can run
    on another machine: the serial runner and the Ray workers (``lora_edu.cluster``) share it."""
    from lora_edu import __version__

    budget = spec.budget()
    kwargs = {
        "method": config["method"],
        "epochs": config["epochs"],
        "batch_size": budget["batch_size"],
        "seed": config["seed"],
        "lr": config["lr"],
        "progress": False,
        "device": device,
        **spec.extra,
    }
    if "model" in budget:  # the full profile's base-size encoder
        kwargs["model"] = budget["model"]
    if config["method"] == "lora":
        kwargs["lora"] = lora_config(config)
    # A run's head trains at its method's rate unless the run says otherwise: explicitly None, so
    # that no ``finetune_*`` default (``defaults.TASK_DEFAULTS``) changes what a run means.
    kwargs["head_lr"] = config.get("head_lr")
    if config.get("warmup_ratio") is not None:
        kwargs["warmup_ratio"] = config["warmup_ratio"]
    started = time.perf_counter()
    result = spec.finetune(train_ds, eval_ds, return_model=keep_adapters, **kwargs)
    model = None
    if keep_adapters:
        result, model = result
    record = {
        **{k: v for k, v in result.items() if k != "history"},
        # Learning curves (loss per step, metric per epoch) without the per-step lr schedule.
        "history": {k: v for k, v in result.get("history", {}).items() if k != "lr"},
        **config,
        "metric_name": result.get("metric_name", spec.metric_name),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "profile": profile(),
        "version": __version__,
    }
    files: dict[str, bytes] = {}
    if model is not None and config["method"] == "lora":
        import tempfile

        from lora_edu.lora import save_adapter

        with tempfile.TemporaryDirectory() as tmp:
            save_adapter(model, tmp)
            files = {
                p.relative_to(tmp).as_posix(): p.read_bytes()
                for p in sorted(Path(tmp).rglob("*"))
                if p.is_file()
            }
    return record, files


def write_record(out: str | os.PathLike, record: dict[str, Any], files: dict[str, bytes]) -> None:
    """Append ``record`` to the results file ``out``; with adapter ``files`` (from
    ``train_one``), first write them to ``adapters/<file stem>/<run>/`` beside it and note that
    folder in the record as ``adapter_path``."""
    out = Path(out)
    if files:
        adapter_dir = out.parent / "adapters" / out.stem / adapter_slug(record)
        adapter_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (adapter_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (adapter_dir / name).write_bytes(data)
        record["adapter_path"] = os.path.relpath(adapter_dir, out.parent)
    append_record(out, record)


def lora_config(run: dict[str, Any]) -> LoRAConfig:
    """The ``LoRAConfig`` of one LoRA run of a grid (or record): the one object that carries its
    settings to ``finetune_*`` and ``apply_lora``."""
    from lora_edu.lora import LoRAConfig

    return LoRAConfig(
        target_modules=_targets_argument(run["target_modules"]),
        r=run["r"],
        alpha=run["alpha"],
        init=run["init"],
        use_rslora=run["use_rslora"],
        variant=run.get("variant"),
        quantize=run.get("quantize"),
    )


def _targets_argument(targets: Sequence[str]) -> str | tuple[str, ...]:
    """A run's target list as ``apply_lora`` reads it: ``["all-linear"]`` is the keyword."""
    from lora_edu.lora import ALL_LINEAR

    return ALL_LINEAR if [t.lower() for t in targets] == [ALL_LINEAR] else tuple(targets)


def _describe(config: dict[str, Any]) -> str:
    if config["method"] != "lora":
        return f"{config['method']} seed={config['seed']}"
    targets = ",".join(config["target_modules"])
    name = config.get("variant") or "lora"
    name = f"q{name} ({config['quantize']})" if config.get("quantize") else name
    return f"{name} r={config['r']} α={config['alpha']:g} [{targets}] seed={config['seed']}"


def adapter_slug(config: dict[str, Any]) -> str:
    """The folder name of a run's adapter, from the fields of its run key (``KEY_FIELDS``):
    method, rank, alpha, targets, variant, quantisation and the learning rate always; the
    initialisation, rsLoRA, the head's rate, the warm-up, the training-set size and the number of
    epochs where the run sets them to something other than the usual value; the seed last. Two
    runs with different keys never share a folder (``task`` aside: it names the folder above)::

        lora_r8_a16_query-value_lr0.001_s0
        lora_r8_a16_query-value_lr0.002_pissa_rslora_head0.1_n4000_e2_s1
    """
    parts = [config["method"]]
    if config["method"] == "lora":
        parts += [f"r{config['r']}", f"a{key_value(config, 'alpha'):g}"]
    if config.get("target_modules"):
        parts.append("-".join(config["target_modules"]))
    parts += [config[k] for k in ("variant", "quantize") if config.get(k)]
    if config.get("lr") is not None:
        parts.append(f"lr{key_value(config, 'lr'):g}")
    if config.get("init") not in (None, "kaiming"):
        parts.append(str(config["init"]))
    if config.get("use_rslora"):
        parts.append("rslora")
    if config.get("head_lr") is not None:
        parts.append(f"head{key_value(config, 'head_lr'):g}")
    if key_value(config, "warmup_ratio") != key_value({}, "warmup_ratio"):
        parts.append(f"warm{key_value(config, 'warmup_ratio'):g}")
    parts += [
        f"{tag}{config[k]}" for k, tag in (("n_train", "n"), ("epochs", "e")) if config.get(k)
    ]
    return "_".join([*parts, f"s{config['seed']}"])


# ---------------------------------------------------------------------------------- reporting


def summary_table(records: Sequence[dict[str, Any]]) -> str:
    """A plain-text table: one row per record (method, r, alpha, targets, trainable %, metric,
    seconds), best metric first within each method."""
    header = ("method", "r", "alpha", "targets", "trainable", "%", "metric", "seconds", "seed")
    rows = []
    for rec in sorted(records, key=lambda r: (METHODS.index(r["method"]), -r["metric"])):
        total = rec.get("total_params") or 0
        trainable = rec.get("trainable_params") or 0
        rows.append(
            (
                rec.get("variant") or rec["method"],
                "" if rec.get("r") is None else str(rec["r"]),
                "" if rec.get("alpha") is None else f"{rec['alpha']:g}",
                ",".join(rec.get("target_modules") or []),
                f"{trainable:,}",
                f"{100 * trainable / total:.3f}" if total else "",
                f"{rec['metric_name']} {rec['metric']:.4f}",
                f"{rec.get('train_seconds', float('nan')):.1f}",
                str(rec["seed"]),
            )
        )
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (records equal in everything but the seed): the mean metric
    and train seconds over seeds, the seeds' spread (max − min) and their count, and the mean
    held-out loss (``eval_loss``) when every record has one (else None)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        key = run_key({**rec, "seed": None})
        groups.setdefault(key, []).append(rec)
    rows = []
    for recs in groups.values():
        metrics = [r["metric"] for r in recs]
        losses = [r.get("eval_loss") for r in recs]
        first = recs[0]
        rows.append(
            {
                **{k: first.get(k) for k in KEY_FIELDS if k != "seed"},
                "metric_name": first["metric_name"],
                "metric": sum(metrics) / len(metrics),
                "spread": max(metrics) - min(metrics),
                "seeds": sorted(r["seed"] for r in recs),
                "trainable_params": first.get("trainable_params"),
                "total_params": first.get("total_params"),
                "train_seconds": sum(r.get("train_seconds", 0.0) for r in recs) / len(recs),
                "eval_loss": None if None in losses else sum(losses) / len(losses),
                "profile": first.get("profile"),
            }
        )
    return sorted(
        rows, key=lambda r: (r["task"], METHODS.index(r["method"]), r["r"] or 0, r["lr"] or 0)
    )


def markdown_report(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table of ``aggregate(records)``: task, method, rank, alpha, targets, learning
    rate, trainable %, metric (mean over seeds, ± half the spread when there are several), seeds,
    training budget. (No training time: on a shared machine it says more about the other work
    than about the method; the notebooks time their methods side by side.)"""
    lines = [
        "| task | method | r | α | targets | lr | trainable % | metric | seeds | train examples × epochs |",
        "|---|---|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for row in aggregate(records):
        pct = 100 * row["trainable_params"] / row["total_params"] if row["total_params"] else 0
        metric = f"{row['metric_name']} {100 * row['metric']:.2f}"
        if len(row["seeds"]) > 1:
            metric += f" ± {100 * row['spread'] / 2:.2f}"
        lines.append(
            f"| {row['task']} | {row.get('variant') or row['method']} | {row['r'] or ''} | "
            f"{'' if row['alpha'] is None else format(row['alpha'], 'g')} | "
            f"{','.join(row['target_modules'] or [])} | "
            f"{'' if row['lr'] is None else format(row['lr'], 'g')} | {pct:.3f} | {metric} | "
            f"{len(row['seeds'])} | {row['n_train']:,} × {row['epochs']} |"
        )
    return "\n".join(lines)


REPORT_START = "<!-- results:start (generated by `lora-edu report --readme`; do not edit) -->"
REPORT_END = "<!-- results:end -->"


def update_readme(
    readme: str | os.PathLike,
    table: str,
    start: str = REPORT_START,
    end: str = REPORT_END,
) -> bool:
    """Replace the text between the ``start`` and ``end`` marker lines in ``readme`` (default:
    the results markers) with ``table``; return whether the file changed. Raises ValueError when
    the markers are missing."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise ValueError(
            f"{path} has no generated-section markers; add the two lines\n{start}\n{end}\n"
            "where the table should go"
        )
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{table}\n{end}{tail}"
    path.write_text(new, encoding="utf-8")
    return new != text
