"""Benchmark datasets: where they are looked for, and (as the package grows) their loaders.

Search order for a dataset folder (``sst2/``, ``conll2003/``, ``mnist/``, ``e2e/``,
``instructions/``):

1. an explicit ``data_dir=`` argument (then the only place searched: a folder that does not
   hold the dataset raises, naming it);
2. the environment variable ``LORA_EDU_DATA``;
3. the repository's ``data/`` folder;
4. the Hugging Face Hub through ``datasets.load_dataset`` (only when not offline).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lora_edu.config import REPO_ROOT

#: The files each dataset folder must hold (the canonical distribution formats).
DATASET_FILES: dict[str, tuple[str, ...]] = {
    "sst2": ("train.tsv", "dev.tsv", "test.tsv"),
    "conll2003": ("train.txt", "valid.txt", "test.txt"),
    "mnist": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    "e2e": ("valid.txt", "test.txt"),
    "instructions": ("instruction-data.json",),
}


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for datasets, in order (duplicates removed). An explicit
    ``data_dir`` is the only folder searched: asking for one folder never silently reads
    another."""
    if data_dir is not None:
        return [Path(data_dir).expanduser().resolve()]
    candidates: list[Path] = []
    env = os.environ.get("LORA_EDU_DATA", "").strip()
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(REPO_ROOT / "data")
    seen: list[Path] = []
    for path in candidates:
        path = path.resolve()
        if path not in seen:
            seen.append(path)
    return seen


def find_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first folder ``<dir>/<name>/`` holding all of ``DATASET_FILES[name]``, or None."""
    if name not in DATASET_FILES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_FILES)}")
    for root in search_dirs(data_dir):
        folder = root / name
        if all((folder / f).is_file() for f in DATASET_FILES[name]):
            return folder
    return None


def locate_datasets(data_dir: str | os.PathLike | None = None) -> dict[str, Path | None]:
    """Each known dataset and the local folder it was found in (None when not found)."""
    return {name: find_dataset(name, data_dir) for name in DATASET_FILES}


# --------------------------------------------------------------------------------------------
# Errors that say where we looked and how to get the files
# --------------------------------------------------------------------------------------------

_HUB_HINT = {
    "sst2": "GLUE SST-2 (https://gluebenchmark.com/tasks): train.tsv, dev.tsv, test.tsv",
    "conll2003": "CoNLL-2003 English (eng.train/eng.testa/eng.testb renamed train/valid/test.txt)",
    "mnist": "MNIST (http://yann.lecun.com/exdb/mnist/): the t10k-*-ubyte.gz files",
    "e2e": "E2E NLG (microsoft/LoRA's examples/NLG/data/e2e/valid.txt and test.txt)",
    "instructions": "the instruction set of LLMs-from-scratch, ch07 (instruction-data.json)",
}


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset is found neither locally nor (when online) on the Hub."""


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _not_found(
    name: str, data_dir: str | os.PathLike | None, hub_error: str
) -> DatasetNotFoundError:
    places = "\n".join(f"  {p / name}/" for p in search_dirs(data_dir))
    files = ", ".join(DATASET_FILES[name])
    return DatasetNotFoundError(
        f"dataset {name!r} not found. Looked for the files {files} in:\n{places}\n"
        f"and on the Hugging Face Hub: {hub_error}.\n"
        f"To fix: put the files ({_HUB_HINT[name]}) into one of those folders, point "
        f"LORA_EDU_DATA at a folder holding {name}/, or run `lora-edu download` once while online "
        "(see data/README.md)."
    )


def _from_hub(name: str, data_dir, loader):
    """Run ``loader()`` (a Hub download) unless offline or an explicit ``data_dir`` was given;
    turn any failure into a clear error."""
    if data_dir is not None:
        raise _not_found(name, data_dir, "not tried, since data_dir= names the folder to use")
    if _offline():
        raise _not_found(name, data_dir, "skipped, HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set")
    try:
        return loader()
    except Exception as err:  # network errors come in many types; report whichever it was
        raise _not_found(name, data_dir, f"{type(err).__name__}: {err}") from err


def _local_splits(folder: Path, reader, features):
    """A DatasetDict of train / validation / test from a dataset folder's three files (in the
    order of ``DATASET_FILES``), each parsed by ``reader(path) -> dict of columns``."""
    import datasets

    splits = ("train", "validation", "test")
    files = DATASET_FILES[folder.name]
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(reader(folder / file), features=features)
            for split, file in zip(splits, files, strict=True)
        }
    )


def _read_text(path: Path) -> str:
    """A UTF-8 text file's contents (a byte-order mark is dropped); undecodable bytes raise a
    ValueError naming the file."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None


# --------------------------------------------------------------------------------------------
# SST-2
# --------------------------------------------------------------------------------------------

SST2_LABELS = ("negative", "positive")


def read_sst2_tsv(path: str | os.PathLike) -> dict[str, list]:
    """Parse a GLUE SST-2 file (header ``sentence<TAB>label``) into ``{"text": [...], "label": [...]}``.

    The trailing space GLUE leaves on each sentence is stripped. A malformed line raises a
    ValueError naming the file and line number.
    """
    path = Path(path)
    texts: list[str] = []
    labels: list[int] = []
    lines = _read_text(path).split("\n")  # a byte-order mark is dropped; bad bytes name the file
    header = lines[0].rstrip("\r").split("\t")
    if header != ["sentence", "label"]:
        raise ValueError(
            f"{path}:1: expected the header 'sentence<TAB>label' of GLUE SST-2, got {header!r}"
        )
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or parts[1].strip() not in ("0", "1"):
            raise ValueError(
                f"{path}:{lineno}: expected 'sentence<TAB>label' with label 0 or 1, "
                f"got {line[:80]!r}"
            )
        texts.append(parts[0].strip())
        labels.append(int(parts[1]))
    return {"text": texts, "label": labels}


def load_sst2(data_dir: str | os.PathLike | None = None):
    """SST-2 (binary sentiment) as a ``DatasetDict`` with splits train / validation / test and
    columns ``text`` (str) and ``label`` (ClassLabel negative/positive).

    Local files: ``sst2/train.tsv``, ``dev.tsv`` (→ validation), ``test.tsv``. From the Hub the
    GLUE test labels are hidden (-1), so the Hub fallback returns train and validation only.
    """
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(SST2_LABELS))}
    )
    folder = find_dataset("sst2", data_dir)
    if folder is not None:
        return _local_splits(folder, read_sst2_tsv, features)

    def hub():
        raw = datasets.load_dataset("nyu-mll/glue", "sst2")
        return datasets.DatasetDict(
            {
                split: raw[split]
                .map(
                    lambda ex: {"text": ex["sentence"].strip()}, remove_columns=["sentence", "idx"]
                )
                .cast(features)
                for split in ("train", "validation")
            }
        )

    return _from_hub("sst2", data_dir, hub)


# --------------------------------------------------------------------------------------------
# CoNLL-2003
# --------------------------------------------------------------------------------------------

CONLL_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def read_conll(path: str | os.PathLike) -> dict[str, list]:
    """Parse a CoNLL-2003 file (``TOKEN POS CHUNK NER`` per line, IOB2, blank line between
    sentences, ``-DOCSTART-`` lines skipped) into ``{"tokens": [[...]], "ner_tags": [[...]]}``
    with tag ids indexing ``CONLL_LABELS``. A malformed line raises a ValueError naming the file
    and line number.
    """
    path = Path(path)
    tag_id = {tag: i for i, tag in enumerate(CONLL_LABELS)}
    sentences: list[list[str]] = []
    tags: list[list[int]] = []
    tokens: list[str] = []
    ids: list[int] = []
    # _read_text drops a byte-order mark and names the file on undecodable bytes
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                sentences.append(tokens)
                tags.append(ids)
                tokens, ids = [], []
            continue
        if len(parts) != 4:
            raise ValueError(
                f"{path}:{lineno}: expected 4 columns 'TOKEN POS CHUNK NER', "
                f"got {len(parts)}: {line.rstrip()!r}"
            )
        if parts[3] not in tag_id:
            raise ValueError(
                f"{path}:{lineno}: unknown NER tag {parts[3]!r}; expected one of "
                f"{', '.join(CONLL_LABELS)} (IOB2)"
            )
        tokens.append(parts[0])
        ids.append(tag_id[parts[3]])
    if tokens:
        sentences.append(tokens)
        tags.append(ids)
    return {"tokens": sentences, "ner_tags": tags}


def load_conll2003(data_dir: str | os.PathLike | None = None):
    """CoNLL-2003 English NER as a ``DatasetDict`` with splits train / validation / test and
    columns ``tokens`` (list of str) and ``ner_tags`` (list of ClassLabel with the 9 IOB2 names
    ``CONLL_LABELS``)."""
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(CONLL_LABELS))),
        }
    )
    folder = find_dataset("conll2003", data_dir)
    if folder is not None:
        return _local_splits(folder, read_conll, features)

    def hub():
        columns = _conll_hub_columns(
            datasets.load_dataset(CONLL_HUB["path"], revision=CONLL_HUB["revision"])
        )
        return datasets.DatasetDict(
            {
                split: datasets.Dataset.from_dict(
                    {"tokens": cols["tokens"], "ner_tags": cols["ner_tags"]}, features=features
                )
                for split, cols in columns.items()
            }
        )

    return _from_hub("conll2003", data_dir, hub)


#: CoNLL-2003 on the Hugging Face Hub. ``eriktks/conll2003`` is a dataset *script*, which
#: ``datasets`` 4 and later no longer run; its script-free parquet revision holds the same data.
CONLL_HUB = {"path": "eriktks/conll2003", "revision": "refs/convert/parquet"}


def _tag_names(split: Any, column: str) -> list[str] | None:
    """The names behind a Hub column of tag ids (``Sequence``/``List`` of ``ClassLabel``), or
    None when the parquet files carried plain integers without their names."""
    feature = getattr(split.features[column], "feature", None)
    return list(feature.names) if hasattr(feature, "names") else None


def _conll_hub_columns(raw: Any) -> dict[str, dict[str, list]]:
    """The Hub's CoNLL-2003 splits as ``{split: {"tokens", "ner_tags", "pos", "chunk"}}``: NER
    tag ids index ``CONLL_LABELS``; POS and chunk tags are names (``"_"`` when unnamed)."""
    out = {}
    for split in ("train", "validation", "test"):
        part = raw[split]
        names = _tag_names(part, "ner_tags")
        ner = part["ner_tags"]
        if names is not None:
            if tuple(names) != CONLL_LABELS:
                raise ValueError(
                    f"unexpected NER tag names on the Hub ({CONLL_HUB['path']}): {names}; "
                    f"expected {list(CONLL_LABELS)}"
                )
        else:  # plain ids: the dataset's documented order, which is CONLL_LABELS; check the range
            bad = {t for row in ner for t in row if not 0 <= t < len(CONLL_LABELS)}
            if bad:
                raise ValueError(
                    f"NER tag ids {sorted(bad)} on the Hub ({CONLL_HUB['path']}, {split}) are "
                    f"outside 0..{len(CONLL_LABELS) - 1}"
                )
        cols: dict[str, list] = {"tokens": part["tokens"], "ner_tags": ner}
        for column, key in (("pos_tags", "pos"), ("chunk_tags", "chunk")):
            tag_names = _tag_names(part, column) if column in part.column_names else None
            cols[key] = [
                [tag_names[i] if tag_names else "_" for i in row]
                for row in (part[column] if column in part.column_names else ner)
            ]
        out[split] = cols
    return out


# --------------------------------------------------------------------------------------------
# E2E NLG (the LoRA paper's generation task)
# --------------------------------------------------------------------------------------------

#: The E2E data on the Hugging Face Hub: the dataset's script-free parquet revision (the
#: ``datasets`` library no longer runs dataset scripts) and its column names.
E2E_HUB = {"path": "tuetschek/e2e_nlg", "revision": "refs/convert/parquet"}
E2E_HUB_MR, E2E_HUB_REF = "meaning_representation", "human_reference"


def read_e2e(path: str | os.PathLike) -> dict[str, list]:
    """Parse an E2E file (one ``MR||reference`` per line, as in microsoft/LoRA's copy) into
    ``{"mr": [...], "text": [...]}``, one entry per line (an MR appears once per reference).
    Trailing spaces are stripped. A malformed line raises a ValueError naming the file and line.
    """
    path = Path(path)
    mrs, texts = [], []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        mr, sep, text = line.partition("||")
        if not sep or not mr.strip() or not text.strip() or "||" in text:
            raise ValueError(
                f"{path}:{lineno}: expected one 'MR||reference' pair, got {line.rstrip()!r}"
            )
        mrs.append(mr.strip())
        texts.append(text.strip())
    if not mrs:
        raise ValueError(f"{path}: no 'MR||reference' lines found")
    return {"mr": mrs, "text": texts}


def _with_references(columns: dict[str, list]) -> dict[str, list]:
    """Add ``references``: on every row, all references of that row's MR (in file order)."""
    refs: dict[str, list[str]] = {}
    for mr, text in zip(columns["mr"], columns["text"], strict=True):
        refs.setdefault(mr, []).append(text)
    return {**columns, "references": [refs[mr] for mr in columns["mr"]]}


def _split_by_mr(columns: dict[str, list], fraction: float, seed: int) -> tuple[dict, dict]:
    """Split rows into (rest, held-out) so that every MR's rows stay on one side; the held-out
    side gets ``round(fraction * n_MRs)`` MRs drawn with ``seed``."""
    import numpy as np

    mrs = list(dict.fromkeys(columns["mr"]))
    held = set(np.random.default_rng(seed).permutation(len(mrs))[: round(fraction * len(mrs))])
    held_mrs = {mrs[i] for i in held}
    sides = ({k: [] for k in columns}, {k: [] for k in columns})
    for i, mr in enumerate(columns["mr"]):
        side = sides[mr in held_mrs]
        for k in columns:
            side[k].append(columns[k][i])
    return sides


def load_e2e(
    data_dir: str | os.PathLike | None = None, *, validation_fraction: float = 0.1, seed: int = 0
):
    """E2E NLG as a ``DatasetDict`` with splits train / validation / test, one row per
    (meaning representation, reference) pair: columns ``mr``, ``text`` (one human reference) and
    ``references`` (every reference of that MR, for multi-reference BLEU).

    The official E2E training set (42k pairs) is not distributed with this package's data: the
    **training** and **validation** splits both come from the official *validation* file
    (``valid.txt``, 4,672 pairs, 547 MRs), split by MR (``validation_fraction`` of the MRs,
    drawn with ``seed``, so no MR is on both sides); **test** is the official test file
    (``test.txt``, 4,693 pairs, 630 MRs). Use ``unique_mrs`` for one row per MR.
    Hub fallback: ``tuetschek/e2e_nlg`` (its parquet revision).
    """
    import datasets

    folder = find_dataset("e2e", data_dir)
    if folder is not None:
        valid, test = read_e2e(folder / "valid.txt"), read_e2e(folder / "test.txt")
    else:

        def hub():
            raw = datasets.load_dataset(E2E_HUB["path"], revision=E2E_HUB["revision"])
            return [
                {"mr": list(raw[s][E2E_HUB_MR]), "text": list(raw[s][E2E_HUB_REF])}
                for s in ("validation", "test")
            ]

        valid, test = _from_hub("e2e", data_dir, hub)
    train, validation = _split_by_mr(valid, validation_fraction, seed)
    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(_with_references(cols))
            for name, cols in (("train", train), ("validation", validation), ("test", test))
        }
    )


def unique_mrs(dataset: Any) -> Any:
    """One row per meaning representation (the first in order), with its ``references``: what
    is decoded and scored for BLEU."""
    seen: set[str] = set()
    keep = [i for i, mr in enumerate(dataset["mr"]) if not (mr in seen or seen.add(mr))]
    return dataset.select(keep)


# --------------------------------------------------------------------------------------------
# Instruction data (Alpaca-style)
# --------------------------------------------------------------------------------------------

INSTRUCTIONS_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/"
    "instruction-data.json"
)


def read_instructions(path: str | os.PathLike) -> dict[str, list]:
    """Parse an Alpaca-style JSON list of ``{"instruction", "input", "output"}`` objects into
    columns. An item that is not such an object raises a ValueError naming the file and item."""

    path = Path(path)
    return _instruction_columns(_read_text(path), path)


def _instruction_columns(text: str, path: Any) -> dict[str, list]:
    """The columns of an instruction file's ``text``; errors name ``path`` (a file or a URL)."""
    import json

    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of instruction objects")
    columns: dict[str, list] = {"instruction": [], "input": [], "output": []}
    for i, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("instruction"), str)
            or not (isinstance(item.get("output"), str))
        ):
            raise ValueError(
                f"{path}: item {i} is not an object with string 'instruction' and 'output' "
                f"(and optional 'input'): {str(item)[:120]!r}"
            )
        columns["instruction"].append(item["instruction"])
        columns["input"].append(item.get("input") or "")
        columns["output"].append(item["output"])
    return columns


def load_instructions(
    data_dir: str | os.PathLike | None = None,
    *,
    fractions: tuple[float, float, float] = (0.85, 0.05, 0.10),
    seed: int = 0,
):
    """The 1,100-item instruction set as a ``DatasetDict`` train / validation / test (85 / 5 /
    10 %, shuffled with ``seed``), columns ``instruction``, ``input`` (often empty) and
    ``output``. Online fallback: the file's URL in the LLMs-from-scratch repository."""
    import datasets
    import numpy as np

    folder = find_dataset("instructions", data_dir)
    if folder is not None:
        columns = read_instructions(folder / "instruction-data.json")
    else:

        def fetch():
            import urllib.request

            with urllib.request.urlopen(INSTRUCTIONS_URL, timeout=30) as response:
                return _instruction_columns(response.read().decode("utf-8"), INSTRUCTIONS_URL)

        columns = _from_hub("instructions", data_dir, fetch)
    n = len(columns["instruction"])
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(fractions[0] * n), int(fractions[1] * n)
    parts = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    full = datasets.Dataset.from_dict(columns)
    return datasets.DatasetDict({k: full.select(v.tolist()) for k, v in parts.items()})


# --------------------------------------------------------------------------------------------
# MNIST and scikit-learn's digits
# --------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike):
    """Read a (gzip-compressed) IDX file of unsigned bytes: images (n, rows, cols) or labels (n,)."""
    import gzip

    import numpy as np

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, gzip.BadGzipFile) as err:  # truncated or not gzip at all
        raise ValueError(f"{path}: cannot be read as a gzip-compressed IDX file ({err})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (2049, 2051):
        raise ValueError(
            f"{path}: IDX magic number {magic}, expected 2049 (labels) or 2051 (images); "
            "is this an MNIST *-idx*-ubyte(.gz) file?"
        )
    ndim = magic - 2048
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: the IDX header is cut off ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} bytes of data")
    return data.reshape(shape)


def _check_counts(images, labels, images_path: Path, labels_name: str) -> None:
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_name} beside it holds "
            f"{len(labels)} labels; expected one label per image (a truncated or mismatched file?)"
        )


def _image_dataset(images, labels, split_indices: dict):
    import datasets

    h, w = images.shape[1:]
    features = datasets.Features(
        {
            "image": datasets.Array2D(shape=(h, w), dtype="uint8"),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"image": images[idx], "label": labels[idx]}, features=features
            ).with_format("numpy")
            for split, idx in split_indices.items()
        }
    )


def _seeded_split(n: int, test_fraction: float, seed: int) -> dict:
    import numpy as np

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return {"train": np.sort(order[n_test:]), "test": np.sort(order[:n_test])}


def load_mnist(
    data_dir: str | os.PathLike | None = None, *, seed: int = 0, test_fraction: float = 0.2
):
    """MNIST as a ``DatasetDict`` with splits train / test, columns ``image`` (28×28, grey levels 0–255; stored as uint8, read back as integer arrays) and
    ``label`` (ClassLabel "0".."9"); numpy formatted.

    When the official training files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``)
    sit beside the test files, the official split is used. When only the official 10k **test**
    split is present (as in the course's shared data), it is split with ``seed`` into a training
    part (1 − test_fraction: 8,000 images) and an evaluation part (2,000 images); both are drawn
    from the official test set, so numbers are not comparable with published MNIST results.
    """
    folder = find_dataset("mnist", data_dir)
    if folder is not None:
        images = read_idx(folder / "t10k-images-idx3-ubyte.gz")
        labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
        _check_counts(
            images, labels, folder / "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
        )
        train_img, train_lab = (
            folder / "train-images-idx3-ubyte.gz",
            folder / "train-labels-idx1-ubyte.gz",
        )
        if train_img.is_file() and train_lab.is_file():
            import numpy as np

            tr_images, tr_labels = read_idx(train_img), read_idx(train_lab)
            _check_counts(tr_images, tr_labels, train_img, train_lab.name)
            n_tr = len(tr_labels)
            return _image_dataset(
                np.concatenate([tr_images, images]),
                np.concatenate([tr_labels, labels]),
                {"train": np.arange(n_tr), "test": np.arange(n_tr, n_tr + len(labels))},
            )
        return _image_dataset(images, labels, _seeded_split(len(labels), test_fraction, seed))

    def hub():
        import datasets
        import numpy as np

        arrays = _mnist_hub_arrays(
            datasets.load_dataset(MNIST_HUB["path"], revision=MNIST_HUB["revision"])
        )
        imgs, labs, splits, start = [], [], {}, 0
        for split, (images, labels) in arrays.items():
            imgs.append(images)
            labs.append(labels)
            splits[split] = np.arange(start, start + len(labels))
            start += len(labels)
        return _image_dataset(np.concatenate(imgs), np.concatenate(labs), splits)

    return _from_hub("mnist", data_dir, hub)


#: MNIST on the Hugging Face Hub, from its script-free parquet revision (``datasets`` 4 and
#: later no longer run dataset scripts).
MNIST_HUB = {"path": "ylecun/mnist", "revision": "refs/convert/parquet"}


def _hub_image(image: Any):
    """One Hub image as a uint8 array: a decoded PIL image, or the parquet form ``{"bytes":
    PNG, "path": ...}`` that appears when the files' feature metadata is missing."""
    import io

    import numpy as np

    if isinstance(image, dict):
        from PIL import Image

        image = Image.open(io.BytesIO(image["bytes"]))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(
            f"a Hub MNIST image has dtype {array.dtype} and shape {array.shape}; "
            "expected 8-bit grey levels, shape (28, 28)"
        )
    return array


def _mnist_hub_arrays(raw: Any) -> dict[str, tuple]:
    """The Hub's MNIST splits as ``{split: (images (n, 28, 28) uint8, labels (n,) int64)}``."""
    import numpy as np

    return {
        split: (
            np.stack([_hub_image(im) for im in raw[split]["image"]]),
            np.asarray(raw[split]["label"], dtype=np.int64),
        )
        for split in ("train", "test")
    }


def load_digits(*, seed: int = 0, test_fraction: float = 0.2):
    """scikit-learn's bundled handwritten digits (1,797 images, 8×8, other writers than MNIST)
    as a ``DatasetDict`` with splits train / test (seeded), columns ``image`` (8×8 uint8, the
    0–16 grey levels rescaled to 0–255) and ``label``; numpy formatted. Always available offline.
    """
    import numpy as np
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    return _image_dataset(images, labels, _seeded_split(len(labels), test_fraction, seed))


# --------------------------------------------------------------------------------------------
# lora-edu download: Hub → the canonical local files, for an offline classroom
# --------------------------------------------------------------------------------------------


def _write_idx(path: Path, array) -> None:
    import gzip

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = (2048 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _download_sst2(folder: Path, load_dataset) -> None:
    glue = load_dataset("nyu-mll/glue", "sst2")
    # GLUE hides its test labels; SetFit/sst2 carries the labelled 1,821-sentence SST test set.
    test = load_dataset("SetFit/sst2", split="test")
    rows = {
        "train.tsv": zip(glue["train"]["sentence"], glue["train"]["label"], strict=True),
        "dev.tsv": zip(glue["validation"]["sentence"], glue["validation"]["label"], strict=True),
        "test.tsv": zip(test["text"], test["label"], strict=True),
    }
    for name, pairs in rows.items():
        lines = ["sentence\tlabel"] + [f"{s.strip()} \t{int(y)}" for s, y in pairs]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _download_conll2003(folder: Path, load_dataset) -> None:
    columns = _conll_hub_columns(load_dataset(CONLL_HUB["path"], revision=CONLL_HUB["revision"]))
    for split, name in (("train", "train.txt"), ("validation", "valid.txt"), ("test", "test.txt")):
        cols = columns[split]
        blocks = []
        for tokens, pos, chunk, ner in zip(
            cols["tokens"], cols["pos"], cols["chunk"], cols["ner_tags"], strict=True
        ):
            rows = zip(tokens, pos, chunk, (CONLL_LABELS[i] for i in ner), strict=True)
            blocks.append("\n".join(" ".join(row) for row in rows))
        (folder / name).write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")


def _download_mnist(folder: Path, load_dataset) -> None:
    for split, (images, labels) in _mnist_hub_arrays(
        load_dataset(MNIST_HUB["path"], revision=MNIST_HUB["revision"])
    ).items():
        prefix = {"train": "train", "test": "t10k"}[split]
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def _download_e2e(folder: Path, load_dataset) -> None:
    raw = load_dataset(E2E_HUB["path"], revision=E2E_HUB["revision"])
    for split, name in (("validation", "valid.txt"), ("test", "test.txt")):
        lines = [
            f"{mr}||{text}"
            for mr, text in zip(raw[split][E2E_HUB_MR], raw[split][E2E_HUB_REF], strict=True)
        ]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _download_instructions(folder: Path, load_dataset) -> None:
    import urllib.request

    with urllib.request.urlopen(INSTRUCTIONS_URL, timeout=60) as response:
        (folder / "instruction-data.json").write_bytes(response.read())


_DOWNLOADERS = {
    "sst2": _download_sst2,
    "conll2003": _download_conll2003,
    "mnist": _download_mnist,
    "e2e": _download_e2e,
    "instructions": _download_instructions,
}


def download_datasets(
    names: list[str] | None = None, dest: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Fetch datasets from the Hugging Face Hub and write them in the canonical local formats
    under ``dest`` (default: the repository's ``data/``), so later runs work offline.
    Returns the folder written for each dataset."""
    import datasets

    if _offline():
        raise RuntimeError(
            "lora-edu download needs the Hugging Face Hub, but HF_HUB_OFFLINE or "
            "HF_DATASETS_OFFLINE is set; unset them (and be online) to download"
        )
    names = list(DATASET_FILES) if names is None else names
    unknown = [n for n in names if n not in _DOWNLOADERS]
    if unknown:
        raise ValueError(
            f"unknown dataset(s) {unknown}; expected some of {', '.join(_DOWNLOADERS)}"
        )
    dest = Path(dest) if dest is not None else REPO_ROOT / "data"
    written = {}
    for name in names:
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        _DOWNLOADERS[name](folder, datasets.load_dataset)
        written[name] = folder
    return written
