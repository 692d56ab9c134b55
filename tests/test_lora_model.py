"""LoRA on whole models: injection by name, trainability, merging, and PEFT-format adapter files,
checked against peft itself on a tiny randomly initialised BERT (no download)."""

import json
import warnings

import pytest
import torch
from torch import nn

from lora_edu.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRAConfig,
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    count_parameters,
    load_adapter,
    lora_parameters,
    lora_plus_param_groups,
    mark_only_lora_trainable,
    merge_lora,
    save_adapter,
    unload_lora,
    unmerge_lora,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")

CONFIG = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100
)
HIDDEN, LAYERS = 32, 2
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# transformers' own deprecation notice, raised inside peft: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def tiny_bert(head: str = "seq_cls") -> nn.Module:
    """The same random tiny BERT on every call (eval mode: no dropout)."""
    torch.manual_seed(0)
    cls = {
        "seq_cls": transformers.BertForSequenceClassification,
        "mlm": transformers.BertForMaskedLM,
    }
    return cls[head](transformers.BertConfig(**CONFIG)).eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(1))


def randomise(model: nn.Module, seed: int = 2) -> None:
    """Non-zero values in every lora_B (and A) and the head, so equivalence checks mean something."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "classifier" in name:
                p.normal_(std=0.5)


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def lora_model(targets=("query", "value"), r=4, alpha=8, **kwargs) -> nn.Module:
    model = tiny_bert()
    apply_lora(model, list(targets), r=r, alpha=alpha, **kwargs)
    mark_only_lora_trainable(model, modules_to_save=["classifier"])
    randomise(model)
    return model


# --------------------------------------------------------------------------------------------
# apply_lora: matching by name


def test_suffix_match_returns_names_and_keeps_the_output(ids):
    model = tiny_bert()
    before = logits(model, ids)
    names = apply_lora(model, ["query", "value"], r=4, alpha=8)
    assert names == [
        f"bert.encoder.layer.{i}.attention.self.{m}"
        for i in range(LAYERS)
        for m in ("query", "value")
    ]
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    torch.testing.assert_close(logits(model, ids), before)  # B = 0
    assert model.lora_config == LoRAConfig(["query", "value"], 4, 8, 0.0, "kaiming", False)


def test_apply_lora_takes_one_config_like_peft():
    config = LoRAConfig(("query", "value"), r=4, alpha=8, use_rslora=True)
    model = tiny_bert()
    names = apply_lora(model, config)
    keywords = tiny_bert()
    assert names == apply_lora(keywords, ["query", "value"], r=4, alpha=8, use_rslora=True)
    assert model.lora_config == keywords.lora_config
    assert config.target_modules == ["query", "value"]  # a tuple is kept as a list
    layer = model.get_submodule(names[0])
    assert (layer.r, layer.alpha, layer.use_rslora) == (4, 8, True)
    with pytest.raises(ValueError, match=r"got a LoRAConfig and also \{'alpha': 32\}"):
        apply_lora(tiny_bert(), config, alpha=32)


def test_dotted_suffix_exact_name_and_regex():
    model = tiny_bert()
    names = apply_lora(model, ["attention.output.dense"], r=2, alpha=2)
    assert names == [f"bert.encoder.layer.{i}.attention.output.dense" for i in range(LAYERS)]
    assert apply_lora(tiny_bert(), ["bert.pooler.dense"], r=2, alpha=2) == ["bert.pooler.dense"]
    regex = apply_lora(tiny_bert(), r".*layer\.1\.attention\.self\.(query|key)", r=2, alpha=2)
    assert regex == [
        "bert.encoder.layer.1.attention.self.query",
        "bert.encoder.layer.1.attention.self.key",
    ]
    assert apply_lora(tiny_bert(), "key", r=2, alpha=2)[0].endswith("layer.0.attention.self.key")


def test_all_linear_matches_peft_and_skips_the_heads():
    ours = apply_lora(tiny_bert(), "all-linear", r=2, alpha=2)
    assert "classifier" not in ours and len(ours) == 6 * LAYERS + 1  # 6 per layer + pooler
    config = peft.LoraConfig(r=2, target_modules="all-linear", task_type="SEQ_CLS")
    theirs = peft.get_peft_model(tiny_bert(), config).peft_config["default"].target_modules
    assert set(ours) == set(theirs)
    mlm = apply_lora(tiny_bert("mlm"), "all-linear", r=2, alpha=2)
    assert "cls.predictions.decoder" not in mlm  # the output embeddings
    assert "cls.predictions.transform.dense" in mlm


def test_typo_suggests_the_close_name_and_lists_layers_readably():
    model = tiny_bert()
    with pytest.raises(ValueError, match="no nn.Linear matches 'qry'; did you mean 'query'") as err:
        apply_lora(model, ["qry"])
    assert "bert.encoder.layer.*.attention.self.query" in str(err.value)
    assert "layer.0." not in str(err.value)  # deduplicated over layers
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_a_target_that_is_not_linear_names_its_type_and_its_linear_layers():
    with pytest.raises(ValueError, match="a BertAttention, not an nn.Linear.*self.query"):
        apply_lora(tiny_bert(), ["attention"])


def test_applying_twice_or_with_other_settings_raises():
    model = tiny_bert()
    apply_lora(model, ["query"], r=4, alpha=8)
    with pytest.raises(ValueError, match="already has LoRA \\(r=4"):
        apply_lora(model, ["query"], r=4, alpha=8)
    with pytest.raises(ValueError, match="one LoRA configuration"):
        apply_lora(model, ["value"], r=8, alpha=8)
    apply_lora(model, ["value"], r=4, alpha=8)  # same settings, other layers: fine
    assert model.lora_config.target_modules == ["query", "value"]
    assert len(lora_parameters(model)) == 2 * 2 * LAYERS


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        ([], "non-empty list"),
        (["query", ""], "non-empty list"),
        ("query(", "does not compile"),
    ],
)
def test_bad_target_lists(targets, match):
    with pytest.raises(ValueError, match=match):
        apply_lora(tiny_bert(), targets)


def test_root_linear_and_multihead_attention_out_proj_are_refused():
    with pytest.raises(ValueError, match="for a single nn.Linear use LoRALinear"):
        apply_lora(nn.Linear(3, 3), ["weight"])
    model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 8))
    with pytest.raises(ValueError, match="out_proj of an nn.MultiheadAttention"):
        apply_lora(model, ["out_proj"])
    assert apply_lora(model, "all-linear", r=2, alpha=2) == ["1"]


# --------------------------------------------------------------------------------------------
# Trainability, counting, LoRA+


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_mark_only_lora_trainable_bias_modes_and_modules_to_save():
    model = tiny_bert()
    apply_lora(model, ["query", "value"], r=4, alpha=8)
    lora = {n for n in trainable(model) if ".lora_" in n}
    assert len(lora) == 2 * 2 * LAYERS
    mark_only_lora_trainable(model)
    assert trainable(model) == lora
    mark_only_lora_trainable(model, bias="lora_only")
    lora_biases = trainable(model) - lora
    assert len(lora_biases) == 2 * LAYERS and all(
        n.endswith("base_layer.bias") for n in lora_biases
    )
    mark_only_lora_trainable(model, bias="all")
    all_biases = trainable(model) - lora
    assert all_biases == {n for n, _ in model.named_parameters() if "bias" in n}
    mark_only_lora_trainable(model, modules_to_save=["classifier"])
    assert trainable(model) - lora == {"classifier.weight", "classifier.bias"}
    assert model.lora_config.modules_to_save == ["classifier"]
    assert model.lora_config.bias == "none"


def test_mark_only_lora_trainable_errors():
    with pytest.raises(ValueError, match="holds no LoRALinear layer; call apply_lora"):
        mark_only_lora_trainable(tiny_bert())
    model = tiny_bert()
    apply_lora(model, ["query"], r=2, alpha=2)
    with pytest.raises(
        ValueError, match="bias must be one of 'none', 'all', 'lora_only', got 'some'"
    ):
        mark_only_lora_trainable(model, bias="some")
    with pytest.raises(
        ValueError, match="no module matches 'clasifier'; did you mean 'classifier'"
    ):
        mark_only_lora_trainable(model, modules_to_save=["clasifier"])
    with pytest.raises(ValueError, match="contains LoRA layers"):
        mark_only_lora_trainable(model, modules_to_save=["attention"])


def test_count_parameters():
    model = tiny_bert()
    total = sum(p.numel() for p in model.parameters())
    apply_lora(model, ["query", "value"], r=4, alpha=8)
    mark_only_lora_trainable(model)
    lora = LAYERS * 2 * 4 * (HIDDEN + HIDDEN)  # layers × modules × r × (d_in + d_out)
    counts = count_parameters(model)
    assert counts == {
        "trainable": lora,
        "total": total + lora,
        "percent": 100 * lora / (total + lora),
    }
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    assert peft.get_peft_model(tiny_bert(), config).get_nb_trainable_parameters() == (
        lora,
        total + lora,
    )


def test_lora_plus_param_groups():
    model = lora_model()
    groups = lora_plus_param_groups(model, lr=1e-3, ratio=16, weight_decay=0.01)
    others, group_b = groups
    b_ids = {id(layer.lora_B) for layer in model.modules() if isinstance(layer, LoRALinear)}
    assert {id(p) for p in group_b["params"]} == b_ids and group_b["lr"] == 16e-3
    assert others["lr"] == 1e-3 and len(others["params"]) == len(b_ids) + 2  # A's + head
    assert all(g["weight_decay"] == 0.01 for g in groups)
    n_trainable = sum(len(g["params"]) for g in groups)
    assert n_trainable == len(trainable(model))
    torch.optim.AdamW(groups).step()  # a valid optimizer spec
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable lora_B"):
        lora_plus_param_groups(model, lr=1e-3)


# --------------------------------------------------------------------------------------------
# Merging and unloading


def test_merge_unmerge_and_unload_keep_the_output(ids):
    model = lora_model()
    y = logits(model, ids)
    W = model.bert.encoder.layer[0].attention.self.query.base_layer.weight.detach().clone()
    merge_lora(model)
    torch.testing.assert_close(logits(model, ids), y, atol=1e-5, rtol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(
        model.bert.encoder.layer[0].attention.self.query.base_layer.weight, W, atol=1e-6, rtol=0
    )
    plain = unload_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    assert type(plain.bert.encoder.layer[0].attention.self.query) is nn.Linear
    assert not hasattr(plain, "lora_config")
    torch.testing.assert_close(logits(plain, ids), y, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no LoRALinear"):
        merge_lora(plain)


# --------------------------------------------------------------------------------------------
# Agreement with peft


def copy_into_peft(ours: nn.Module, theirs: nn.Module) -> None:
    """Our adapter tensors into a peft model with the same structure, by PEFT key."""
    theirs_state = peft.get_peft_model_state_dict(theirs)
    assert set(theirs_state) == set(adapter_state_dict(ours))
    peft.set_peft_model_state_dict(
        theirs, {k: v.detach() for k, v in adapter_state_dict(ours).items()}
    )


@pytest.mark.parametrize("use_rslora", [False, True])
def test_forward_equals_peft_with_identical_weights(ids, use_rslora):
    ours = lora_model(use_rslora=use_rslora)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"],
        use_rslora=use_rslora,
        modules_to_save=["classifier"],
    )
    theirs = peft.get_peft_model(tiny_bert(), config).eval()
    copy_into_peft(ours, theirs)
    torch.testing.assert_close(logits(ours, ids), logits(theirs, ids), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(ours, ids), logits(tiny_bert(), ids), atol=1e-2)


@pytest.mark.parametrize("use_rslora", [False, True])
@pytest.mark.parametrize("init", ["kaiming", "pissa"])
def test_our_adapter_file_loads_in_peft(tmp_path, ids, use_rslora, init):
    ours = lora_model(
        ["query", "value", "attention.output.dense"], init=init, use_rslora=use_rslora
    )
    save_adapter(ours, tmp_path, task_type="SEQ_CLS")
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert config["target_modules"] == ["attention.output.dense", "query", "value"]
    assert config["init_lora_weights"] == {"kaiming": True, "pissa": "pissa"}[init]
    assert (config["peft_type"], config["use_rslora"], config["modules_to_save"]) == (
        "LORA",
        use_rslora,
        ["classifier"],
    )
    theirs = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, ids), logits(ours, ids), atol=1e-5, rtol=1e-5)
    fresh = tiny_bert()
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, ids), logits(ours, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("use_rslora", "init"), [(False, "gaussian"), (True, False)])
@pytest.mark.parametrize("targets", [["query", "value"], "all-linear"])
def test_peft_adapter_file_loads_here(tmp_path, ids, use_rslora, init, targets):
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        use_rslora=use_rslora,
        task_type="SEQ_CLS",
        init_lora_weights=init,
    )
    theirs = peft.get_peft_model(tiny_bert(), config).eval()
    randomise(theirs)
    theirs.save_pretrained(tmp_path)
    ours = tiny_bert()
    names = load_adapter(ours, tmp_path)
    assert len(names) == (2 * LAYERS if targets != "all-linear" else 6 * LAYERS + 1)
    assert ours.lora_config.modules_to_save == ["classifier"]  # peft's 'score' is absent
    assert ours.lora_config.init == (init or "kaiming")  # False: PEFT's "no init"
    torch.testing.assert_close(logits(ours, ids), logits(theirs, ids), atol=1e-5, rtol=1e-5)
    assert trainable(ours) == {n for n, _ in ours.named_parameters() if "lora_" in n} | {
        "classifier.weight",
        "classifier.bias",
    }


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_bias_modes_round_trip_through_peft(tmp_path, ids, bias):
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["value"], bias=bias)
    theirs = peft.get_peft_model(tiny_bert(), config).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.normal_()
    theirs.save_pretrained(tmp_path / "peft")
    ours = tiny_bert()
    load_adapter(ours, tmp_path / "peft")
    torch.testing.assert_close(logits(ours, ids), logits(theirs, ids), atol=1e-5, rtol=1e-5)
    save_adapter(ours, tmp_path / "ours")
    back = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path / "ours").eval()
    torch.testing.assert_close(logits(back, ids), logits(theirs, ids), atol=1e-5, rtol=1e-5)


def test_saved_tensors_and_keys(tmp_path):
    model = lora_model()
    save_adapter(model, tmp_path, base_model_name_or_path="tiny-bert")
    tensors = safetensors_torch.load_file(tmp_path / ADAPTER_WEIGHTS)
    prefix = "base_model.model.bert.encoder.layer.0.attention.self.query"
    assert tensors[f"{prefix}.lora_A.weight"].shape == (4, HIDDEN)
    assert tensors[f"{prefix}.lora_B.weight"].shape == (HIDDEN, 4)
    assert len(tensors) == 2 * 2 * LAYERS + 2
    torch.testing.assert_close(
        tensors["base_model.model.classifier.weight"], model.classifier.weight
    )
    assert (
        json.loads((tmp_path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
        == "tiny-bert"
    )


def test_save_warns_about_a_missing_head_and_refuses_a_model_without_lora(tmp_path):
    model = tiny_bert()
    apply_lora(model, ["query"], r=2, alpha=2)
    with pytest.warns(UserWarning, match="no modules_to_save"):
        save_adapter(model, tmp_path, task_type="SEQ_CLS")
    with pytest.raises(ValueError, match="has no LoRA"):
        save_adapter(tiny_bert(), tmp_path)


# --------------------------------------------------------------------------------------------
# load_adapter: what goes wrong is named, and the model is left as it was


@pytest.fixture
def saved(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_adapter(lora_model(init="pissa"), tmp_path)
    return tmp_path


def edit_weights(directory, change) -> None:
    path = directory / ADAPTER_WEIGHTS
    tensors = safetensors_torch.load_file(path)
    change(tensors)
    safetensors_torch.save_file(tensors, path)


def assert_untouched(model: nn.Module, ids: torch.Tensor) -> None:
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert not hasattr(model, "lora_config")
    torch.testing.assert_close(logits(model, ids), logits(tiny_bert(), ids), atol=1e-6, rtol=0)


def test_load_missing_key(saved, ids):
    key = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"
    edit_weights(saved, lambda t: t.pop(key))
    model = tiny_bert()
    with pytest.raises(ValueError, match=f"missing keys: {key}"):
        load_adapter(model, saved)
    assert_untouched(model, ids)  # PiSSA's residual put back


def test_load_unexpected_key(saved, ids):
    edit_weights(saved, lambda t: t.update({"base_model.model.extra.weight": torch.zeros(1)}))
    model = tiny_bert()
    with pytest.raises(ValueError, match="unexpected keys: base_model.model.extra.weight"):
        load_adapter(model, saved)
    assert_untouched(model, ids)


def test_load_shape_mismatch(saved):
    key = "base_model.model.classifier.weight"
    edit_weights(saved, lambda t: t.update({key: torch.zeros(3, HIDDEN)}))
    with pytest.raises(
        ValueError, match=f"shape mismatches: {key}: file \\(3, 32\\), model \\(2, 32\\)"
    ):
        load_adapter(tiny_bert(), saved)


def test_load_refuses_pickle_missing_files_and_unsupported_features(saved):
    config = json.loads((saved / ADAPTER_CONFIG).read_text())
    (saved / ADAPTER_WEIGHTS).rename(saved / "adapter_model.bin")
    with pytest.raises(ValueError, match="only adapter_model.bin, a pickle file"):
        load_adapter(tiny_bert(), saved)
    (saved / "adapter_model.bin").rename(saved / ADAPTER_WEIGHTS)
    (saved / ADAPTER_CONFIG).write_text(json.dumps(config | {"lora_bias": True}))
    with pytest.raises(ValueError, match="does not implement: \\{'lora_bias': True\\}"):
        load_adapter(tiny_bert(), saved)
    (saved / ADAPTER_CONFIG).write_text(json.dumps(config | {"init_lora_weights": "olora"}))
    with pytest.raises(ValueError, match="'init_lora_weights': 'olora'"):
        load_adapter(tiny_bert(), saved)
    (saved / ADAPTER_CONFIG).write_text(json.dumps(config | {"peft_type": "IA3"}))
    with pytest.raises(
        ValueError, match="is a 'IA3' adapter; lora_edu reads LORA \\(plain, DoRA\\), VERA"
    ):
        load_adapter(tiny_bert(), saved)
    (saved / ADAPTER_CONFIG).unlink()
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        load_adapter(tiny_bert(), saved)


def state_of(model: nn.Module) -> tuple[dict, list]:
    """Everything a failed call must leave unchanged: the state dict and every module's type."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, [(n, type(m)) for n, m in model.named_modules()]


def assert_same_state(before: tuple[dict, list], model: nn.Module) -> None:
    state, types = state_of(model)
    assert types == before[1]
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)


def test_apply_lora_that_fails_on_a_later_layer_leaves_the_model_as_it_was():
    model = tiny_bert()
    before = state_of(model)
    # PiSSA at r=4 fits the 32×32 attention layers but not the 2×32 classifier, wrapped last.
    with pytest.raises(ValueError, match="PiSSA needs r <= min"):
        apply_lora(model, ["query", "classifier"], r=4, alpha=8, init="pissa")
    assert_same_state(before, model)
    assert not hasattr(model, "lora_config")
    assert apply_lora(model, ["query"], r=4, alpha=8, init="pissa")  # a retry is not refused


def test_a_pissa_adapter_that_does_not_fit_leaves_the_base_weights(saved):
    config = json.loads((saved / ADAPTER_CONFIG).read_text())
    targets = config["target_modules"]
    (saved / ADAPTER_CONFIG).write_text(json.dumps(config | {"r": 40}))  # > 32: PiSSA cannot
    model = tiny_bert()
    before = state_of(model)
    with pytest.raises(ValueError):
        load_adapter(model, saved)
    assert_same_state(before, model)
    assert targets  # the file did name targets: the failure came from fitting them


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c.pop("lora_alpha"), "'lora_alpha' is missing or null"),
        (lambda c: c.update(target_modules=None), "'target_modules' is missing or null"),
        (lambda c: c.update(target_modules=[1, 2]), "expected a string or a non-empty list"),
        (lambda c: c.update(bias="some"), "bias is 'some'; expected one of none, all, lora_only"),
        (lambda c: c.update(r=0), "r \\(the rank\\) must be a positive int"),
        (lambda c: c.update(lora_alpha=float("inf")), "alpha must be a positive finite"),
    ],
)
def test_a_bad_adapter_config_names_the_file_and_the_field(saved, change, match):
    config = json.loads((saved / ADAPTER_CONFIG).read_text())
    change(config)
    (saved / ADAPTER_CONFIG).write_text(json.dumps(config))
    model = tiny_bert()
    before = state_of(model)
    with pytest.raises(ValueError, match=f"adapter_config.json: .*{match}"):
        load_adapter(model, saved)
    assert_same_state(before, model)  # refused before any weight was touched


@pytest.mark.parametrize(
    ("text", "match"),
    [("{not json", "not valid JSON"), ("[1, 2]", "a JSON list; expected an object")],
)
def test_an_adapter_config_that_is_not_a_json_object_is_named(saved, text, match):
    (saved / ADAPTER_CONFIG).write_text(text)
    with pytest.raises(ValueError, match=f"adapter_config.json: {match}"):
        load_adapter(tiny_bert(), saved)


def test_damaged_or_bad_adapter_weights_name_the_file_and_tensor(saved, ids):
    path = saved / ADAPTER_WEIGHTS
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # cut off while copying
    with pytest.raises(ValueError, match="adapter_model.safetensors: not a readable safetensors"):
        load_adapter(tiny_bert(), saved)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_adapter(tiny_bert(), saved)
    path.write_bytes(whole)
    key = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
    edit_weights(saved, lambda t: t[key].view(-1).__setitem__(0, float("nan")))
    with pytest.raises(ValueError, match=f"tensor '{key}' holds NaN or Inf"):
        load_adapter(tiny_bert(), saved)
    edit_weights(saved, lambda t: t.update({key: torch.zeros_like(t[key], dtype=torch.int32)}))
    model = tiny_bert()
    with pytest.raises(ValueError, match=f"tensor '{key}' has dtype torch.int32"):
        load_adapter(model, saved)
    assert_untouched(model, ids)


def test_target_names_this_model_lacks_are_skipped_with_a_warning(saved, ids):
    config = json.loads((saved / ADAPTER_CONFIG).read_text())
    names = config["target_modules"]
    (saved / ADAPTER_CONFIG).write_text(json.dumps(config | {"target_modules": [*names, "q_proj"]}))
    model = tiny_bert()
    with pytest.warns(UserWarning, match=r"target_modules \['q_proj'\] match no module"):
        adapted = load_adapter(model, saved)
    assert adapted and all(n.endswith(("query", "value")) for n in adapted)
    reference = tiny_bert()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (saved / ADAPTER_CONFIG).write_text(json.dumps(config))
        load_adapter(reference, saved)
    torch.testing.assert_close(logits(model, ids), logits(reference, ids))


def test_load_into_a_model_that_has_lora_raises(saved):
    model = lora_model()
    with pytest.raises(ValueError, match="already has LoRA layers"):
        load_adapter(model, saved)


# --------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@gpu
def test_on_cuda_matches_cpu_and_saves_loadable_files(tmp_path, ids):
    cpu = lora_model()
    cuda = lora_model().cuda()
    assert all(p.device.type == "cuda" for p in lora_parameters(cuda))
    with torch.no_grad():
        y = cuda(ids.cuda()).logits.cpu()
    torch.testing.assert_close(y, logits(cpu, ids), atol=1e-4, rtol=1e-4)
    save_adapter(cuda, tmp_path)
    fresh = tiny_bert()
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, ids), logits(cpu, ids), atol=1e-5, rtol=1e-5)
    apply_lora(model := tiny_bert().cuda(), ["query"], r=2, alpha=2, init="pissa")
    merge_lora(model)


def test_disable_adapters_gives_the_base_model_and_switches_back(ids):
    from lora_edu.lora import disable_adapters

    model = lora_model()
    base = tiny_bert()
    base.classifier.load_state_dict(model.classifier.state_dict())  # the head is trained too
    with_lora = logits(model, ids)
    assert not torch.allclose(with_lora, logits(base, ids))
    with disable_adapters(model):
        assert torch.equal(logits(model, ids), logits(base, ids))
    assert torch.equal(logits(model, ids), with_lora)  # on again afterwards
    with pytest.raises(RuntimeError), disable_adapters(model):
        raise RuntimeError("an error inside the block")
    assert torch.equal(logits(model, ids), with_lora)  # ... even after an exception
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"), disable_adapters(model):
        pass
    with pytest.raises(ValueError, match="no LoRALinear"), disable_adapters(tiny_bert()):
        pass


def test_a_string_target_is_one_name_when_lora_is_applied_twice():
    model = tiny_bert()
    apply_lora(model, "all-linear", r=2, alpha=4)
    apply_lora(model, ["classifier"], r=2, alpha=4)
    assert model.lora_config.target_modules == ["all-linear", "classifier"]
    model = tiny_bert()
    apply_lora(model, ["query"], r=2, alpha=4)
    apply_lora(model, "value", r=2, alpha=4)
    assert model.lora_config.target_modules == ["query", "value"]


def test_merging_a_layer_whose_weight_is_tied_is_refused_naming_both():
    model = transformers.BertForMaskedLM(transformers.BertConfig(**CONFIG)).eval()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    apply_lora(model, ["decoder"], r=2, alpha=4)
    randomise(model)
    embeddings = model.bert.embeddings.word_embeddings.weight.detach().clone()
    with pytest.raises(ValueError, match="'cls.predictions.decoder' is shared with 'bert.embed"):
        merge_lora(model)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, embeddings)
    assert not any(m.merged for m in model.modules() if isinstance(m, LoRALinear))


def test_two_layers_sharing_one_weight_cannot_be_merged():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    net[2].weight = net[0].weight  # one parameter, two layers
    apply_lora(net, ["0"], r=1, alpha=1)
    with pytest.raises(ValueError, match="'0' is shared with '2.weight'"):
        merge_lora(net)
    with pytest.raises(ValueError, match="'0' is shared with '2.weight'"):
        unload_lora(net)
    assert isinstance(net[0], LoRALinear)  # unload refused before changing anything


def test_a_module_registered_under_two_names_is_refused_naming_both():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    net.add_module("again", net[0])  # the same nn.Linear, called from two places
    with pytest.raises(ValueError, match="'0' is the same nn.Linear as 'again'"):
        apply_lora(net, ["0"], r=1, alpha=1)
    assert isinstance(net[0], nn.Linear) and not hasattr(net, "lora_config")
