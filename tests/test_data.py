"""Dataset loaders: parsing of hand-written fixtures, error paths, and the real files when present."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from lora_edu import data


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# Invented sentences in the GLUE SST-2 format (note the trailing space GLUE leaves before the tab).
SST2_FIXTURE = (
    "sentence\tlabel\na cheerful little film about teapots \t1\ndreary and far too long \t0\n"
)

# Invented sentences in the CoNLL-2003 format, with a document separator.
CONLL_FIXTURE = """-DOCSTART- -X- -X- O

Mira NNP B-NP B-PER
Tolvanen NNP I-NP I-PER
visited VBD B-VP O
Oulu NNP B-NP B-LOC
. . O O

Zentrix NNP B-NP B-ORG
sells VBZ B-VP O
Nordic JJ B-NP B-MISC
kettles NNS I-NP O


"""


def _sst2_folder(root: Path, text: str = SST2_FIXTURE) -> Path:
    for name in data.DATASET_FILES["sst2"]:
        _write(root / "sst2" / name, text)
    return root


def test_read_sst2_strips_and_parses(tmp_path):
    parsed = data.read_sst2_tsv(_write(tmp_path / "x.tsv", SST2_FIXTURE))
    assert parsed == {
        "text": ["a cheerful little film about teapots", "dreary and far too long"],
        "label": [1, 0],
    }


@pytest.mark.parametrize(
    "text, where",
    [
        ("sentence\tlabel\nok \t1\nno label here\n", ":3:"),
        ("sentence\tlabel\nbad label \t7\n", ":2:"),
        ("text,label\nfoo,1\n", ":1:"),
    ],
)
def test_read_sst2_malformed_names_file_and_line(tmp_path, text, where):
    path = _write(tmp_path / "bad.tsv", text)
    with pytest.raises(ValueError, match=f"bad.tsv{where}"):
        data.read_sst2_tsv(path)


def test_load_sst2_from_explicit_dir(tmp_path):
    ds = data.load_sst2(_sst2_folder(tmp_path))
    assert set(ds) == {"train", "validation", "test"}
    assert ds["train"].column_names == ["text", "label"]
    assert ds["train"].features["label"].names == ["negative", "positive"]
    assert ds["validation"][0] == {"text": "a cheerful little film about teapots", "label": 1}


def test_read_conll_parses_sentences_and_tags(tmp_path):
    parsed = data.read_conll(_write(tmp_path / "c.txt", CONLL_FIXTURE))
    assert parsed["tokens"] == [
        ["Mira", "Tolvanen", "visited", "Oulu", "."],
        ["Zentrix", "sells", "Nordic", "kettles"],
    ]
    names = [[data.CONLL_LABELS[i] for i in s] for s in parsed["ner_tags"]]
    assert names == [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "O", "B-MISC", "O"]]


@pytest.mark.parametrize(
    "line, message",
    [
        ("Oulu NNP B-LOC", "expected 4 columns"),
        ("Oulu NNP B-NP B-CITY", "unknown NER tag 'B-CITY'"),
    ],
)
def test_read_conll_malformed_names_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "c.txt", f"Mira NNP B-NP B-PER\n{line}\n")
    with pytest.raises(ValueError, match=f"c.txt:2: {message}"):
        data.read_conll(path)


def test_load_conll2003_features(tmp_path):
    for name in data.DATASET_FILES["conll2003"]:
        _write(tmp_path / "conll2003" / name, CONLL_FIXTURE)
    ds = data.load_conll2003(tmp_path)
    assert set(ds) == {"train", "validation", "test"}
    assert ds["train"].features["ner_tags"].feature.names == list(data.CONLL_LABELS)
    assert ds["test"][1]["tokens"] == ["Zentrix", "sells", "Nordic", "kettles"]


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 2048 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_and_seeded_mnist_split(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    labels = np.arange(50) % 10
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    assert np.array_equal(data.read_idx(folder / "t10k-images-idx3-ubyte.gz"), images)

    ds = data.load_mnist(tmp_path, seed=3)
    assert (len(ds["train"]), len(ds["test"])) == (40, 10)
    again = data.load_mnist(tmp_path, seed=3)
    assert np.array_equal(ds["test"][:]["label"], again["test"][:]["label"])
    # every image lands in exactly one split, unchanged
    seen = np.concatenate([ds["train"][:]["image"], ds["test"][:]["image"]]).reshape(50, -1)
    assert sorted(map(bytes, seen.astype(np.uint8))) == sorted(map(bytes, images.reshape(50, -1)))


def test_read_idx_rejects_other_files(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x09\x99" + bytes(20)))
    with pytest.raises(ValueError, match="IDX magic number"):
        data.read_idx(path)


def test_load_digits_offline():
    ds = data.load_digits(seed=0)
    assert len(ds["train"]) + len(ds["test"]) == 1797
    assert ds["train"][0]["image"].shape == (8, 8)
    images = ds["train"][:]["image"]
    assert images.shape == (len(ds["train"]), 8, 8)
    assert images.min() == 0 and images.max() == 255


def test_missing_dataset_error_names_places_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_EDU_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "repo")
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_sst2()
    message = str(err.value)
    for expected in ("nowhere", "repo", "train.tsv, dev.tsv, test.tsv", "lora-edu download"):
        assert expected in message


def test_search_order_env_then_repo_and_an_explicit_folder_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_EDU_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "repo")
    assert data.search_dirs() == [
        (tmp_path / "env").resolve(),
        (tmp_path / "repo" / "data").resolve(),
    ]
    assert data.search_dirs(tmp_path / "explicit") == [(tmp_path / "explicit").resolve()]
    _sst2_folder(tmp_path / "env")
    _sst2_folder(tmp_path / "repo" / "data")
    assert data.find_dataset("sst2") == (tmp_path / "env" / "sst2").resolve()
    # An explicit folder without the files raises, naming it, instead of reading env/ or data/.
    assert data.find_dataset("sst2", tmp_path / "explicit") is None
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(data.DatasetNotFoundError, match="explicit") as err:
        data.load_sst2(tmp_path / "explicit")
    assert str(tmp_path / "env") not in str(err.value) and "not tried" in str(err.value)


# ------------------------------------------------------------------ the real files, when present


def _real(name: str) -> Path:
    folder = data.find_dataset(name)
    if folder is None:
        pytest.skip(f"{name} not found (set LORA_EDU_DATA to a folder holding {name}/)")
    return folder


def test_real_sst2_sizes():
    _real("sst2")
    ds = data.load_sst2()
    assert {k: len(v) for k, v in ds.items()} == {"train": 67349, "validation": 872, "test": 1821}
    assert not any(t.endswith(" ") for t in ds["validation"]["text"])


def test_real_conll2003_sizes():
    _real("conll2003")
    ds = data.load_conll2003()
    assert {k: len(v) for k, v in ds.items()} == {"train": 14041, "validation": 3250, "test": 3453}


def test_real_mnist_split():
    _real("mnist")
    ds = data.load_mnist()
    assert (len(ds["train"]), len(ds["test"])) == (8000, 2000)
    assert ds["train"][0]["image"].shape == (28, 28)


# ------------------------------------------------------------------ lora-edu download (Hub faked)


def _fake_hub(name, config=None, split=None, revision=None):
    """Stand-ins with the Hub's schemas (invented content), so download's writers can be tested."""
    import datasets

    if name == data.E2E_HUB["path"]:
        assert revision == data.E2E_HUB["revision"]  # the script-free parquet revision
        rows = {"validation": ["name : Mira | area : riverside", "Mira is by the river ."],
                "test": ["name : Oak", "Oak is a pub ."]}  # fmt: skip
        return datasets.DatasetDict(
            {
                s: datasets.Dataset.from_dict({data.E2E_HUB_MR: [mr], data.E2E_HUB_REF: [ref]})
                for s, (mr, ref) in rows.items()
            }
        )

    if name == "nyu-mll/glue":
        part = {"sentence": ["a warm film ", "cold and dull "], "label": [1, 0], "idx": [0, 1]}
        return datasets.DatasetDict(
            {s: datasets.Dataset.from_dict(part) for s in ("train", "validation")}
        )
    if name == "SetFit/sst2":
        return datasets.Dataset.from_dict({"text": ["quietly moving"], "label": [1]})
    if name == data.CONLL_HUB["path"]:
        assert revision == data.CONLL_HUB["revision"]  # the script was not run
        feats = datasets.Features(
            {
                "tokens": datasets.Sequence(datasets.Value("string")),
                "pos_tags": datasets.Sequence(datasets.ClassLabel(names=["NNP", "VBD"])),
                "chunk_tags": datasets.Sequence(datasets.ClassLabel(names=["B-NP", "B-VP"])),
                "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(data.CONLL_LABELS))),
            }
        )
        part = {
            "tokens": [["Ama", "smiled"]],
            "pos_tags": [[0, 1]],
            "chunk_tags": [[0, 1]],
            "ner_tags": [[1, 0]],
        }
        return datasets.DatasetDict(
            {
                s: datasets.Dataset.from_dict(part, features=feats)
                for s in ("train", "validation", "test")
            }
        )
    if name == data.MNIST_HUB["path"]:
        from PIL import Image

        assert revision == data.MNIST_HUB["revision"]

        imgs = [Image.fromarray(np.full((28, 28), v, dtype=np.uint8)) for v in (0, 255)]
        return datasets.DatasetDict(
            {
                s: datasets.Dataset.from_dict({"image": imgs, "label": [3, 4]})
                for s in ("train", "test")
            }
        )
    raise AssertionError(f"unexpected Hub call {name}")


class _FakeResponse:
    """What urllib.request.urlopen returns, for the instruction set's URL only."""

    def __init__(self, url, items):
        assert url == data.INSTRUCTIONS_URL
        self.body = json.dumps(items).encode()

    def read(self):
        return self.body

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_writes_canonical_files(tmp_path, monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub)
    items = [{"instruction": "Name a colour.", "input": "", "output": "Teal."}] * 3
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: _FakeResponse(url, items))
    written = data.download_datasets(dest=tmp_path)
    assert set(written) == {"sst2", "conll2003", "mnist", "e2e", "instructions"}
    e2e = data.load_e2e(tmp_path, validation_fraction=0.0)
    assert e2e["train"][0] == {
        "mr": "name : Mira | area : riverside",
        "text": "Mira is by the river .",
        "references": ["Mira is by the river ."],
    }
    assert e2e["test"]["text"] == ["Oak is a pub ."]
    instr = data.read_instructions(tmp_path / "instructions" / "instruction-data.json")
    assert instr["output"] == ["Teal."] * 3
    sst2 = data.load_sst2(tmp_path)
    assert sst2["train"][:]["text"] == ["a warm film", "cold and dull"]
    assert sst2["test"][0] == {"text": "quietly moving", "label": 1}
    conll = data.load_conll2003(tmp_path)
    assert conll["test"][0] == {"tokens": ["Ama", "smiled"], "ner_tags": [1, 0]}
    mnist = data.load_mnist(tmp_path)  # official train/test files present → official split
    assert (len(mnist["train"]), len(mnist["test"])) == (2, 2)
    assert mnist["test"][1]["image"].max() == 255


def _online_without_local_data(tmp_path, monkeypatch, fake):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("LORA_EDU_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(datasets, "load_dataset", fake)


@pytest.mark.parametrize("named", [True, False], ids=["classlabel", "plain-ids"])
def test_conll_hub_fallback_reads_parquet_with_or_without_tag_names(tmp_path, monkeypatch, named):
    """The parquet revision, with the features the local loader gives, whether the files carry
    the ClassLabel names or only the integer ids."""
    import datasets

    def fake(path, name=None, split=None, revision=None):
        assert (path, revision) == (data.CONLL_HUB["path"], data.CONLL_HUB["revision"])
        seq = datasets.Sequence
        tag = (
            datasets.ClassLabel(names=list(data.CONLL_LABELS)) if named else datasets.Value("int64")
        )
        feats = datasets.Features(
            {"id": datasets.Value("string"), "tokens": seq(datasets.Value("string")),
             "pos_tags": seq(datasets.Value("int64")), "chunk_tags": seq(datasets.Value("int64")),
             "ner_tags": seq(tag)}
        )  # fmt: skip
        part = {"id": ["0"], "tokens": [["Ama", "flew", "to", "Accra"]], "pos_tags": [[0, 1, 2, 0]],
                "chunk_tags": [[0, 1, 2, 0]], "ner_tags": [[1, 0, 0, 5]]}  # fmt: skip
        return datasets.DatasetDict(
            {
                s: datasets.Dataset.from_dict(part, features=feats)
                for s in ("train", "validation", "test")
            }
        )

    _online_without_local_data(tmp_path, monkeypatch, fake)
    ds = data.load_conll2003()
    for name in data.DATASET_FILES["conll2003"]:
        _write(tmp_path / "local" / "conll2003" / name, CONLL_FIXTURE)
    assert ds["test"].features == data.load_conll2003(tmp_path / "local")["test"].features
    assert ds["test"].features["ner_tags"].feature.names == list(data.CONLL_LABELS)
    assert ds["validation"][0] == {
        "tokens": ["Ama", "flew", "to", "Accra"],
        "ner_tags": [1, 0, 0, 5],
    }
    # what lora-edu download writes from it reads back the same
    (tmp_path / "dl").mkdir()
    data._download_conll2003(tmp_path / "dl", fake)
    assert data.read_conll(tmp_path / "dl" / "test.txt")["ner_tags"] == [[1, 0, 0, 5]]


def test_conll_hub_fallback_refuses_other_tag_names_or_ids(tmp_path, monkeypatch):
    import datasets

    def fake(path, name=None, split=None, revision=None):
        part = {"tokens": [["Ama"]], "ner_tags": [[9]]}
        return datasets.DatasetDict(
            {s: datasets.Dataset.from_dict(part) for s in ("train", "validation", "test")}
        )

    _online_without_local_data(tmp_path, monkeypatch, fake)
    with pytest.raises(data.DatasetNotFoundError, match=r"\[9\].*outside 0..8"):
        data.load_conll2003()


@pytest.mark.parametrize("decoded", [True, False], ids=["pil", "parquet-bytes"])
def test_mnist_hub_fallback_reads_parquet_images(tmp_path, monkeypatch, decoded):
    """Images come back as PIL images, or as the parquet struct {bytes, path} when the files'
    feature metadata is missing; both give the local loader's uint8 arrays and labels."""
    import io

    import datasets
    from PIL import Image

    pixels = [np.arange(784, dtype=np.uint8).reshape(28, 28), np.full((28, 28), 7, np.uint8)]

    def png(array):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    def fake(path, name=None, split=None, revision=None):
        assert (path, revision) == (data.MNIST_HUB["path"], data.MNIST_HUB["revision"])
        imgs = [Image.fromarray(a) for a in pixels] if decoded else [png(a) for a in pixels]
        return datasets.DatasetDict(
            {
                s: datasets.Dataset.from_dict({"image": imgs, "label": [5, 9]})
                for s in ("train", "test")
            }
        )

    _online_without_local_data(tmp_path, monkeypatch, fake)
    ds = data.load_mnist()
    assert (len(ds["train"]), len(ds["test"])) == (2, 2)
    np.testing.assert_array_equal(ds["test"][0]["image"], pixels[0])
    assert [int(y) for y in ds["test"]["label"]] == [5, 9]
    # the same features as the local IDX files give
    local = tmp_path / "local" / "mnist"
    local.mkdir(parents=True)
    data._write_idx(local / "t10k-images-idx3-ubyte.gz", np.stack(pixels * 5))
    data._write_idx(local / "t10k-labels-idx1-ubyte.gz", np.array([5, 9] * 5))
    assert ds["test"].features == data.load_mnist(local.parent)["test"].features


def test_download_refuses_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="needs the Hugging Face Hub"):
        data.download_datasets(["sst2"], tmp_path)


def test_sst2_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + SST2_FIXTURE.encode())
    assert data.read_sst2_tsv(path)["label"] == [1, 0]


@pytest.mark.parametrize("reader", [data.read_sst2_tsv, data.read_conll])
def test_undecodable_bytes_name_the_file(tmp_path, reader):
    path = tmp_path / "latin1.txt"
    path.write_bytes("sentence\tlabel\ncaf\xe9 \t1\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt: not UTF-8"):
        reader(path)


def test_truncated_or_mismatched_mnist_files_name_the_file(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    images, labels = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    data._write_idx(images, np.zeros((10, 28, 28), dtype=np.uint8))
    data._write_idx(labels, np.arange(5) % 10)
    with pytest.raises(ValueError, match="10 images but t10k-labels-idx1-ubyte.gz .* 5 labels"):
        data.load_mnist(tmp_path)
    whole = images.read_bytes()
    images.write_bytes(whole[: len(whole) // 2])  # a download cut off half-way
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: cannot be read"):
        data.read_idx(images)
    short = tmp_path / "short.idx"
    short.write_bytes((2051).to_bytes(4, "big") + (10).to_bytes(4, "big"))  # header cut off
    with pytest.raises(ValueError, match="short.idx: the IDX header is cut off"):
        data.read_idx(short)
