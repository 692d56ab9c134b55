"""Named adapters on one base: switching, deleting, one adapter per example, weighted combinations
and the save_pretrained layout, checked against peft on a tiny random BERT (no download)."""

import copy

import pytest
import torch
from torch import nn

from lora_edu.adapters import (
    BASE,
    active_adapter,
    adapter_names,
    add_adapter,
    combine_adapters,
    delete_adapter,
    load_named_adapter,
    mixed_batch,
    save_adapters,
    set_adapter,
)
from lora_edu.lora import (
    LoRAConfig,
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    disable_adapters,
    merge_lora,
    unmerge_lora,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

CONFIG = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100
)
QV = ["query", "value"]


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**CONFIG)).eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 100, (4, 7), generator=torch.Generator().manual_seed(1))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def randomise(model: nn.Module, seed: int) -> None:
    """Non-zero A and B in the active adapter, so that every comparison means something."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.5)


def two_adapters(second: LoRAConfig | None = None) -> nn.Module:
    """A tiny BERT with "default" (q,v, r=4, α=8) and "b" (by default all of q,k,v, r=2, α=6,
    rsLoRA), both with random non-zero weights; "default" active."""
    model = tiny_bert()
    apply_lora(model, QV, r=4, alpha=8)
    randomise(model, 1)
    second = second or LoRAConfig(["query", "key", "value"], r=2, alpha=6, use_rslora=True)
    add_adapter(model, "b", second)
    set_adapter(model, "b")
    randomise(model, 2)
    set_adapter(model, "default")
    return model


def single(config: LoRAConfig, state: dict) -> nn.Module:
    """A fresh model with one adapter of ``config`` holding ``state`` (PEFT keys)."""
    model = tiny_bert()
    apply_lora(model, config)
    with torch.no_grad():
        for key, tensor in adapter_state_dict(model).items():
            tensor.copy_(state[key])
    return model


# ------------------------------------------------------------------ switching


def test_adapters_share_the_base_and_switching_changes_only_the_update(ids):
    model = two_adapters()
    assert adapter_names(model) == ["default", "b"] and active_adapter(model) == "default"
    q = "bert.encoder.layer.0.attention.self.query"
    layer_default = model.get_submodule(q)
    states = {}
    for name in ("default", "b"):
        set_adapter(model, name)
        states[name] = {k: v.clone() for k, v in adapter_state_dict(model).items()}
        configs = model.lora_config
        assert isinstance(model.get_submodule(q), LoRALinear)
        # the same W0 object under both adapters: the base exists once
        assert model.get_submodule(q).base_layer is layer_default.base_layer
        # the active adapter answers exactly as a model holding only that adapter
        torch.testing.assert_close(logits(model, ids), logits(single(configs, states[name]), ids))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
        assert trainable == {k.removeprefix("base_model.model.").replace(".weight", "")
                             for k in states[name]}  # fmt: skip
    assert model.get_submodule("bert.encoder.layer.0.attention.self.key").__class__ is LoRALinear
    set_adapter(model, "default")
    assert isinstance(model.get_submodule("bert.encoder.layer.0.attention.self.key"), nn.Linear)
    assert not isinstance(
        model.get_submodule("bert.encoder.layer.0.attention.self.key"), LoRALinear
    )


def test_delete_and_the_errors_that_name_what_exists(ids):
    model = two_adapters()
    with pytest.raises(
        ValueError, match=r"no adapter named 'c'; this model has \['default', 'b'\]"
    ):
        set_adapter(model, "c")
    with pytest.raises(ValueError, match="already has an adapter named 'b'"):
        add_adapter(model, "b", LoRAConfig(QV))
    with pytest.raises(ValueError, match="quantize applies to the base model"):
        add_adapter(model, "q", LoRAConfig(QV, quantize="nf4"))
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        set_adapter(model, "b")
    unmerge_lora(model)
    delete_adapter(model, "default")  # the active one: the first that remains takes over
    assert adapter_names(model) == ["b"] and active_adapter(model) == "b"
    delete_adapter(model, "b")
    assert adapter_names(model) == [] and active_adapter(model) is None
    torch.testing.assert_close(logits(model, ids), logits(tiny_bert(), ids))
    assert not hasattr(model, "lora_config")


# ------------------------------------------------------------------ dtype and device

VERA_B = LoRAConfig(["query", "key", "value"], r=6, variant="vera")


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@pytest.mark.parametrize("second", [None, VERA_B], ids=["rslora", "vera"])
def test_adapters_set_aside_follow_the_model_to_another_dtype(second, ids):
    model = two_adapters(second)  # "b" is set aside
    reference = copy.deepcopy(model)
    set_adapter(reference, "b")
    reference.to(torch.bfloat16)  # "b" converted while in the model
    model.to(torch.bfloat16)  # "b" converted while set aside
    set_adapter(model, "b")
    for layer in lora_layers(model):
        assert layer.lora_A.dtype == layer.lora_B.dtype == torch.bfloat16
        assert all(p.dtype == torch.bfloat16 for p in layer.parameters())
        if second is VERA_B:  # and VeRA's layers still read one shared pair
            assert layer.lora_A.data_ptr() == layer.variant.vera_A.data_ptr()
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), rtol=0, atol=0)
    set_adapter(model, "default")
    assert all(layer.lora_A.dtype == torch.bfloat16 for layer in lora_layers(model))
    # The adapters set aside are not the model's weights: its state dict holds the active one.
    assert not [k for k in model.state_dict() if "lora_adapters" in k]


def test_adapters_set_aside_move_with_the_model_to_another_device():
    model = two_adapters()
    model.to("meta")  # the meta device stands in for any device (no memory, no kernels needed)
    aside = model.lora_adapters.adapters["b"].layers.values()
    # moved now, not at the next switch: no copy stays behind in the old device's memory
    assert all(p.device.type == "meta" for layer in aside for p in layer.parameters())
    set_adapter(model, "b")
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adapters_set_aside_follow_the_model_to_cuda(ids):
    model = two_adapters()
    set_adapter(model, "b")
    expected = logits(model, ids)
    set_adapter(model, "default")
    model.cuda()
    set_adapter(model, "b")
    torch.testing.assert_close(logits(model, ids.cuda()).cpu(), expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ one adapter per example


def test_mixed_batch_equals_each_example_alone_and_peft(ids):
    model = two_adapters()
    names = ["b", "default", BASE, "b"]
    with mixed_batch(model, names):
        mixed = logits(model, ids)
    assert active_adapter(model) == "default"  # restored afterwards
    for i, name in enumerate(names):
        if name == BASE:
            with disable_adapters(model):
                alone = logits(model, ids[i : i + 1])
        else:
            set_adapter(model, name)
            alone = logits(model, ids[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    theirs = to_peft(model)
    with torch.no_grad():
        peft_mixed = theirs(input_ids=ids, adapter_names=names).logits
    torch.testing.assert_close(mixed, peft_mixed, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="3 adapter names for a batch of 4"):
        with mixed_batch(model, names[:3]):
            logits(model, ids)


def to_peft(model: nn.Module) -> nn.Module:
    """The same adapters in a peft model: "default" and "b" with our weights."""
    set_adapter(model, "default")
    default_state = {k: v.detach().clone() for k, v in adapter_state_dict(model).items()}
    c = model.lora_config
    theirs = peft.get_peft_model(
        tiny_bert(), peft.LoraConfig(r=c.r, lora_alpha=c.alpha, target_modules=c.target_modules)
    ).eval()
    peft.set_peft_model_state_dict(theirs, default_state)
    set_adapter(model, "b")
    c = model.lora_config
    theirs.add_adapter(
        "b",
        peft.LoraConfig(r=c.r, lora_alpha=c.alpha, target_modules=c.target_modules,
                        use_rslora=c.use_rslora),
    )  # fmt: skip
    state = {k: v.detach().clone() for k, v in adapter_state_dict(model).items()}
    peft.set_peft_model_state_dict(theirs, state, adapter_name="b")
    set_adapter(model, "default")
    return theirs.eval()


# ------------------------------------------------------------------ combinations


def deltas(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    previous = active_adapter(model)
    set_adapter(model, name)
    out = {}
    for layer_name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            out[layer_name] = module.delta_weight().detach().clone()
    set_adapter(model, previous)
    return out


def test_cat_is_exact_for_different_ranks_alphas_and_rslora():
    model = two_adapters()  # r 4 vs 2, alpha 8 vs 6, the second with rsLoRA, targets differ
    w = (0.7, -1.3)
    combine_adapters(model, ["default", "b"], w, "both", method="cat")
    d0, d1, both = deltas(model, "default"), deltas(model, "b"), deltas(model, "both")
    assert set(both) == set(d1)  # the union of the targets
    for layer, delta in both.items():
        expected = w[0] * d0.get(layer, 0) + w[1] * d1[layer]
        torch.testing.assert_close(delta, expected, atol=1e-6, rtol=1e-5)
    set_adapter(model, "both")
    assert model.lora_config.r == 6 and model.lora_config.scaling == 1.0


def test_linear_has_cross_terms_and_svd_is_the_best_rank_r_approximation():
    model = two_adapters(LoRAConfig(QV, r=4, alpha=4))  # equal ranks, as linear needs
    w = (0.6, 0.4)
    combine_adapters(model, ["default", "b"], w, "lin", method="linear")
    combine_adapters(model, ["default", "b"], w, "svd2", method="svd", svd_rank=2)
    d0, d1, lin, svd = (deltas(model, n) for n in ("default", "b", "lin", "svd2"))
    for layer in d0:
        target = w[0] * d0[layer] + w[1] * d1[layer]
        set_adapter(model, "default")
        l0 = model.get_submodule(layer)
        set_adapter(model, "b")
        l1 = model.get_submodule(layer)
        # linear: (√w₀s₀B₀ + √w₁s₁B₁)(√w₀s₀A₀ + √w₁s₁A₁) = Σ wᵢΔWᵢ + the cross terms
        a0, a1 = (w[0] * l0.scaling) ** 0.5, (w[1] * l1.scaling) ** 0.5
        cross = a0 * a1 * (l0.lora_B @ l1.lora_A + l1.lora_B @ l0.lora_A)
        torch.testing.assert_close(lin[layer], target + cross.detach(), atol=1e-5, rtol=1e-4)
        assert (lin[layer] - target).norm() > 0.1 * target.norm()
        # svd: the truncated SVD of Σ wᵢΔWᵢ, whose error is the tail of its singular values
        S = torch.linalg.svdvals(target)
        err = torch.linalg.matrix_norm(svd[layer] - target)
        torch.testing.assert_close(err, S[2:].norm(), atol=1e-5, rtol=1e-4)
    set_adapter(model, "default")
    with pytest.raises(ValueError, match="needs equal ranks"):
        combine_adapters(two_adapters(), ["default", "b"], w, "x", method="linear")


@pytest.mark.parametrize("method", ["cat", "linear", "svd"])
def test_combinations_equal_peft_add_weighted_adapter(method, ids):
    second = LoRAConfig(QV, r=4, alpha=16) if method == "linear" else None
    model = two_adapters(second)
    theirs = to_peft(model)
    w = [0.8, -0.5]
    combine_adapters(model, ["default", "b"], w, "mix", method=method)
    theirs.add_weighted_adapter(["default", "b"], w, "mix", combination_type=method)
    theirs.set_adapter("mix")
    set_adapter(model, "mix")
    ours_state = adapter_state_dict(model)
    peft_state = peft.get_peft_model_state_dict(theirs, adapter_name="mix")
    assert set(ours_state) == set(peft_state)
    for key, tensor in ours_state.items():
        torch.testing.assert_close(tensor, peft_state[key], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits(model, ids), logits(theirs, ids), atol=1e-5, rtol=1e-5)


def test_peft_up_to_0_21_scales_a_combination_by_sqrt_r_after_an_rslora_adapter():
    """The one difference from PEFT, stated precisely: PEFT's combined adapter copies use_rslora
    from the first adapter with alpha = r, so up to peft 0.21 its scaling is √r instead of 1
    (fixed upstream in huggingface/peft#3449). Ours is 1 whatever the order."""
    model = two_adapters()
    set_adapter(model, "b")  # put the rsLoRA adapter first
    theirs = to_peft(model)
    combine_adapters(model, ["b", "default"], [1.0, 1.0], "mix", method="cat")
    theirs.add_weighted_adapter(["b", "default"], [1.0, 1.0], "mix", combination_type="cat")
    r = 2 + 4
    layer = "base_model.model.bert.encoder.layer.0.attention.self.query"
    peft_layer = theirs.get_submodule(layer)
    scaling = peft_layer.scaling["mix"]
    assert scaling == pytest.approx(r**0.5) or scaling == pytest.approx(
        1.0
    )  # before / after the fix
    ours = deltas(model, "mix")[layer.removeprefix("base_model.model.")]
    d0, d1 = deltas(model, "b"), deltas(model, "default")
    name = layer.removeprefix("base_model.model.")
    torch.testing.assert_close(ours, d0[name] + d1[name], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        peft_layer.get_delta_weight("mix"), scaling * ours, atol=1e-5, rtol=1e-5
    )


# ------------------------------------------------------------------ files


def test_save_pretrained_layout_both_ways(tmp_path, ids):
    model = two_adapters()
    expected = {}
    for name in ("default", "b"):
        set_adapter(model, name)
        expected[name] = logits(model, ids)
    save_adapters(model, tmp_path / "ours")
    assert (tmp_path / "ours" / "adapter_config.json").is_file()
    assert (tmp_path / "ours" / "b" / "adapter_model.safetensors").is_file()
    # PEFT reads our layout ...
    theirs = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path / "ours").eval()
    theirs.load_adapter(tmp_path / "ours" / "b", adapter_name="b")
    for name in ("default", "b"):
        theirs.set_adapter(name)
        torch.testing.assert_close(logits(theirs, ids), expected[name], atol=1e-5, rtol=1e-5)
    # ... and we read PEFT's: save_pretrained writes "b" into a subfolder named after it
    theirs.save_pretrained(tmp_path / "peft")
    assert (tmp_path / "peft" / "b" / "adapter_config.json").is_file()
    fresh = tiny_bert()
    load_named_adapter(fresh, tmp_path / "peft")
    load_named_adapter(fresh, tmp_path / "peft", "b")
    assert adapter_names(fresh) == ["default", "b"] and active_adapter(fresh) == "default"
    for name in ("default", "b"):
        set_adapter(fresh, name)
        torch.testing.assert_close(logits(fresh, ids), expected[name], atol=1e-5, rtol=1e-5)


def test_split_head_leaves_an_encoder_adapter_and_the_head(tmp_path, ids):
    from lora_edu.adapters import split_head
    from lora_edu.lora import mark_only_lora_trainable, save_adapter

    model = tiny_bert()
    apply_lora(model, QV, r=4, alpha=8)
    mark_only_lora_trainable(model, modules_to_save=["classifier"])
    randomise(model, 3)
    save_adapter(model, tmp_path / "full")
    head = split_head(tmp_path / "full", tmp_path / "encoder")
    assert set(head) == {"weight", "bias"}
    torch.testing.assert_close(head["weight"], model.classifier.weight.detach())
    fresh = tiny_bert()
    load_named_adapter(fresh, tmp_path / "encoder", "task")
    fresh.classifier.load_state_dict(head)
    torch.testing.assert_close(logits(fresh, ids), logits(model, ids))
    with pytest.raises(ValueError, match="saves no 'classifier'"):
        split_head(tmp_path / "encoder", tmp_path / "again")


# ------------------------------------------------------------------ refusals and edge cases


def test_mixed_batch_refuses_training_mode(ids):
    model = two_adapters()
    model.train()
    with pytest.raises(ValueError, match="training mode: only the active adapter would get grad"):
        with mixed_batch(model, ["b", "default", BASE, "b"]):
            pytest.fail("the block must not run in training mode")
    assert active_adapter(model) == "default"  # refused before anything was unplugged
    assert isinstance(model.get_submodule("bert.encoder.layer.0.attention.self.query"), LoRALinear)
    model.eval()
    with pytest.raises(ValueError, match="dropout would be live"):
        with mixed_batch(model, ["b", "default", BASE, "b"]):
            model.train()  # switched inside the block: refused at the first adapted layer
            logits(model, ids)
    assert active_adapter(model) == "default"


@pytest.mark.parametrize(
    "names, match",
    [
        ([], "0 adapter names; expected one name per example"),
        ([BASE, BASE, BASE], "3 adapter names for a batch of 4"),  # no adapter used at all
        (["b", "default"], "2 adapter names for a batch of 4"),
    ],
)
def test_mixed_batch_checks_the_number_of_names_before_anything_runs(ids, names, match):
    model = two_adapters().eval()
    calls = []
    model.bert.embeddings.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=match):
        with mixed_batch(model, names):
            logits(model, ids)
    assert calls == []  # refused before the first module ran
    assert active_adapter(model) == "default"


def conv_adapters() -> nn.Module:
    """SmallConvNet (test_lora_conv.py) with "default" (3 convs + head, r=4) and "b" (two convs,
    r=2), both random; "default" active, eval mode."""
    from test_lora_conv import SmallConvNet

    model = SmallConvNet().eval()
    apply_lora(model, ["conv1", "conv2", "conv3", "head"], r=4, alpha=8)
    randomise(model, 1)
    add_adapter(model, "b", LoRAConfig(["conv1", "conv3"], r=2, alpha=4))
    set_adapter(model, "b")
    randomise(model, 2)
    set_adapter(model, "default")
    return model


def test_mixed_batch_with_conv_adapters_equals_each_example_alone():
    model = conv_adapters()
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    names = ["b", "default", BASE, "b"]
    with torch.no_grad(), mixed_batch(model, names):
        mixed = model(images)
    for i, name in enumerate(names):
        with torch.no_grad():
            if name == BASE:
                with disable_adapters(model):
                    alone = model(images[i : i + 1])
            else:
                set_adapter(model, name)
                alone = model(images[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    assert (mixed[0] - mixed[2]).abs().max() > 1e-3  # the adapters matter


def test_svd_combination_of_conv_adapters_is_the_best_rank_r_approximation():
    model = conv_adapters()
    w = (0.6, 0.4)
    combine_adapters(model, ["default", "b"], w, "svd3", method="svd", svd_rank=3)
    d0, d1, svd = deltas(model, "default"), deltas(model, "b"), deltas(model, "svd3")
    set_adapter(model, "svd3")
    assert model.get_submodule("conv1").lora_A.shape == (3, 3, 3, 3)  # (r, c_in, k_h, k_w)
    assert model.get_submodule("conv1").lora_B.shape == (8, 3, 1, 1)
    for layer, delta in svd.items():
        target = w[0] * d0[layer] + w[1] * d1.get(layer, 0)
        assert delta.shape == target.shape
        # ΔW as a matrix over flattened input patches: its truncated SVD, error = the tail
        S = torch.linalg.svdvals(target.flatten(start_dim=1))
        err = torch.linalg.matrix_norm((delta - target).flatten(start_dim=1))
        torch.testing.assert_close(err, S[3:].norm(), atol=1e-5, rtol=1e-4)


def test_a_failed_combination_adds_nothing(ids):
    model = two_adapters()
    set_adapter(model, "b")
    with torch.no_grad():
        model.get_submodule("bert.encoder.layer.1.attention.self.key").lora_B[0, 0] = float("nan")
    set_adapter(model, "default")
    before = logits(model, ids)
    with pytest.raises(
        ValueError, match="method='svd' failed at layer .*layer.1.attention.self.key"
    ):
        combine_adapters(model, ["default", "b"], [0.5, 0.5], "mix", method="svd")
    assert adapter_names(model) == ["default", "b"] and active_adapter(model) == "default"
    torch.testing.assert_close(logits(model, ids), before)
    combine_adapters(model, ["default"], [1.0], "mix")  # the name is still free
    assert adapter_names(model) == ["default", "b", "mix"]


def test_load_adapter_takes_peft_adapter_name_keyword(tmp_path, ids):
    from lora_edu.lora import load_adapter

    model = two_adapters()
    expected = {}
    for name in ("default", "b"):
        set_adapter(model, name)
        expected[name] = logits(model, ids)
    save_adapters(model, tmp_path)
    fresh = tiny_bert()
    assert load_adapter(fresh, tmp_path, adapter_name="sst2")  # PEFT's keyword, a new name
    load_adapter(fresh, tmp_path / "b", adapter_name="b")
    assert adapter_names(fresh) == ["sst2", "b"] and active_adapter(fresh) == "sst2"
    for ours, name in (("sst2", "default"), ("b", "b")):
        set_adapter(fresh, ours)
        torch.testing.assert_close(logits(fresh, ids), expected[name], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="already has an adapter named 'b'"):
        load_adapter(fresh, tmp_path / "b", adapter_name="b")
    assert load_named_adapter(fresh, tmp_path, "again")  # the separate function still works
