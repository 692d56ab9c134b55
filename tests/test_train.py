"""Tests for lora_edu.train: metrics, methods, the loop and the three finetune_* functions.

Models are tiny (a 2-layer BERT with hidden size 32, a 1-block TinyViT) and the data synthetic,
so every training run takes well under a second on a CPU.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import random
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import test_models
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_models import FILLER, NEGATIVE, POSITIVE, small_vit, synthetic_digits

from lora_edu.defaults import TASK_DEFAULTS
from lora_edu.lora import LoRAConfig
from lora_edu.models import load_text_model
from lora_edu.train import (
    METHODS,
    accuracy,
    align_labels,
    entity_f1,
    extract_entities,
    finetune_text_classifier,
    finetune_token_classifier,
    finetune_vit,
    format_entities,
    linear_schedule,
    predict_tags,
    prepare_model,
    word_predictions,
)

# Fixtures shared with test_models.py (pytest finds fixtures by module attribute).
tiny_bert = test_models.tiny_bert
one_torch_thread = test_models.one_torch_thread

TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

#: Keys every record holds (module docstring of lora_edu.training.run).
RECORD_KEYS = {
    "task", "model", "method", "r", "alpha", "dropout", "target_modules", "init", "use_rslora",
    "lora_targets", "lr", "lr_is_default", "epochs", "batch_size", "max_length", "seed",
    "warmup_ratio", "weight_decay", "max_grad_norm", "n_train", "n_eval", "num_labels", "steps",
    "metric_name", "metric", "trainable_params", "total_params", "trainable_percent",
    "train_seconds", "eval_seconds", "peak_memory_mb", "device",
    "precision_mode", "history", "torch_version",
}  # fmt: skip


def sentiment(n: int, seed: int = 0) -> datasets.Dataset:
    """Invented sentences; label 1 when the one sentiment word in them is positive."""
    rng = random.Random(seed)
    rows: dict[str, list] = {"text": [], "label": []}
    for _ in range(n):
        label = rng.randrange(2)
        words = rng.sample(FILLER, rng.randint(1, 5))
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        rows["text"].append(" ".join(words))
        rows["label"].append(label)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    return datasets.Dataset.from_dict(rows, features=features)


def ner(n: int, seed: int = 0) -> datasets.Dataset:
    """Invented sentences of filler words and entities ("alice" PER, "acme corp" ORG, ...)."""
    entities = {
        "PER": [["alice"], ["bob"], ["alices"]],
        "LOC": [["paris"], ["rome"]],
        "ORG": [["acme", "corp"], ["acme"]],
    }
    rng = random.Random(seed)
    rows: dict[str, list] = {"tokens": [], "ner_tags": []}
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(2, 5)):
            if rng.random() < 0.4:
                kind = rng.choice(sorted(entities))
                words = rng.choice(entities[kind])
                tokens += words
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        rows["tokens"].append(tokens)
        rows["ner_tags"].append([TAGS.index(t) for t in tags])
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=TAGS)),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


# --------------------------------------------------------------------------- metrics


def test_accuracy():
    assert accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == 0.5
    assert accuracy(np.array([3]), np.array([3])) == 1.0
    with pytest.raises(ValueError, match="one shape"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="non-empty"):
        accuracy([], [])


@pytest.mark.parametrize(
    "tags, expected",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),
        (["O", "O"], set()),
        (["B-ORG", "I-ORG", "I-ORG"], {("ORG", 0, 3)}),  # entity running to the end
        (["I-PER", "I-PER", "O"], {("PER", 0, 2)}),  # stray I- starts an entity (conlleval)
        (["O", "I-LOC"], {("LOC", 1, 2)}),
        (["B-PER", "B-PER", "I-PER"], {("PER", 0, 1), ("PER", 1, 3)}),  # adjacent, same type
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),  # type switch inside I-
        (["B-MISC", "I-PER"], {("MISC", 0, 1), ("PER", 1, 2)}),
        ([], set()),
    ],
)
def test_extract_entities(tags, expected):
    assert extract_entities(tags) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TAGS), max_size=12))
def test_extract_entities_partitions_the_tagged_tokens(tags):
    entities = sorted(extract_entities(tags), key=lambda e: e[1])
    covered = [i for _, start, end in entities for i in range(start, end)]
    assert covered == [i for i, tag in enumerate(tags) if tag != "O"]  # each once, in order
    for kind, start, end in entities:
        assert all(tag[2:] == kind for tag in tags[start:end])
        assert all(tag.startswith("I-") for tag in tags[start + 1 : end])
    assert entity_f1([tags], [tags])["f1"] == (1.0 if entities else 0.0)


def test_extract_entities_rejects_non_iob2():
    with pytest.raises(ValueError, match="'PER' at position 1 is not IOB2"):
        extract_entities(["O", "PER"])
    with pytest.raises(ValueError, match="not IOB2"):
        extract_entities(["E-PER"])


def test_entity_f1_by_hand():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-PER"]]
    # true: PER(0,2) LOC(3,4) | ORG(0,1) PER(2,3)  → 4 entities
    # pred: PER(0,2) ORG(3,4) | ORG(0,1) PER(2,3)  → 4 entities, 3 right (type mismatch at 3)
    scores = entity_f1(true, pred)
    assert scores["precision"] == pytest.approx(3 / 4)
    assert scores["recall"] == pytest.approx(3 / 4)
    assert scores["f1"] == pytest.approx(3 / 4)
    per_type = scores["per_type"]
    assert per_type["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert per_type["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert per_type["ORG"]["precision"] == 0.5 and per_type["ORG"]["recall"] == 1.0
    assert per_type["ORG"]["f1"] == pytest.approx(2 / 3) and per_type["ORG"]["support"] == 1


def test_entity_f1_boundaries_must_match_exactly():
    # true PER(0,2); predicted PER(0,1) and a stray-I PER(1,2): right type, wrong boundaries.
    scores = entity_f1([["B-PER", "I-PER"]], [["B-PER", "B-PER"]])
    assert scores["precision"] == 0.0 and scores["recall"] == 0.0 and scores["f1"] == 0.0
    # precision 1/1, recall 1/2 → F1 = 2/3
    scores = entity_f1([["B-LOC", "O", "B-LOC"]], [["B-LOC", "O", "O"]])
    assert (scores["precision"], scores["recall"]) == (1.0, 0.5)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert entity_f1([["O"]], [["O"]]) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "per_type": {},
    }
    with pytest.raises(ValueError, match="sequence 0: 2 true tags but 1"):
        entity_f1([["O", "O"]], [["O"]])


def test_align_labels_first_subword(tiny_bert):
    assert align_labels([None, 0, 1, 1, 2, None], [5, 6, 0]) == [-100, 5, 6, -100, 0, -100]
    tokenizer, _ = load_text_model("token", 9, tiny_bert)
    enc = tokenizer([["alices", "met", "bob"]], is_split_into_words=True)
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][0]) == [
        "[CLS]", "alice", "##s", "met", "bob", "[SEP]"
    ]  # fmt: skip
    assert align_labels(enc.word_ids(0), [1, 0, 1]) == [-100, 1, -100, 0, 1, -100]


def test_word_predictions_fill_unlabelled_words_with_o():
    # words 0, 1, 3 have a first sub-word; word 2 was dropped and word 4 cut off by truncation.
    assert word_predictions([0, 1, 3], [1, 2, 5], 5, TAGS) == ["B-PER", "I-PER", "O", "B-LOC", "O"]


def test_linear_schedule():
    factors = [linear_schedule(s, warmup_steps=2, total_steps=10) for s in range(10)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert factors[2:] == pytest.approx([(10 - s) / 8 for s in range(2, 10)])
    assert linear_schedule(0, 0, 4) == 1.0 and linear_schedule(3, 0, 4) == 0.25


# --------------------------------------------------------------------------- methods


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", METHODS)
def test_prepare_model_trainable_sets(tiny_bert, method):
    _, model = load_text_model("sequence", 2, tiny_bert)
    everything = {n for n, _ in model.named_parameters()}
    targets = prepare_model(model, method, LoRAConfig(["query", "value"], r=2))
    names = trainable(model)
    head = {"classifier.weight", "classifier.bias"}
    assert head <= names
    if method == "full":
        assert names == everything and targets == []
    elif method == "head":
        assert names == head
    elif method == "bitfit":
        biases = {n for n in everything if n.endswith(".bias")}
        assert names == biases | head and any("LayerNorm.bias" in n for n in names)
    else:
        assert len(targets) == 4 and all(t.endswith(("query", "value")) for t in targets)
        lora = {n for n in names if n.endswith((".lora_A", ".lora_B"))}
        assert names == lora | head and len(lora) == 8


def test_prepare_model_on_tinyvit_and_errors():
    vit = small_vit()
    targets = prepare_model(vit, "lora", LoRAConfig(["query", "value", "output"], r=2))
    assert len(targets) == 6
    assert {n for n in trainable(vit) if not n.startswith("classifier")} == {
        f"{t}.{ab}" for t in targets for ab in ("lora_A", "lora_B")
    }
    with pytest.raises(ValueError, match="unknown method 'prefix'; expected one of lora"):
        prepare_model(small_vit(), "prefix")
    with pytest.raises(ValueError, match="no module named 'classifier'"):
        prepare_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), "head")


def test_also_train_adds_named_parameters_to_any_method_and_names_a_miss():
    vit = small_vit()
    prepare_model(
        vit, "lora", LoRAConfig(["query", "value"], r=2), also_train=["position_embedding"]
    )
    extra = {n for n in trainable(vit) if "lora_" not in n and not n.startswith("classifier")}
    assert extra == {"position_embedding"}
    head = small_vit()
    prepare_model(head, "head", also_train=("blocks.0",))  # a module: every parameter in it
    inside = {n for n, _ in head.named_parameters() if n.startswith("blocks.0.")}
    assert inside and {n for n in trainable(head) if not n.startswith("classifier")} == inside
    with pytest.raises(ValueError, match="'locks.0', which matches no parameter"):
        prepare_model(small_vit(), "head", also_train=["locks.0"])  # whole dotted parts only
    with pytest.raises(ValueError, match="'pos_embed', which matches no parameter of TinyViT"):
        prepare_model(small_vit(), "lora", also_train=["pos_embed"])
    with pytest.raises(ValueError, match="method='none' trains nothing"):
        prepare_model(small_vit(), "none", also_train=["position_embedding"])


def test_task_defaults_cover_every_method_of_every_kind():
    assert set(TASK_DEFAULTS) == {"text", "token", "image"}
    for kind, defaults in TASK_DEFAULTS.items():
        assert set(defaults.lr) == set(METHODS) == {"lora", "full", "head", "bitfit"}, kind
        # an adapter or a probe starts from zero or from random and moves few weights: a larger
        # rate than full fine-tuning's, on every kind of task the pilots measured
        assert defaults.lr["full"] < min(defaults.lr["lora"], defaults.lr["head"]), kind
        assert defaults.epochs >= 1 and defaults.evidence


def test_the_default_head_rate_applies_only_beside_another_method():
    from lora_edu.defaults import TaskDefaults

    d = TaskDefaults(lr={}, target_modules=("query",), epochs=1, head_lr=0.1, evidence="test")
    assert d.loop("lora", {}) == {"head_lr": 0.1}
    assert d.loop("full", {"warmup_ratio": 0.1}) == {"warmup_ratio": 0.1, "head_lr": 0.1}
    assert d.loop("lora", {"head_lr": 0.01}) == {"head_lr": 0.01}  # the caller's wins
    assert d.loop("lora", {"head_lr": None}) == {"head_lr": None}  # explicitly the method's rate
    assert d.loop("head", {}) == {} == d.loop("none", {})  # a probe trains at lr itself
    plain = TaskDefaults(lr={}, target_modules=("query",), epochs=1, head_lr=None, evidence="")
    assert plain.loop("lora", {"warmup_ratio": 0.1}) == {"warmup_ratio": 0.1}


# --------------------------------------------------------------------------- training runs


@pytest.mark.parametrize("method", METHODS)
def test_text_classifier_runs_every_method(tiny_bert, method):
    train, eval_ = sentiment(48), sentiment(16, seed=1)
    record = finetune_text_classifier(
        train, eval_, method=method, model=tiny_bert, lora=LoRAConfig(["query", "value"], r=2),
        epochs=2, batch_size=16, progress=False,
    )  # fmt: skip
    assert RECORD_KEYS <= set(record)
    assert record["method"] == method and record["lr"] == TASK_DEFAULTS["text"].lr[method]
    assert record["lr_is_default"] and record["steps"] == 6 and len(record["history"]["loss"]) == 6
    assert [e["epoch"] for e in record["history"]["epochs"]] == [1, 2]
    assert record["metric_name"] == "accuracy" and 0 <= record["metric"] <= 1
    assert record["n_train"] == 48 and record["n_eval"] == 16 and record["num_labels"] == 2
    assert record["device"] == "cpu" and record["peak_memory_mb"] is None
    assert record["train_seconds"] > 0 and record["trainable_params"] > 0
    assert (record["trainable_params"] == record["total_params"]) == (method == "full")
    assert (record["r"] == 2) == (method == "lora")
    assert json.loads(json.dumps(record)) == record  # JSON-ready, for the sweep's JSON lines
    assert bool(record["lora_targets"]) == (method == "lora")
    # the final model's verdict per example, once (not in every epoch of the history)
    verdicts = record["eval_correct"]
    assert len(verdicts) == 16 and verdicts.count("1") / 16 == pytest.approx(record["metric"])
    assert not any("eval_correct" in e for e in record["history"]["epochs"])


def test_text_classifier_learns_an_easy_task_and_is_deterministic(tiny_bert):
    train, eval_ = sentiment(96), sentiment(48, seed=1)
    kwargs = dict(method="full", model=tiny_bert, lr=1e-2, epochs=6, batch_size=16, progress=False)
    record, model = finetune_text_classifier(train, eval_, return_model=True, **kwargs)
    losses = record["history"]["loss"]
    assert np.mean(losses[-6:]) < 0.3 * np.mean(losses[:6])
    assert record["metric"] >= 0.9
    assert record["history"]["lr"][0] < record["history"]["lr"][3] > record["history"]["lr"][-1]
    assert isinstance(model, torch.nn.Module)
    again = finetune_text_classifier(train, eval_, **kwargs)
    assert again["history"]["loss"] == losses and again["metric"] == record["metric"]
    other_seed = finetune_text_classifier(train, eval_, **{**kwargs, "seed": 1})
    assert other_seed["history"]["loss"] != losses


def test_text_classifier_trains_a_model_given_as_base_in_place(tiny_bert):
    train = sentiment(32)
    tokenizer, net = load_text_model("sequence", 2, tiny_bert)
    before = net.classifier.weight.detach().clone()
    record, model = finetune_text_classifier(
        train, None, method="full", base=net, tokenizer=tokenizer, lr=1e-2, batch_size=16,
        progress=False, return_model=True,
    )  # fmt: skip
    assert model is net and not torch.equal(net.classifier.weight, before)
    with pytest.raises(ValueError, match="without its tokenizer"):
        finetune_text_classifier(train, None, base=net, progress=False)
    _, three = load_text_model("sequence", 3, tiny_bert)
    with pytest.raises(ValueError, match="classifier with 3 outputs but the data has 2 labels"):
        finetune_text_classifier(train, None, base=three, tokenizer=tokenizer, progress=False)


def test_lora_settings_travel_as_one_config(tiny_bert):
    """One LoRAConfig carries the settings to apply_lora and into the record; left out, it is
    the task kind's targets with LoRAConfig's defaults; the old keywords are refused."""
    train = sentiment(16)
    common = dict(model=tiny_bert, epochs=1, batch_size=8, progress=False)
    config = LoRAConfig(["query", "key"], r=3, alpha=6, dropout=0.1, init="gaussian")
    by_config = finetune_text_classifier(train, None, lora=config, **common)
    assert by_config["target_modules"] == ["query", "key"] and by_config["dropout"] == 0.1
    assert (by_config["r"], by_config["alpha"], by_config["init"]) == (3, 6, "gaussian")
    default = finetune_text_classifier(train, None, **common)
    explicit = finetune_text_classifier(train, None, lora=LoRAConfig(["query", "value"]), **common)
    fields = ("target_modules", "r", "alpha", "dropout", "init", "use_rslora", "lora_targets")
    assert {k: default[k] for k in fields} == {k: explicit[k] for k in fields}
    assert default["history"]["loss"] == explicit["history"]["loss"]
    with pytest.raises(TypeError, match=r"no longer takes r=; .*lora=LoRAConfig"):
        finetune_text_classifier(train, None, lora=config, r=4, **common)
    with pytest.raises(TypeError, match="lora= takes a lora_edu.LoRAConfig, got dict"):
        finetune_text_classifier(train, None, lora={"r": 4}, **common)
    full = finetune_text_classifier(train, None, method="full", lora=config, **common)
    assert full["r"] is None and full["target_modules"] is None


def test_lora_config_checks_its_settings_when_made():
    with pytest.raises(ValueError, match=r"r \(the rank\) must be a positive int, got 0"):
        LoRAConfig(["query"], r=0)
    with pytest.raises(ValueError, match="target_modules is empty"):
        LoRAConfig([])


def test_text_classifier_infers_labels_without_classlabel(tiny_bert):
    train = datasets.Dataset.from_dict({"text": ["good", "bad", "the film"], "label": [0, 2, 1]})
    record = finetune_text_classifier(train, None, model=tiny_bert, method="head", progress=False)
    assert record["num_labels"] == 3 and record["metric"] is None and record["n_eval"] is None


def test_text_classifier_errors(tiny_bert):
    wrong = datasets.Dataset.from_dict({"sentence": ["good"], "label": [1]})
    with pytest.raises(ValueError, match=r"columns \['text', 'label'\].*'sentence'"):
        finetune_text_classifier(wrong, None, model=tiny_bert, progress=False)
    with pytest.raises(ValueError, match="unknown method 'adapter'"):
        finetune_text_classifier(sentiment(4), None, model=tiny_bert, method="adapter")


@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_token_classifier_runs(tiny_bert, method):
    train, eval_ = ner(48), ner(16, seed=1)
    record = finetune_token_classifier(
        train, eval_, method=method, model=tiny_bert, epochs=2, batch_size=16, progress=False
    )
    assert RECORD_KEYS | {"precision", "recall", "per_type", "label_names"} <= set(record)
    assert record["metric_name"] == "entity_f1" and 0 <= record["metric"] <= 1
    assert record["num_labels"] == 9 and record["label_names"] == TAGS
    assert set(record["per_type"]) <= {"PER", "LOC", "ORG", "MISC"}
    assert all(
        set(v) == {"precision", "recall", "f1", "support"} for v in record["per_type"].values()
    )


def test_token_classifier_defaults_are_the_token_tasks(tiny_bert):
    """Left out, the rate, the targets, the epochs and the head's rate are the token task's."""
    defaults = TASK_DEFAULTS["token"]
    record = finetune_token_classifier(
        ner(16), None, model=tiny_bert, batch_size=16, progress=False
    )
    assert record["lr"] == defaults.lr["lora"] and record["lr_is_default"]
    assert (
        record["target_modules"] == defaults.target_modules and record["epochs"] == defaults.epochs
    )
    assert record.get("head_lr") == defaults.head_lr
    text = finetune_text_classifier(
        sentiment(16), None, model=tiny_bert, batch_size=16, progress=False
    )
    assert text["target_modules"] == ["query", "value"] and len(text["lora_targets"]) < len(
        record["lora_targets"]
    )
    assert text["epochs"] == TASK_DEFAULTS["text"].epochs and "head_lr" not in text


def test_token_classifier_learns_and_handles_truncation(tiny_bert):
    train, eval_ = ner(96), ner(48, seed=1)
    kwargs = dict(method="full", model=tiny_bert, lr=1e-2, epochs=5, batch_size=16, progress=False)
    record = finetune_token_classifier(train, eval_, **kwargs)
    losses = record["history"]["loss"]
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]) and record["metric"] > 0.8
    # max_length=4 keeps [CLS] + 2 words + [SEP]: later words are predicted "O" (recall drops).
    short = finetune_token_classifier(train, eval_, **{**kwargs, "max_length": 4, "epochs": 1})
    assert short["recall"] < 0.8 and 0 <= short["metric"] <= 1


def test_token_classifier_errors(tiny_bert):
    plain = datasets.Dataset.from_dict({"tokens": [["alice"]], "ner_tags": [[1]]})
    with pytest.raises(ValueError, match="label_names="):
        finetune_token_classifier(plain, None, model=tiny_bert, progress=False)
    with pytest.raises(ValueError, match="ids up to 1 but label_names has 1"):
        finetune_token_classifier(plain, None, model=tiny_bert, label_names=["O"], progress=False)
    with pytest.raises(ValueError, match=r"\['tokens', 'ner_tags'\]"):
        finetune_token_classifier(sentiment(4), None, model=tiny_bert, progress=False)


@pytest.mark.parametrize("method", METHODS)
def test_vit_runs_every_method_and_leaves_base_alone(method):
    base = small_vit(depth=1)
    before = {n: p.clone() for n, p in base.state_dict().items()}
    train, eval_ = synthetic_digits(64), synthetic_digits(32, seed=1)
    record, model = finetune_vit(
        train, eval_, base=base, method=method,
        lora=LoRAConfig(TASK_DEFAULTS["image"].target_modules, r=2), epochs=1, batch_size=32,
        progress=False, return_model=True,
    )  # fmt: skip
    assert RECORD_KEYS | {"vit_config", "base"} <= set(record)
    assert record["num_labels"] == 6 and model.classifier.out_features == 6
    assert record["vit_config"]["num_classes"] == 6 and record["max_length"] is None
    assert all(torch.equal(before[n], p) for n, p in base.state_dict().items())
    assert json.loads(json.dumps(record)) == record


def test_vit_learns_from_a_dataset_and_is_deterministic():
    images, labels = synthetic_digits(320)
    features = datasets.Features(
        {
            "image": datasets.Array2D((28, 28), "uint8"),
            "label": datasets.ClassLabel(num_classes=8),
        }
    )
    ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    train, eval_ = ds.select(range(256)), ds.select(range(256, 320))
    kwargs = dict(base=small_vit(depth=1), method="full", lr=1e-2, epochs=8, batch_size=32)
    record = finetune_vit(train, eval_, progress=False, **kwargs)
    losses = record["history"]["loss"]
    assert record["num_labels"] == 8  # from the ClassLabel, though only labels 0-5 occur
    assert np.mean(losses[-4:]) < 0.2 * np.mean(losses[:4]) and record["metric"] > 0.9
    again = finetune_vit(train, eval_, progress=False, **kwargs)
    assert again["history"]["loss"] == losses and again["metric"] == record["metric"]


def test_vit_resizes_other_image_sizes():
    images, labels = synthetic_digits(48)
    small = images[:, ::4, ::4][:, :7, :7].copy()  # 7×7, like scikit-learn's 8×8 digits
    record = finetune_vit(
        (small[:32], labels[:32]), (small[32:], labels[32:]), base=small_vit(depth=1),
        method="head", epochs=1, batch_size=16, progress=True,  # the bar's code path too
    )  # fmt: skip
    assert record["resized_from"] == [7, 7] and record["vit_config"]["image_size"] == 28
    assert record["num_labels"] == int(labels.max()) + 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runs_in_bf16_and_measures_memory(tiny_bert):
    record = finetune_text_classifier(
        sentiment(64), sentiment(32, seed=1), model=tiny_bert, method="lora", epochs=2,
        device="cuda", progress=False,
    )  # fmt: skip
    assert record["device"].startswith("cuda") and record["precision_mode"] == "bf16-autocast"
    assert record["peak_memory_mb"] > 0 and 0 <= record["metric"] <= 1
    vit = finetune_vit(
        synthetic_digits(64), synthetic_digits(32, seed=1), base=small_vit(depth=1),
        method="full", lr=1e-2, epochs=3, batch_size=16, device="cuda", progress=False,
    )  # fmt: skip
    losses = vit["history"]["loss"]
    assert vit["peak_memory_mb"] > 0 and np.mean(losses[-3:]) < np.mean(losses[:3])


# --------------------------------------------------------------------------- NER predictions


def test_format_entities():
    words = ["Peter", "Blackburn", "met", "EU", "staff"]
    tags = ["B-PER", "I-PER", "O", "B-ORG", "O"]
    assert format_entities(words, tags) == "[Peter Blackburn]PER met [EU]ORG staff"
    # A stray I- starts an entity and B- after the same type starts a second (extract_entities).
    assert format_entities(["a", "b", "c"], ["I-LOC", "B-LOC", "I-LOC"]) == "[a]LOC [b c]LOC"
    assert format_entities([], []) == ""
    with pytest.raises(ValueError, match="2 words but 1 tags"):
        format_entities(["a", "b"], ["O"])


def test_predict_tags_reproduces_the_training_evaluation(tiny_bert):
    train, eval_ = ner(48), ner(24, seed=1)
    # max_length=6 keeps at most 4 first sub-words: later words must come back as "O".
    kwargs = dict(method="full", model=tiny_bert, lr=1e-2, epochs=2, batch_size=16, max_length=6)
    record, model = finetune_token_classifier(
        train, eval_, progress=False, return_model=True, **kwargs
    )
    pred = predict_tags(model, eval_, model_name=tiny_bert, max_length=6)
    true = [[TAGS[i] for i in t] for t in eval_["ner_tags"]]
    assert [len(p) for p in pred] == [len(t) for t in true]
    assert any(len(p) > 4 for p in pred) and all(set(p[4:]) <= {"O"} for p in pred)
    scores = entity_f1(true, pred)
    assert record["metric"] > 0.3 and scores["f1"] == record["metric"]
    assert scores["per_type"] == record["per_type"]
    # Prediction needs the words only; the tag names then come from label_names.
    words_only = eval_.remove_columns("ner_tags")
    again = predict_tags(model, words_only, label_names=TAGS, model_name=tiny_bert, max_length=6)
    assert again == pred
    with pytest.raises(ValueError, match="label_names="):
        predict_tags(model, words_only, model_name=tiny_bert)
    with pytest.raises(ValueError, match="predicts 9 labels but 3 tag names"):
        predict_tags(model, words_only, label_names=TAGS[:3], model_name=tiny_bert)


# --------------------------------------------------------------------------- collapse onto one class


def test_label_shares_and_the_collapse_rule():
    from lora_edu.train import collapsed_class, label_shares

    assert label_shares([1, 1, 0, 1]) == {"1": 0.75, "0": 0.25}
    assert label_shares([]) == {}
    balanced = {"0": 0.5, "1": 0.5}
    assert collapsed_class({"predicted_share": {"0": 1.0}, "true_share": balanced}) == "0"
    assert (
        collapsed_class({"predicted_share": {"0": 0.9, "1": 0.1}, "true_share": balanced}) is None
    )
    # predicting the majority everywhere is no collapse when the data is (nearly) all that class
    assert collapsed_class({"predicted_share": {"O": 1.0}, "true_share": {"O": 0.97}}) is None
    assert collapsed_class({"metric": 0.5}) is None


def test_fit_warns_and_records_when_every_prediction_is_one_class():
    from lora_edu.train import _accuracy_evaluator, fit

    class Constant(torch.nn.Module):  # always class 0: its only parameter, a bias, barely moves
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.tensor([10.0, 0.0]))

        def forward(self, x):
            return self.bias.expand(len(x), 2)

    labels = torch.tensor([0, 1] * 8)

    def collate(indices):
        return {"x": indices.float()}, labels[indices]

    evaluate = _accuracy_evaluator(16, collate, 8)
    with pytest.warns(
        UserWarning, match=r"epoch 1: 100\.0% of the predictions are '0', which is 50\.0%"
    ):
        result = fit(Constant(), 16, collate, evaluate, epochs=1, lr=1e-6, batch_size=8, seed=0,
                     device=torch.device("cpu"), progress=False)  # fmt: skip
    (epoch,) = result["history"]["epochs"]
    assert epoch["collapsed"] == "0" and epoch["predicted_share"] == {"0": 1.0}
    assert epoch["true_share"] == {"0": 0.5, "1": 0.5}


def test_token_classifier_records_the_tag_distribution(tiny_bert):
    record = finetune_token_classifier(
        ner(32), ner(8, seed=1), model=tiny_bert, lora=LoRAConfig("all-linear", r=2), epochs=1,
        batch_size=16, progress=False,
    )  # fmt: skip
    shares = record["history"]["epochs"][0]["predicted_share"]
    assert set(shares) <= set(TAGS) and sum(shares.values()) == pytest.approx(1.0)
    assert record["true_share"]["O"] == pytest.approx(
        sum(t == 0 for tags in ner(8, seed=1)["ner_tags"] for t in tags)
        / sum(len(tags) for tags in ner(8, seed=1)["ner_tags"])
    )


def test_entity_counts_sum_to_the_micro_scores():
    from lora_edu.train import entity_counts, entity_f1

    true = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "B-ORG"], ["O"]]
    pred = [["B-PER", "I-PER", "O"], ["B-LOC", "B-MISC", "O"], ["B-PER"]]
    counts = np.array(entity_counts(true, pred))
    assert counts.tolist() == [[1, 1, 1], [1, 2, 2], [0, 1, 0]]
    hits, predicted, truth = counts.sum(axis=0)
    assert entity_f1(true, pred)["f1"] == pytest.approx(2 * hits / (predicted + truth))
    with pytest.raises(ValueError, match="true sequences"):
        entity_counts(true, pred[:2])


# --------------------------------------------------------------------------- settings as objects


def _finetune_functions() -> dict[str, Any]:
    from lora_edu import detection, matching, train

    return {
        "finetune_text_classifier": train.finetune_text_classifier,
        "finetune_token_classifier": train.finetune_token_classifier,
        "finetune_vit": train.finetune_vit,
        "finetune_causal_lm": train.finetune_causal_lm,
        "finetune_detector": detection.finetune_detector,
        "finetune_matcher": matching.finetune_matcher,
    }


#: The LoRA settings the finetune_* functions took as separate keywords before ``lora=``.
OLD_LORA_KEYWORDS = ("r", "alpha", "target_modules", "dropout", "init", "use_rslora")


@pytest.mark.parametrize("name", sorted(_finetune_functions()))
def test_lora_settings_come_only_as_a_lora_config(name):
    """The signature names ``lora`` and none of the old keywords; an old keyword raises a
    TypeError naming it and the LoRAConfig to pass instead, before any data or model is read."""
    parameters = inspect.signature(_finetune_functions()[name]).parameters
    required = {
        n: None for n, p in parameters.items() if p.default is p.empty and p.kind == p.KEYWORD_ONLY
    }
    func = functools.partial(_finetune_functions()[name], **required)  # base=, image_base=
    assert (
        parameters["lora"].default is None
        and parameters["lora"].kind is inspect.Parameter.KEYWORD_ONLY
    )
    assert not set(OLD_LORA_KEYWORDS) & set(parameters)
    for keyword in OLD_LORA_KEYWORDS:
        value = ("query",) if keyword == "target_modules" else 4
        with pytest.raises(
            TypeError, match=rf"^{name}\(\) no longer takes {keyword}=; .*lora=LoRAConfig\("
        ):
            func(None, None, **{keyword: value})
    with pytest.raises(TypeError, match=r"lora=LoRAConfig\(\('query', 'key'\), r=4, alpha=8\)"):
        func(None, None, r=4, alpha=8, target_modules=["query", "key"])
    with pytest.raises(TypeError, match=r"LoRAConfig\(.*dropout=0\.1\)"):  # PEFT's name for it
        func(None, None, lora_dropout=0.1)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) epoch; .*warmup_ratio"):
        func(None, None, epoch=3)


def test_the_old_keyword_message_shows_the_task_kinds_targets():
    with pytest.raises(TypeError) as caught:
        finetune_token_classifier(None, None, r=4)
    assert str(caught.value).startswith(
        "finetune_token_classifier() no longer takes r=; the LoRA settings travel as one object: "
        "pass lora=LoRAConfig('all-linear', r=4)"
    )


def test_the_loop_settings_default_to_fits_own():
    """LoopSettings is what a finetune_* call hands the loop; left empty it changes nothing."""
    from lora_edu.train import LoopSettings, fit

    defaults = {n: p.default for n, p in inspect.signature(fit).parameters.items()}
    # what trains besides the method is set up before the loop, by prepare_model
    defaults["also_train"] = inspect.signature(prepare_model).parameters["also_train"].default
    for f in dataclasses.fields(LoopSettings):
        assert f.default == defaults[f.name], f.name
    assert LoopSettings.from_keywords("f()", {"head_lr": None}) == LoopSettings()
    settings = LoopSettings.from_keywords("f()", {"warmup_ratio": 0.2, "eval_every": 3})
    assert (settings.warmup_ratio, settings.eval_every) == (0.2, 3)


def test_the_training_code_reads_no_locals_and_closes_no_import_circle():
    """Settings flow through named calls (never ``locals()``), and nothing the training side
    imports imports it back: models, the loop and the task modules form no circle."""
    import lora_edu

    root = Path(lora_edu.__file__).parent
    files = [root / "train.py", root / "models.py", root / "detection.py", root / "matching.py"]
    files += sorted((root / "training").glob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text())
        calls = [
            n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "locals"
        ]  # fmt: skip
        assert not calls, f"{path.name} calls locals() at line(s) {calls}"
    for path in [root / "models.py", *sorted((root / "training").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        upward = {m for m in imported if m == "lora_edu.train" or m.startswith("lora_edu.sweep")}
        assert not upward, f"{path.name} imports {upward}"
        if path.name == "models.py":
            assert not {m for m in imported if m.startswith("lora_edu.training")}


def test_lora_edu_train_still_offers_every_name_its_users_import():
    import lora_edu.train as train

    used = [
        "CAUSAL_LM_LR", "LLAMA_QV", "METHODS", "Collate", "_accuracy_evaluator", "_check_method",
        "_run", "accuracy", "align_labels", "causal_lm_loss", "collapsed_class", "entity_counts",
        "entity_f1", "extract_entities", "finetune_causal_lm", "finetune_text_classifier",
        "finetune_token_classifier", "finetune_vit", "fit", "format_entities", "label_shares",
        "linear_schedule", "predict", "predict_tags", "prepare_model", "pretrained_vit",
        "seed_everything", "text_classifier_accuracy", "word_predictions",
    ]  # fmt: skip
    assert not [n for n in used if not hasattr(train, n)]
    assert set(train.__all__) <= set(vars(train))
