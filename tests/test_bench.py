"""``lora_edu.bench`` on a tiny BERT and a tiny Llama: every documented key, the modes' setup
(equal weights, a floor that is frozen yet passes gradients back, exact trainable counts), the
ratios, decoding (merged = unmerged), the command line. No timing is asserted here: timings are
checked by running the benchmark, not by unit tests."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from contextlib import nullcontext

import pytest
import torch
from transformers import BertConfig, BertModel

from lora_edu import bench
from lora_edu.lora import LoRALinear, merge_lora
from lora_edu.models import MeanPoolClassifier

TOP_KEYS = {
    "config",
    "machine",
    "train",
    "inference",
    "merged_max_abs_diff",
    "layer",
    "ratios",
    "paired_ratios",
    "targets",
    "meets_targets",
    "memory_method",
    "skipped",
}
TRAIN_KEYS = {
    "median_ms",
    "times_ms",
    "trainable_params",
    "total_params",
    "optimizer_state_bytes",
    "peak_memory_mb",
}
# One thread: tiny operators on a busy machine otherwise wait on each other's threads.
TINY = {
    "model": "tiny-bert",
    "batch": 2,
    "seq": 8,
    "reps": 2,
    "warmup": 1,
    "device": "cpu",
    "threads": 1,
}


def tiny_model() -> MeanPoolClassifier:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=100,
    )
    return MeanPoolClassifier(BertModel(config, add_pooling_layer=False), 2, 0.1, 0)


def without_adapter_names(name: str) -> str:
    """A weight's name as in the plain model: lora_edu and PEFT wrap adapted layers
    (``base_layer``), and PEFT keeps the head twice (``original_module``, a trainable copy)."""
    for wrapper in (".base_layer", ".original_module", ".modules_to_save.default"):
        name = name.replace(wrapper, "")
    return name.removeprefix("base_model.model.")


def test_tiny_bert_is_the_documented_config():
    built = bench.bench_model("tiny-bert").encoder.config
    reference = tiny_model().encoder.config
    for key, value in bench.TINY_BERT.items():
        assert getattr(built, key) == getattr(reference, key) == value


def test_every_mode_starts_from_equal_weights_and_equal_outputs():
    base = tiny_model()
    config = bench.BenchConfig(**TINY)
    batch = bench.make_batch(base, 3, 5, torch.device("cpu"))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    expected = base.eval()(**inputs).logits
    reference = base.state_dict()
    for mode in bench.MODES:
        model = bench.build_mode(base, mode, config).eval()
        state = {
            n: t
            for n, t in model.state_dict().items()
            if "lora_" not in n and "input_scale" not in n  # the adapter's own parameters
        }
        assert {without_adapter_names(n) for n in state} == set(reference)
        for name, tensor in state.items():
            plain = without_adapter_names(name)
            assert torch.equal(tensor, reference[plain]), f"{mode}: {name} differs from the base"
        # B = 0 and a scale of 1.0: every mode computes the base model's function at the start
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=1e-6)
    assert all(torch.equal(base.state_dict()[k], t) for k, t in reference.items())  # untouched


def test_floor_freezes_every_base_weight_and_still_sends_gradients_to_the_embeddings():
    model = bench.build_mode(tiny_model(), "floor", bench.BenchConfig(**TINY)).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"encoder.embeddings.input_scale", "classifier.weight", "classifier.bias"}
    assert not any(isinstance(m, LoRALinear) for m in model.modules())

    seen = {}

    def keep(module, args, output):  # runs after the floor's own hook: sees the scaled output
        output.retain_grad()
        seen["embeddings"] = output

    model.encoder.embeddings.register_forward_hook(keep)
    batch = bench.make_batch(model, 2, 6, torch.device("cpu"))
    model(**batch).loss.backward()
    grad = seen["embeddings"].grad
    assert grad is not None and grad.shape == (2, 6, 32) and grad.abs().sum() > 0
    assert model.encoder.embeddings.input_scale.grad.abs() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


@pytest.mark.parametrize("targets", [("query", "value"), ("all-linear",)])
def test_lora_and_peft_modes_adapt_the_same_layers(targets):
    base = tiny_model()
    config = bench.BenchConfig(**TINY | {"targets": targets})
    lora = bench.build_mode(base, "lora", config)
    peft_model = bench.build_mode(base, "peft", config)
    ours = {n for n, m in lora.named_modules() if isinstance(m, LoRALinear)}
    theirs = {
        n.removeprefix("base_model.model.")
        for n, m in peft_model.named_modules()
        if hasattr(m, "lora_A") and not isinstance(m, LoRALinear)
    }
    assert ours == theirs and len(ours) == (4 if len(targets) == 2 else 12)
    counts = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (lora, peft_model)]
    if len(targets) == 2:  # r (d_in + d_out) per adapted layer + the head (32·2 + 2)
        assert counts[0] == 4 * 8 * (32 + 32) + 66
    assert counts[0] == counts[1]


def test_run_bench_end_to_end_through_the_command_line(tmp_path, capsys):
    out = tmp_path / "bench.json"
    flags = ["--model", "tiny-bert", "--batch", "2", "--seq", "8", "--reps", "2", "--threads", "1"]
    code = bench.main(
        [*flags, "--warmup", "1", "--device", "cpu", "--no-memory", "--json", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) == TOP_KEYS
    assert set(result["config"]) == {
        *("model", "batch", "seq", "r", "alpha", "targets", "device", "precision"),
        *("reps", "warmup", "lr", "seed", "threads", "memory", "checkpointing", "chunked_loss"),
    }
    assert set(result["machine"]) == {
        *("python", "platform", "processor", "cpu_count", "torch", "transformers", "peft"),
        "device_name",
    }
    assert set(result["train"]) == set(bench.MODES)
    for row in result["train"].values():
        assert set(row) == TRAIN_KEYS and len(row["times_ms"]) == 2 and row["median_ms"] > 0
        assert row["peak_memory_mb"] is None  # --no-memory
    assert set(result["inference"]) == set(bench.INFERENCE)
    assert set(result["ratios"]) == set(result["paired_ratios"]) == set(bench.RATIOS)
    assert all(v is not None for v in result["ratios"].values())
    assert set(result["meets_targets"]) == set(bench.TARGETS)
    assert result["merged_max_abs_diff"] < 1e-4  # merging kept the trained model's outputs
    assert result["layer"]["max_rel_diff"] < 1e-5  # numpy and torch layers agree
    assert result["layer"]["shape"] == {"tokens": 16, "d_in": 32, "d_out": 32, "r": 8}
    assert result["skipped"] == {"memory": "not requested (--no-memory)"}
    trained = {m: r["trainable_params"] for m, r in result["train"].items()}
    assert trained["full"] > trained["lora"] == trained["peft"] > trained["floor"] == 67
    states = {m: r["optimizer_state_bytes"] for m, r in result["train"].items()}
    assert states["full"] > states["lora"] > states["floor"] > 0
    printed = capsys.readouterr().out
    assert "lora/floor" in printed and "training step" in printed


def test_peft_mode_is_skipped_with_a_reason_when_peft_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` raise ImportError
    assert "not installed" in bench.peft_missing()
    result = bench.run_bench(bench.BenchConfig(**TINY | {"reps": 1, "warmup": 0, "memory": False}))
    assert "peft" not in result["train"] and "not installed" in result["skipped"]["peft"]
    assert result["ratios"]["lora/peft"] is None and result["meets_targets"]["lora/peft"] is None
    assert result["machine"]["peft"] is None
    assert "skipped peft" in bench.format_table(result)


def test_peak_memory_in_a_worker_process():
    config = bench.BenchConfig(**TINY)
    found = bench.peak_memory_in_workers(config, ["lora"])["lora"]
    assert "error" not in found, found
    assert found["peak_memory_mb"] >= 0 and found["method"]


def test_the_qlora_memory_mode_quantises_the_base_and_reports_the_model_and_the_peak():
    from lora_edu.quant import QuantizedLinear

    config = bench.BenchConfig(**TINY)
    model = bench.build_mode(bench.bench_model(config.model, config.seed), "qlora", config)
    quantised = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert quantised and all(not p.requires_grad for m in quantised for p in m.parameters())
    found = bench.peak_memory_in_workers(config, ["qlora"])["qlora"]
    assert "error" not in found, found
    if found["method"].startswith("peak RSS"):  # Linux: the model and the training peak, apart
        assert 0 <= found["model_mb"] <= found["peak_total_mb"]


def test_a_model_object_skips_the_memory_workers():
    config = bench.BenchConfig(**TINY | {"reps": 1, "warmup": 0})
    result = bench.run_bench(config, base=tiny_model())
    assert "worker processes cannot rebuild it" in result["skipped"]["memory"]
    assert result["memory_method"] is None


def test_ratios_from_given_medians():
    ratios = bench.compute_ratios(
        {"full": 200.0, "lora": 120.0, "peft": 150.0, "floor": 100.0},
        {"base": 50.0, "unmerged": 55.0, "merged": 51.0},
    )
    assert ratios == pytest.approx(
        {
            "lora/peft": 0.8,
            "lora/full": 0.6,
            "lora/floor": 1.2,
            "merged/base": 1.02,
            "unmerged/base": 1.1,
        }
    )
    assert bench.check_targets(ratios) == {
        "lora/peft": True,
        "lora/full": True,
        "lora/floor": False,  # 1.2 > 1.10
        "merged/base": True,  # equal to the target counts as met
        "unmerged/base": True,
    }
    missing = bench.compute_ratios({"lora": 1.0, "full": 2.0, "floor": 1.0}, {"base": 1.0})
    assert missing["lora/peft"] is None and missing["merged/base"] is None
    assert bench.check_targets(missing)["lora/peft"] is None


def test_paired_ratios_cancel_a_change_of_load_between_rounds():
    # The machine got twice as slow after round 2: the ratio of medians is skewed, the pairs not.
    train = {"lora": [10.0, 10.0, 20.0, 20.0, 20.0], "floor": [10.0, 10.0, 10.0, 20.0, 20.0]}
    infer = {"base": [1.0, 2.0], "unmerged": [1.1, 2.2], "merged": [1.0, 2.0]}
    paired = bench.paired_ratios(train, infer)
    assert paired["lora/floor"] == 1.0 and paired["lora/peft"] is None
    assert paired["unmerged/base"] == pytest.approx(1.1) and paired["merged/base"] == 1.0
    assert bench.compute_ratios({"lora": 20.0, "floor": 10.0}, {})["lora/floor"] == 2.0


def test_interleaved_times_runs_rounds_in_order_and_drops_warmup():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    times = bench.interleaved_times(fns, reps=3, warmup=2)
    assert calls == list("ABC") * 5
    assert {k: len(v) for k, v in times.items()} == {"A": 3, "B": 3, "C": 3}


def test_optimizer_state_bytes_counts_adamws_two_moments():
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW(params)
    assert bench.optimizer_state_bytes(optimizer) == 0  # AdamW allocates its state lazily
    sum(p.sum() for p in params).backward()
    optimizer.step()
    step_bytes = sum(s["step"].numel() * s["step"].element_size() for s in optimizer.state.values())
    assert bench.optimizer_state_bytes(optimizer) == 2 * 19 * 4 + step_bytes


def test_the_bench_subcommand_accepts_the_documented_flags():
    parser = argparse.ArgumentParser(prog="lora-edu")
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            *("bench", "--model", "minilm", "--batch", "16", "--seq", "32", "--r", "4"),
            *("--targets", "query,key,value", "--device", "cpu", "--json", "out.json"),
            *("--reps", "5", "--warmup", "1", "--alpha", "8", "--threads", "1", "--no-memory"),
            "--check",
        ]
    )
    assert args.func is bench._bench and args.json == "out.json" and args.check
    config = bench._config_from(args)
    assert config == bench.BenchConfig(
        model="minilm",
        batch=16,
        seq=32,
        r=4,
        alpha=8.0,
        targets=("query", "key", "value"),
        device="cpu",
        reps=5,
        warmup=1,
        threads=1,
        memory=False,
    )
    defaults = bench._config_from(parser.parse_args(["bench"]))
    assert defaults == bench.BenchConfig()
    assert (defaults.batch, defaults.seq, defaults.r, defaults.targets) == (
        32,
        64,
        8,
        ("query", "value"),
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--targets", ","])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch": 0}, "batch must be a positive int, got 0"),
        ({"reps": 1.5}, "reps must be a positive int"),
        ({"warmup": -1}, "warmup must be an int >= 0"),
        ({"targets": ()}, "targets must name layers"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench.BenchConfig(**kwargs)


def test_too_long_a_sequence_names_the_limit():
    with pytest.raises(ValueError, match="seq=600 is longer than this model's 512 positions"):
        bench.make_batch(tiny_model(), 1, 600, torch.device("cpu"))


# --------------------------------------------------------------------------------------------
# Causal LM (tiny-llama: SmolLM2's architecture at width 32)

TINY_CAUSAL = TINY | {"model": "tiny-llama", "new_tokens": 4, "prompts": 2, "prompt_len": 6}
CAUSAL_TOP_KEYS = TOP_KEYS - {"inference"} | {"decode", "decode_tokens_match", "at_least"}


def tiny_llama_counts(r: int = 8) -> dict[str, int]:
    """Trainable parameters of each mode, from TINY_LLAMA's shapes alone (no model built)."""
    c = bench.TINY_LLAMA
    d, inner, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = d // c["num_attention_heads"] * c["num_key_value_heads"]  # k_proj, v_proj outputs
    attention = d * d + d * kv + d * kv + d * d  # q, k, v, o; no biases
    mlp = 3 * d * inner  # gate, up, down
    norms = 2 * d  # RMSNorm before attention and before the MLP
    full = c["vocab_size"] * d + layers * (attention + mlp + norms) + d  # lm_head tied: once
    lora = layers * r * ((d + d) + (d + kv))  # q_proj (d → d), v_proj (d → kv)
    return {"full": full, "lora": lora, "peft": lora, "floor": 1}


def random_b(model: torch.nn.Module, seed: int = 1) -> None:
    """A non-zero B in every LoRALinear, so the adapter really changes the model's outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, LoRALinear)):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))


def test_tiny_llama_is_the_documented_config_and_a_causal_lm():
    model = bench.bench_model("tiny-llama")
    for key, value in bench.TINY_LLAMA.items():
        assert getattr(model.config, key) == value
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in SmolLM2
    assert bench.is_causal_lm(model) and not bench.is_causal_lm(tiny_model())
    assert [bench.model_kind(n) for n in ("smollm2", "tiny-llama", "minilm", "tiny-bert")] == [
        *("causal", "causal", "text", "text")
    ]
    batch = bench.make_batch(model, 3, 5, torch.device("cpu"))
    assert torch.equal(batch["labels"], batch["input_ids"])  # next-token loss: the model shifts
    assert batch["input_ids"].max() < bench.TINY_LLAMA["vocab_size"]


def test_causal_modes_train_exactly_the_expected_parameters():
    base = bench.bench_model("tiny-llama")
    config = bench.BenchConfig(**TINY_CAUSAL)
    expected = tiny_llama_counts(config.r)
    inputs = bench.make_batch(base, 2, 6, torch.device("cpu"))
    reference = base.eval()(**inputs).logits
    for mode in bench.MODES:
        model = bench.build_mode(base, mode, config).eval()
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert sum(p.numel() for p in trainable.values()) == expected[mode], mode
        if mode in ("lora", "peft"):  # A and B only: the pretrained lm_head stays frozen
            assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
            assert sum("q_proj" in n for n in trainable) == sum("v_proj" in n for n in trainable)
        # B = 0 and a scale of 1.0: every mode starts as the base model
        torch.testing.assert_close(model(**inputs).logits, reference, rtol=0, atol=1e-6)
    floor = bench.build_mode(base, "floor", config).train()
    assert [n for n, p in floor.named_parameters() if p.requires_grad] == [
        "model.embed_tokens.input_scale"
    ]
    seen = {}

    def keep(module, args, output):  # after the floor's own hook: the scaled output
        output.retain_grad()
        seen["embeddings"] = output

    floor.model.embed_tokens.register_forward_hook(keep)
    floor(**inputs).loss.backward()
    assert seen["embeddings"].grad.shape == (2, 6, 32) and seen["embeddings"].grad.abs().sum() > 0
    assert all(p.grad is None for n, p in floor.named_parameters() if "input_scale" not in n)


def test_lora_edu_and_peft_compute_the_same_logits_with_the_same_a_and_b():
    base = bench.bench_model("tiny-llama")
    config = bench.BenchConfig(**TINY_CAUSAL)
    ours = bench.build_mode(base, "lora", config).eval()
    theirs = bench.build_mode(base, "peft", config).eval()
    random_b(ours)
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, LoRALinear)}
    copied = set()
    with torch.no_grad():
        for name, module in theirs.named_modules():
            plain = name.removeprefix("base_model.model.")
            if plain in layers and hasattr(module, "lora_A"):
                module.lora_A["default"].weight.copy_(layers[plain].lora_A)
                module.lora_B["default"].weight.copy_(layers[plain].lora_B)
                copied.add(plain)
    assert copied == set(layers) and len(layers) == 4  # q_proj and v_proj of 2 layers
    batch = bench.make_batch(base, 2, 7, torch.device("cpu"), seed=3)
    with torch.no_grad():
        a, b, plain = (m(**batch) for m in (ours, theirs, base.eval()))
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.loss, b.loss)
    assert (a.logits - plain.logits).abs().max() > 1e-2  # the adapters do change the model


def test_merged_and_unmerged_lora_decode_the_same_tokens():
    base = bench.bench_model("tiny-llama")
    unmerged = bench.build_mode(base, "lora", bench.BenchConfig(**TINY_CAUSAL)).eval()
    random_b(unmerged)
    merged = merge_lora(copy.deepcopy(unmerged))
    layers = [m for m in merged.modules() if isinstance(m, LoRALinear)]
    assert layers and all(m.merged for m in layers)  # only W (+ ΔW) computes: no LoRA path
    prompts = bench.make_batch(base, 3, 5, torch.device("cpu"), seed=2)
    inputs = {k: v for k, v in prompts.items() if k != "labels"}
    tokens = {
        name: bench._inference_fn(model, inputs, nullcontext, new_tokens=6)()
        for name, model in (("base", base), ("unmerged", unmerged), ("merged", merged))
    }
    assert all(t.shape == (3, 6) for t in tokens.values())  # exactly 6 new tokens, no early stop
    assert torch.equal(tokens["merged"], tokens["unmerged"])
    assert not torch.equal(tokens["unmerged"], tokens["base"])  # LoRA's path was computed


def test_causal_run_bench_end_to_end_through_the_command_line(tmp_path, capsys):
    out = tmp_path / "bench.json"
    flags = ["--model", "tiny-llama", "--batch", "2", "--seq", "8", "--reps", "2", "--threads", "1"]
    decode = ["--new-tokens", "4", "--prompts", "2", "--prompt-len", "6"]
    code = bench.main(
        [*flags, *decode, "--warmup", "1", "--device", "cpu", "--no-memory", "--json", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) == CAUSAL_TOP_KEYS
    assert result["config"]["targets"] == ["q_proj", "v_proj"]  # the causal LM's default
    assert {k: result["config"][k] for k in bench.DECODE_FIELDS} == {
        "new_tokens": 4,
        "prompts": 2,
        "prompt_len": 6,
    }
    assert {m: r["trainable_params"] for m, r in result["train"].items()} == tiny_llama_counts()
    for row in result["train"].values():
        assert set(row) == TRAIN_KEYS and len(row["times_ms"]) == 2 and row["median_ms"] > 0
    assert set(result["decode"]) == set(bench.INFERENCE)
    for row in result["decode"].values():
        assert set(row) == {"median_ms", "times_ms", "generated_tokens", "tokens_per_s"}
        assert row["generated_tokens"] == 2 * 4 and len(row["times_ms"]) == 2
        assert row["tokens_per_s"] == pytest.approx(8e3 / row["median_ms"])
    assert result["decode_tokens_match"] is True and result["merged_max_abs_diff"] < 1e-4
    assert set(result["ratios"]) == set(result["paired_ratios"]) == set(bench.CAUSAL_RATIOS)
    assert all(v is not None for v in result["ratios"].values())
    speeds = {k: r["tokens_per_s"] for k, r in result["decode"].items()}
    assert result["ratios"]["decode merged/base"] == pytest.approx(
        speeds["merged"] / speeds["base"]
    )
    assert result["targets"] == bench.CAUSAL_TARGETS and set(result["meets_targets"]) == set(
        bench.CAUSAL_TARGETS
    )
    assert result["at_least"] == ["decode merged/base", "decode unmerged/base"]
    assert result["layer"]["shape"] == {"tokens": 16, "d_in": 32, "d_out": 32, "r": 8}
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "merged and unmerged decode the same tokens" in printed
    for name in ("base", "unmerged", "merged"):
        assert f"\n  {name:<14}" in printed.split("\ndecode ", 1)[1]  # rows of the decode table
    assert "decode merged/base" in printed and "≥ 0.98" in printed and "≤ 0.85" in printed


def test_decode_ratios_are_speeds_whose_targets_are_lower_bounds():
    ratios = bench.compute_ratios(
        {"full": 200.0, "lora": 120.0, "peft": 150.0, "floor": 100.0},
        decode={"base": 100.0, "unmerged": 84.0, "merged": 98.0},
        table=bench.CAUSAL_RATIOS,
    )
    assert ratios == pytest.approx(
        {
            "lora/peft": 0.8,
            "lora/full": 0.6,
            "lora/floor": 1.2,
            "decode merged/base": 0.98,
            "decode unmerged/base": 0.84,
        }
    )
    assert bench.check_targets(ratios, bench.CAUSAL_TARGETS) == {
        "lora/peft": True,
        "lora/full": True,
        "lora/floor": False,  # a time: 1.2 > 1.10
        "decode merged/base": True,  # a speed: equal to the target counts as met
        "decode unmerged/base": False,  # a speed: 0.84 < 0.85
    }
    paired = bench.paired_ratios(
        {"lora": [1.0, 2.0], "floor": [1.0, 2.0]},
        decode={"base": [10.0, 20.0], "merged": [10.0, 20.0]},
        table=bench.CAUSAL_RATIOS,
    )
    assert paired["lora/floor"] == paired["decode merged/base"] == 1.0
    assert paired["decode unmerged/base"] is None and paired["lora/peft"] is None


def test_each_kind_of_model_has_its_own_defaults_and_flags():
    smollm2 = bench.BenchConfig(model="smollm2")
    assert (smollm2.batch, smollm2.seq, smollm2.reps, smollm2.warmup) == (8, 64, 5, 1)
    assert (smollm2.new_tokens, smollm2.prompts, smollm2.prompt_len) == (32, 4, 32)
    assert smollm2.targets == ("q_proj", "v_proj")
    minilm = bench.BenchConfig()
    assert (minilm.new_tokens, minilm.prompts, minilm.prompt_len) == (None, None, None)
    with pytest.raises(ValueError, match="new_tokens set for 'minilm', a text model"):
        bench.BenchConfig(new_tokens=8)
    with pytest.raises(ValueError, match="prompts must be a positive int, got 0"):
        bench.BenchConfig(model="tiny-llama", prompts=0)

    parser = argparse.ArgumentParser(prog="lora-edu")
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["bench", "--model", "smollm2", "--new-tokens", "16", "--prompt-len", "8", "--reps", "3"]
    )
    assert bench._config_from(args) == bench.BenchConfig(
        model="smollm2", new_tokens=16, prompt_len=8, reps=3
    )
    assert bench._config_from(args).prompts == 4 and bench._config_from(args).batch == 8
    helps = {a.dest: a.help for a in parser._subparsers._group_actions[0].choices["bench"]._actions}
    assert "default 32; causal LMs 8" in helps["batch"] and "smollm2" in helps["model"]
    assert "causal LMs only; default 32" in helps["new_tokens"]


def test_a_decode_longer_than_the_positions_fails_before_training():
    config = bench.BenchConfig(**TINY_CAUSAL | {"prompt_len": 100, "new_tokens": 40})
    with pytest.raises(ValueError, match="prompt_len \\+ new_tokens=140 is longer than this model"):
        bench.run_bench(config)


def test_peak_memory_of_a_causal_lm_runs_the_workers_steps():
    # In this process (the worker's code; test_peak_memory_in_a_worker_process covers the
    # subprocess): PEFT's wrapper around a causal LM builds its batch and trains.
    threads = torch.get_num_threads()
    try:
        found = bench.measure_peak_memory(bench.BenchConfig(**TINY_CAUSAL), "peft")
    finally:
        torch.set_num_threads(threads)
    assert found["peak_memory_mb"] >= 0 and found["method"]


def test_a_memory_worker_can_train_with_checkpointing_and_the_chunked_loss():
    config = bench.BenchConfig(
        **TINY | {"model": "tiny-llama"}, checkpointing=True, chunked_loss=True
    )
    assert "--chunked-loss" in bench._config_flags(config)
    found = bench.peak_memory_in_workers(config, ["lora", "qlora"])
    assert all("error" not in f for f in found.values()), found
    with pytest.raises(ValueError, match="chunked_loss is for causal LMs"):
        bench.measure_peak_memory(bench.BenchConfig(**TINY, chunked_loss=True), "lora")
