"""Tests for lora_edu.models: text heads, TinyViT and its weight files, and the cached pretrained
ViT (trained by the training side: ``lora_edu.pretrained_vit``).

Most tests use a tiny randomly initialised BERT (``make_tiny_bert``, also used by
test_train.py); one test loads the real offline MiniLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_edu import models
from lora_edu.lora import LoRALinear, apply_lora
from lora_edu.models import (
    MeanPoolClassifier,
    TinyViT,
    TokenClassifier,
    fresh_head,
    image_arrays,
    load_text_model,
    load_tinyvit,
    mean_pool,
    replace_head,
    resize_images,
    save_tinyvit,
)
from lora_edu.train import pretrained_vit

#: The words of the synthetic test sentences (test_train.py builds its data from these).
POSITIVE = ["good", "great", "fine", "nice"]
NEGATIVE = ["bad", "awful", "poor", "sad"]
FILLER = ["the", "movie", "was", "a", "film", "plot", "really", "very", "in", "met"]
NAMES = ["alice", "bob", "paris", "rome", "acme", "corp"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, *NAMES]
VOCAB += ["##s"]


def make_tiny_bert(path: Path) -> str:
    """Save a 2-layer BERT (hidden 32) and a word-level tokenizer for ``VOCAB`` in ``path``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    # transformers 5 ignores vocab_file=; a dict vocabulary works in every version we support.
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(VOCAB)})
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    return str(path)


def word_tokenizer() -> Any:
    """A word-level tokenizer for ``VOCAB`` that a causal LM can use: ``[SEP]`` ends a text
    (eos), ``[PAD]`` pads, no token type ids (Llama takes none)."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(
        vocab={word: i for i, word in enumerate(VOCAB)},
        bos_token="[CLS]",
        eos_token="[SEP]",
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_causal_lm(**config: Any) -> nn.Module:
    """A 2-layer Llama (hidden 16) over ``VOCAB``, random but the same on every call, in eval
    mode; ``config`` overrides ``LlamaConfig`` fields (e.g. ``max_position_embeddings``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    settings = dict(
        vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        bos_token_id=VOCAB.index("[CLS]"), eos_token_id=VOCAB.index("[SEP]"),
        pad_token_id=VOCAB.index("[PAD]"),
    )  # fmt: skip
    return LlamaForCausalLM(LlamaConfig(**{**settings, **config})).eval()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's
    spinning threads made these tests about 8 times slower (100 s instead of 12 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def small_vit(**kwargs) -> TinyViT:
    torch.manual_seed(0)
    return TinyViT(**{"dim": 16, "depth": 2, "heads": 2, "mlp_ratio": 2, **kwargs})


# --------------------------------------------------------------------------- text models


def test_tiny_tokenizer_knows_its_words(tiny_bert):
    tokenizer, _ = load_text_model("sequence", 2, tiny_bert)
    ids = tokenizer("the movie was good")["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == 6
    assert tokenizer.tokenize("alices") == ["alice", "##s"]


def test_mean_pool_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_mean_pool_classifier_output_ignores_padding(tiny_bert):
    tokenizer, model = load_text_model("sequence", 3, tiny_bert)
    model.eval()
    alone = tokenizer(["good movie"], return_tensors="pt")
    batch = tokenizer(
        ["good movie", "the plot was really very bad"], padding=True, return_tensors="pt"
    )
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # really padded
    with torch.no_grad():
        single = model(alone["input_ids"], alone["attention_mask"]).logits
        padded = model(batch["input_ids"], batch["attention_mask"]).logits
    assert single.shape == (1, 3) and padded.shape == (2, 3)
    torch.testing.assert_close(padded[:1], single, atol=1e-5, rtol=1e-5)


def test_minilm_loads_offline_without_pooler_and_ignores_padding():
    tokenizer, model = load_text_model("sequence", 2)
    model.eval()
    assert model.encoder.config.hidden_size == 384
    assert getattr(model.encoder, "pooler", None) is None
    assert not any("pooler" in name for name, _ in model.named_parameters())
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 2
    alone = tokenizer(["a gripping film"], return_tensors="pt")
    batch = tokenizer(
        ["a gripping film", "long and dull, with nothing to say"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        single = model(alone["input_ids"], alone["attention_mask"]).logits
        padded = model(batch["input_ids"], batch["attention_mask"]).logits
    torch.testing.assert_close(padded[:1], single, atol=1e-5, rtol=1e-4)


def test_token_classifier_shapes_and_loss(tiny_bert):
    tokenizer, model = load_text_model("token", 9, tiny_bert)
    assert isinstance(model, TokenClassifier)
    model.eval()
    batch = tokenizer(["alice met bob", "the movie"], padding=True, return_tensors="pt")
    labels = torch.full(batch["input_ids"].shape, -100)
    labels[0, 1], labels[0, 3] = 1, 1
    out = model(batch["input_ids"], batch["attention_mask"], labels=labels)
    assert out.logits.shape == (2, batch["input_ids"].shape[1], 9)
    manual = F.cross_entropy(out.logits[0, [1, 3]], torch.tensor([1, 1]))
    torch.testing.assert_close(out.loss, manual)


def test_sequence_loss_and_token_type_ids(tiny_bert):
    tokenizer, model = load_text_model("sequence", 2, tiny_bert)
    assert isinstance(model, MeanPoolClassifier)
    model.eval()
    batch = tokenizer(["good", "bad film"], padding=True, return_tensors="pt")
    labels = torch.tensor([1, 0])
    out = model(**batch, labels=labels)  # token_type_ids accepted
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    without = model(batch["input_ids"], batch["attention_mask"]).logits
    torch.testing.assert_close(out.logits, without)  # all-zero token types are the default


def test_heads_are_seeded_and_named_classifier(tiny_bert):
    _, a = load_text_model("sequence", 2, tiny_bert, seed=1)
    _, b = load_text_model("sequence", 2, tiny_bert, seed=1)
    _, c = load_text_model("sequence", 2, tiny_bert, seed=2)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    big = fresh_head(256, 256, seed=0)
    assert abs(big.weight.std().item() - 0.02) < 0.001 and torch.all(big.bias == 0)


def test_load_text_model_errors(tiny_bert):
    with pytest.raises(ValueError, match="'sequence'.*'token'"):
        load_text_model("tokens", 2, tiny_bert)
    with pytest.raises(ValueError, match="num_labels=0"):
        load_text_model("sequence", 0, tiny_bert)


def test_lora_all_linear_leaves_the_text_head_alone(tiny_bert):
    _, model = load_text_model("sequence", 2, tiny_bert)
    names = apply_lora(model, "all-linear")
    assert names and "classifier" not in names
    assert not any(n.startswith("classifier") for n in names)
    assert isinstance(model.encoder.encoder.layer[0].attention.self.query, LoRALinear)


def test_load_causal_lm_from_a_path_records_that_path_as_the_adapters_base(tmp_path):
    """With ``path=``, the model is the folder's, not SmolLM2: the adapter must not claim
    ``HuggingFaceTB/SmolLM2-135M-Instruct`` as its base (``name`` keeps its default)."""
    import json

    from lora_edu.lora import save_adapter
    from lora_edu.models import CAUSAL_LMS, load_causal_lm

    folder = tmp_path / "my-llama"
    word_tokenizer().save_pretrained(folder)
    tiny_causal_lm().save_pretrained(folder)
    tokenizer, model = load_causal_lm(path=folder)
    assert model.config.hidden_size == 16 and tokenizer.padding_side == "left"
    assert model.config._name_or_path == str(folder)
    apply_lora(model, ["q_proj", "v_proj"], r=2, alpha=4)
    config = json.loads(
        (save_adapter(model, tmp_path / "adapter") / "adapter_config.json").read_text()
    )
    assert config["base_model_name_or_path"] == str(folder)
    assert CAUSAL_LMS["smollm2"]["hub_id"] not in json.dumps(config)


# --------------------------------------------------------------------------- TinyViT


def test_tinyvit_shapes_and_attention_rows_sum_to_one():
    vit = small_vit(patch_size=7)
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    logits, maps = vit(images, return_attention=True)
    assert logits.shape == (3, 10)
    T = 1 + (28 // 7) ** 2
    assert len(maps) == 2 and all(m.shape == (3, 2, T, T) for m in maps)
    for m in maps:
        torch.testing.assert_close(m.sum(dim=-1), torch.ones(3, 2, T))
        assert torch.all(m >= 0)
    assert torch.equal(vit(images), logits)
    vit4 = small_vit(patch_size=4)
    assert vit4(images, return_attention=True)[1][0].shape == (3, 2, 50, 50)


def test_tinyvit_accepts_layouts_and_dtypes_alike():
    vit = small_vit().eval()
    images = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    reference = vit(images)
    torch.testing.assert_close(vit(images.unsqueeze(1)), reference)
    torch.testing.assert_close(vit(images.float() / 255), reference)
    with pytest.raises(ValueError, match=r"\(B, 28, 28\)"):
        vit(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="divide by 255"):
        vit(images.float())
    with pytest.raises(ValueError, match="divisible"):
        TinyViT(image_size=28, patch_size=5)


def test_tinyvit_attention_is_the_formula():
    vit = small_vit().eval()
    attention = vit.blocks[0].attention
    x = torch.randn(2, 17, 16)
    out, maps = attention(x)
    q = attention.query(x).view(2, 17, 2, 8).transpose(1, 2)
    k = attention.key(x).view(2, 17, 2, 8).transpose(1, 2)
    v = attention.value(x).view(2, 17, 2, 8).transpose(1, 2)
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 17, 16)
    torch.testing.assert_close(out, attention.output(expected))
    torch.testing.assert_close(maps, (q @ k.transpose(-2, -1) / 8**0.5).softmax(-1))


def test_tinyvit_module_names_and_lora_targets():
    vit = small_vit()
    linear = {n for n, m in vit.named_modules() if isinstance(m, nn.Linear)}
    for i in range(2):
        for leaf in ("attention.query", "attention.key", "attention.value", "attention.output"):
            assert f"blocks.{i}.{leaf}" in linear
        assert {f"blocks.{i}.fc1", f"blocks.{i}.fc2"} <= linear
    assert "classifier" in linear and vit.config["dim"] == 16
    images = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    before = vit.eval()(images)
    names = apply_lora(vit, ["query", "value", "output"], r=4)
    assert names == [
        f"blocks.{i}.attention.{t}" for i in range(2) for t in ("query", "value", "output")
    ]
    torch.testing.assert_close(vit(images), before)  # B = 0: LoRA starts as the identity
    assert "classifier" not in apply_lora(small_vit(), "all-linear")


def test_replace_head_copies_and_leaves_the_original():
    vit = small_vit()
    new = replace_head(vit, 3, seed=5)
    assert new.classifier.out_features == 3 and vit.classifier.out_features == 10
    assert new.config["num_classes"] == 3 and vit.config["num_classes"] == 10
    assert torch.equal(new.blocks[0].attention.query.weight, vit.blocks[0].attention.query.weight)
    assert new.blocks[0].attention.query.weight is not vit.blocks[0].attention.query.weight
    assert torch.equal(new.classifier.weight, fresh_head(16, 3, seed=5).weight)
    with pytest.raises(ValueError, match="classifier"):
        replace_head(nn.Sequential(nn.Linear(2, 2)), 3)


def test_image_arrays_from_dataset_and_pair():
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    ds = datasets.Dataset.from_dict({"image": images.tolist(), "label": [3, 1]})
    got_images, got_labels = image_arrays(ds)
    assert got_images.shape == (2, 28, 28) and np.array_equal(got_images, images)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == [3, 1]
    assert np.array_equal(image_arrays((images, [3, 1]))[0], images)
    with pytest.raises(ValueError, match="'image' and 'label'"):
        image_arrays(datasets.Dataset.from_dict({"img": [1], "label": [0]}))
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        image_arrays((images, [0]))


def test_resize_images():
    images = np.zeros((2, 8, 8), np.uint8)
    images[:, :4] = 255  # top half white
    big = resize_images(images, 28)
    assert big.shape == (2, 28, 28) and big.dtype == np.uint8
    assert big[:, :12].min() == 255 and big[:, 16:].max() == 0  # halves kept, edge blended
    as_float = resize_images(images.astype(np.float32)[:, None] / 255, 28)
    assert as_float.shape == (2, 1, 28, 28) and as_float.dtype == np.float32
    assert np.array_equal(resize_images(big, 28), big)


# --------------------------------------------------------------------------- pretrained_vit


def synthetic_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class c: a bright horizontal bar at height 4c (c < 6), on noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, n)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 4 * c : 4 * c + 4, 4:24] = 255
    return images, labels


def test_pretrained_vit_caches_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_EDU_CACHE", str(tmp_path))
    config = {"dim": 16, "depth": 1, "heads": 2}  # num_classes (10) differs from the data's 6
    data = synthetic_digits(96)
    kwargs = dict(config=config, epochs=1, batch_size=32, progress=False, train_data=data)
    first = pretrained_vit(**kwargs)
    files = list(tmp_path.glob("tinyvit-*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    assert first.pretrain_record["n_train"] == 96 and first.pretrain_record["metric"] is None
    assert not first.training and first.config["dim"] == 16
    assert first.config["num_classes"] == 6 and first.pretrain_record["n_eval"] is None

    # A second call must load, not train: make training impossible.
    import lora_edu.training.images

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained_vit retrained instead of loading its cache")

    monkeypatch.setattr(lora_edu.training.images, "finetune_vit", no_training)
    second = pretrained_vit(**kwargs)
    assert second.pretrain_record == first.pretrain_record
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert second.config == first.config
    # Training did change the weights (the cache is not of an untrained model).
    torch.manual_seed(0)
    untrained = TinyViT(**{**TinyViT().config, **config})
    assert not torch.equal(untrained.blocks[0].fc1.weight, first.blocks[0].fc1.weight)

    # Anything that changes the weights changes the file: seed, config, data.
    with pytest.raises(AssertionError, match="retrained"):
        pretrained_vit(**{**kwargs, "seed": 1})
    with pytest.raises(AssertionError, match="retrained"):
        pretrained_vit(**{**kwargs, "config": {**config, "dim": 8}})
    with pytest.raises(AssertionError, match="retrained"):
        pretrained_vit(**{**kwargs, "train_data": synthetic_digits(96, seed=1)})
    with pytest.raises(ValueError, match="unknown TinyViT config keys"):
        pretrained_vit(config={"width": 3}, train_data=data)


def test_pretrained_vit_is_deterministic_and_cache_false_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_EDU_CACHE", str(tmp_path))
    data, held_out = synthetic_digits(64), synthetic_digits(32, seed=3)
    kwargs = dict(
        config={"dim": 16, "depth": 1, "heads": 2, "num_classes": 6},
        epochs=1,
        batch_size=32,
        progress=False,
        train_data=data,
        eval_data=held_out,
        cache=False,
    )
    a, b = pretrained_vit(**kwargs), pretrained_vit(**kwargs)
    assert not list(tmp_path.iterdir())
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert 0.0 <= a.pretrain_record["metric"] <= 1.0
    assert models.MNIST_MEAN == pytest.approx(0.1307)


def test_tinyvit_weights_round_trip_with_config_and_record(tmp_path):
    torch.manual_seed(0)
    model = TinyViT(dim=16, depth=1, heads=2, num_classes=3)
    model.pretrain_record = {"metric": 0.5, "source": "test"}
    path = save_tinyvit(model, tmp_path / "sub" / "vit.safetensors", {"key": {"seed": 1}})
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    again = load_tinyvit(path)
    assert again.config == model.config and again.pretrain_record == model.pretrain_record
    assert not again.training
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    import safetensors.torch

    safetensors.torch.save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="holds no TinyViT config"):
        load_tinyvit(tmp_path / "other.safetensors")


def test_models_never_imports_the_training_side():
    """models.py defines and loads models; training imports it, never the other way round (not
    even inside a function), so the two never form an import circle."""
    import ast

    tree = ast.parse(Path(models.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.startswith(("lora_edu.train", "lora_edu.sweep"))}
    assert not hasattr(models, "pretrained_vit")
    import lora_edu

    assert lora_edu.pretrained_vit is pretrained_vit  # the public name, from the training side
