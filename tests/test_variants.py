"""LoRA's descendants (lora_edu.variants), each checked against PEFT's implementation on a tiny
randomly initialised BERT (no download): forward, gradients, merging and the adapter files."""

import ast
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lora_edu
from lora_edu.lora import (
    ADAPTER_CONFIG,
    LoRAConfig,
    LoRALinear,
    adalora_allocator,
    adapter_state_dict,
    apply_lora,
    count_parameters,
    load_adapter,
    mark_only_lora_trainable,
    merge_lora,
    optimizer_param_groups,
    save_adapter,
    unload_lora,
    unmerge_lora,
)
from lora_edu.variants import (
    LORA_PLUS_RATIO,
    VARIANTS,
    AdaLoRA,
    DoRA,
    Variant,
    VeRA,
    register_variant,
    variant_class,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

CONFIG = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # train() changes LoRA's dropout only
)  # fmt: skip
TARGETS = ["query", "value", "intermediate.dense"]  # biases everywhere; 32 → 37 is not square
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**CONFIG)).eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(1))


def dora_pair(dropout: float = 0.0):
    """Our DoRA model and PEFT's, holding the same non-zero A, B and magnitudes."""
    ours = tiny_bert()
    apply_lora(ours, LoRAConfig(TARGETS, r=4, alpha=8, dropout=dropout, variant="dora"))
    mark_only_lora_trainable(ours)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.5)
            elif name.endswith("variant.magnitude"):
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))  # away from ‖W + ΔW‖
    config = peft.LoraConfig(
        target_modules=TARGETS, r=4, lora_alpha=8, lora_dropout=dropout, use_dora=True
    )
    theirs = peft.get_peft_model(tiny_bert(), config)
    state = {k: v.detach().clone() for k, v in adapter_state_dict(ours).items()}
    result = peft.set_peft_model_state_dict(theirs, state)
    assert not [k for k in result.unexpected_keys if "lora" in k]
    return ours, theirs


def test_dora_starts_as_the_base_model_with_one_magnitude_per_output_feature(ids):
    base = tiny_bert()
    model = copy.deepcopy(base)
    apply_lora(model, LoRAConfig(TARGETS, r=4, alpha=8, variant="dora"))
    layer = model.get_submodule("bert.encoder.layer.0.intermediate.dense")
    assert isinstance(layer.variant, DoRA) and layer.variant.magnitude.shape == (37,)
    # ‖W‖ over in_features (rows of the (d_out, d_in) weight), not over out_features
    torch.testing.assert_close(
        layer.variant.magnitude, torch.linalg.norm(layer.base_layer.weight, dim=1)
    )
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits)


def close(mine: torch.Tensor, theirs: torch.Tensor, what: str = "") -> None:
    """Equal up to float32 rounding, relative to the tensor's scale (gradients here are ~1e-5,
    below assert_close's default absolute tolerance)."""
    scale = theirs.abs().max().item()
    assert scale > 0, what
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5 * scale, msg=what)


def test_dora_forward_equals_peft(ids):
    ours, theirs = dora_pair()
    with torch.no_grad():
        close(ours(ids).logits, theirs(ids).logits)
        # and DoRA is not plain LoRA with the same A, B: the magnitudes change the output
        plain = tiny_bert()
        apply_lora(plain, TARGETS, r=4, alpha=8)
        plain.load_state_dict(ours.state_dict(), strict=False)
        gap = (plain(ids).logits - ours(ids).logits).abs().max()
        assert gap > 0.1 * ours(ids).logits.abs().max()


def test_dora_gradients_equal_peft_with_the_norm_detached(ids):
    ours, theirs = dora_pair()
    for model in (ours, theirs):
        model.train()  # no dropout anywhere: both see the same computation
        model(ids).logits.square().sum().backward()
    name = "bert.encoder.layer.1.attention.self.value"
    ours_layer = ours.get_submodule(name)
    theirs_layer = theirs.base_model.model.get_submodule(name)
    pairs = {
        "A": (ours_layer.lora_A, theirs_layer.lora_A["default"].weight),
        "B": (ours_layer.lora_B, theirs_layer.lora_B["default"].weight),
        "m": (ours_layer.variant.magnitude, theirs_layer.lora_magnitude_vector["default"].weight),
    }
    for what, (mine, peft_param) in pairs.items():
        assert mine.grad is not None, what
        close(mine.grad, peft_param.grad, f"gradient of {what}")


def test_dora_with_dropout_in_training_equals_peft(ids):
    ours, theirs = dora_pair(dropout=0.3)
    ours.train()
    theirs.train()
    torch.manual_seed(5)
    mine = ours(ids).logits
    torch.manual_seed(5)
    close(mine, theirs(ids).logits)
    torch.manual_seed(6)  # another dropout mask, another output: the dropout is live
    assert (ours(ids).logits - mine).abs().max() > 1e-3 * mine.abs().max()


def test_dora_merge_is_exact_and_unmerge_restores_w(ids):
    ours, _ = dora_pair()
    layer = ours.get_submodule("bert.encoder.layer.0.attention.self.query")
    w0 = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        before = ours(ids).logits
        layer.merge()
        assert layer.merged
        torch.testing.assert_close(ours(ids).logits, before)
        layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0)
    for done in (merge_lora(copy.deepcopy(ours)), unload_lora(copy.deepcopy(ours))):
        with torch.no_grad():
            close(done(ids).logits, before)
    assert not any(isinstance(m, LoRALinear) for m in done.modules())  # unload: plain Linear


def test_dora_refuses_to_unmerge_a_zero_magnitude_and_leaves_w_alone():
    ours, _ = dora_pair()
    name = "bert.encoder.layer.0.attention.self.query"
    layer = ours.get_submodule(name)
    with torch.no_grad():
        layer.variant.magnitude[2] = 0.0  # e.g. pruned, or trained to 0
    merge_lora(ours)  # row 2 of W becomes 0 · (W + ΔW)[2] = 0: finite, so merging is allowed
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, LoRALinear)}
    merged = {n: m.base_layer.weight.detach().clone() for n, m in layers.items()}
    match = rf"LoRA layer '{name}': DoRA cannot unmerge .* 32 → 32.*output features 2\).*m: 0"
    with pytest.raises(ValueError, match=match):
        unmerge_lora(ours)
    for n, m in layers.items():  # refused before any layer changed
        assert m.merged and torch.equal(m.base_layer.weight, merged[n]), n
    with pytest.raises(ValueError, match="would write Inf or NaN into W"):
        layer.unmerge()
    assert layer.merged and torch.equal(layer.base_layer.weight, merged[name])


def test_dora_refuses_to_merge_a_row_whose_norm_is_zero():
    ours, _ = dora_pair()
    layer = ours.get_submodule("bert.encoder.layer.1.attention.self.value")
    with torch.no_grad():
        layer.base_layer.weight[4] = 0.0
        layer.lora_B[4] = 0.0  # ‖W + ΔW‖ = 0 in row 4: m / 0 · 0 is NaN
    w0 = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match=r"DoRA cannot merge .*1 row\(s\) \(output features 4;"):
        layer.merge()
    assert not layer.merged and torch.equal(layer.base_layer.weight, w0)


def round_trip_with_peft(ours, theirs, ids, folder, marker: str, variant: str) -> None:
    """Our save → PEFT's load, and PEFT's save → our load, both give our model's outputs."""
    with torch.no_grad():
        expected = ours(ids).logits
    save_adapter(ours, folder / "ours")
    assert marker in (folder / "ours" / ADAPTER_CONFIG).read_text()
    loaded_by_peft = peft.PeftModel.from_pretrained(tiny_bert(), folder / "ours").eval()
    theirs.save_pretrained(folder / "peft")
    back = tiny_bert()
    load_adapter(back, folder / "peft")
    assert back.lora_config.variant == variant
    with torch.no_grad():
        close(loaded_by_peft(ids).logits, expected)
        close(back(ids).logits, expected)


def test_dora_adapter_files_round_trip_with_peft(ids, tmp_path):
    ours, theirs = dora_pair()
    round_trip_with_peft(ours, theirs, ids, tmp_path, '"use_dora": true', "dora")


def test_a_variant_name_is_checked_and_travels_in_the_config():
    with pytest.raises(
        ValueError, match="variant must be None .* or one of 'dora', 'vera', .*, got 'dorra'"
    ):
        LoRAConfig(["query"], variant="dorra")
    model = tiny_bert()
    apply_lora(model, ["query"], r=2, alpha=2, variant="dora")
    assert model.lora_config.record()["variant"] == "dora"
    with pytest.raises(ValueError, match="already has LoRA with"):
        apply_lora(model, ["value"], r=2, alpha=2)  # plain LoRA beside DoRA: one config per model


# ------------------------------------------------------------------------------ the registry


def test_variants_register_by_name_and_the_layer_finds_them_there():
    assert list(VARIANTS) == ["dora", "vera", "adalora", "lora-fa", "lora-plus"]
    assert all(variant_class(name).name == name for name in VARIANTS)
    with pytest.raises(ValueError, match="no LoRA variant named 'dorra'; registered: 'dora', "):
        variant_class("dorra")
    with pytest.raises(ValueError, match="'dora' is taken by lora_edu.variants.dora.DoRA"):

        @register_variant("dora")
        class Impostor(Variant):
            pass

    @register_variant("test-half")  # a new variant plugs in without any change to the layer
    class HalfUpdate(Variant):
        def forward(self, layer, x, y):
            return y + 0.5 * (layer.lora_forward(x, y) - y)

    try:
        torch.manual_seed(0)
        half = LoRALinear(nn.Linear(6, 5), r=2, alpha=2, variant="test-half")
        assert isinstance(half.variant, HalfUpdate)
        with torch.no_grad():
            half.lora_B.normal_()
            x = torch.randn(3, 6)
            y = half.base_layer(x)
            torch.testing.assert_close(half(x) - y, 0.5 * (half.lora_forward(x, y) - y))
    finally:
        del VARIANTS["test-half"]


#: The layer, its variants and the code around them; the import graph among them (imports
#: inside functions count too) must have no cycle: the layer finds variants by name only.
LAYER_MODULES = ("lora", "lora_layer", "lora_model", "lora_conv", "peft_format", "adapters")


def imports_among(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_the_layer_its_variants_and_adapters_import_without_a_cycle():
    root = Path(lora_edu.__file__).parent
    modules = {f"lora_edu.{m}": root / f"{m}.py" for m in LAYER_MODULES}
    modules["lora_edu.variants"] = root / "variants" / "__init__.py"
    for path in (root / "variants").glob("[!_]*.py"):
        modules[f"lora_edu.variants.{path.stem}"] = path
    graph = imports_among(modules)
    assert graph["lora_edu.lora_layer"] == {"lora_edu.variants.base"}  # the registry, no variant
    assert graph["lora_edu.variants.base"] == set()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycle = path[path.index(name) :] + (name,)
            raise AssertionError(f"import cycle: {' → '.join(cycle)}")
        if name not in done:
            for other in sorted(graph[name]):
                visit(other, (*path, name))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())


# ------------------------------------------------------------------------------------- VeRA


def vera_pair(dropout: float = 0.0):
    """Our VeRA model and PEFT's, holding the same non-zero scaling vectors (and the shared
    matrices, which PEFT insists on loading; that both draw the same ones is tested separately).
    The vectors do not depend on ``dropout``."""
    ours = tiny_bert()
    apply_lora(ours, LoRAConfig(TARGETS, r=6, dropout=dropout, variant="vera"))
    mark_only_lora_trainable(ours)
    config = peft.VeraConfig(r=6, target_modules=TARGETS, vera_dropout=dropout)
    theirs = peft.get_peft_model(tiny_bert(), config)
    torch.manual_seed(2)
    state = {}
    for key, tensor in adapter_state_dict(ours).items():
        if "lambda" in key:
            with torch.no_grad():
                tensor.normal_()
        state[key] = tensor.detach().clone()
    result = peft.set_peft_model_state_dict(theirs, state)
    assert not [k for k in result.unexpected_keys if "vera" in k]
    return ours, theirs


def test_vera_shares_one_random_pair_drawn_as_peft_draws_it():
    ours = tiny_bert()
    apply_lora(ours, LoRAConfig(TARGETS, r=6, variant="vera"))
    mark_only_lora_trainable(ours)
    theirs = peft.get_peft_model(tiny_bert(), peft.VeraConfig(r=6, target_modules=TARGETS))
    layers = [m for m in ours.modules() if isinstance(m, LoRALinear)]
    variant = layers[0].variant
    assert isinstance(variant, VeRA)
    # the largest d_in and d_out among q, v (32 → 32) and intermediate.dense (32 → 37)
    assert variant.vera_A.shape == (6, 32) and variant.vera_B.shape == (37, 6)
    torch.testing.assert_close(variant.vera_A, theirs.base_model.vera_A["default"])
    torch.testing.assert_close(variant.vera_B, theirs.base_model.vera_B["default"])
    for layer in layers:  # every layer's A, B: frozen views of the one shared pair
        assert layer.lora_B.data_ptr() == variant.vera_B.data_ptr()
        assert not layer.lora_A.requires_grad and not layer.lora_B.requires_grad
    trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    head = sum(p.numel() for p in ours.classifier.parameters())
    assert trainable == 2 * (2 * (6 + 32) + (6 + 37))  # r + d_out per layer, 3 layers × 2
    # as PEFT counts: the shared pair is no parameter (a buffer there), the vectors are
    theirs_trainable, theirs_total = theirs.get_nb_trainable_parameters()
    assert count_parameters(ours)["total"] == theirs_total
    assert count_parameters(ours)["trainable"] == theirs_trainable == trainable
    assert head and not any(p.requires_grad for p in ours.classifier.parameters())


def test_vera_starts_as_the_base_model_and_its_forward_and_gradients_equal_peft(ids):
    base = tiny_bert()
    fresh = copy.deepcopy(base)
    apply_lora(fresh, TARGETS, r=6, variant="vera")
    ours, theirs = vera_pair()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, base(ids).logits)  # λ_b = 0: ΔW = 0
        close(ours(ids).logits, theirs(ids).logits)
        assert (ours(ids).logits - base(ids).logits).abs().max() > 1e-3
    for model in (ours, theirs):
        model(ids).logits.square().sum().backward()
    name = "bert.encoder.layer.1.intermediate.dense"
    mine, peft_layer = ours.get_submodule(name).variant, theirs.base_model.model.get_submodule(name)
    close(mine.lambda_b.grad, peft_layer.vera_lambda_b["default"].grad, "gradient of λ_b")
    close(mine.lambda_d.grad, peft_layer.vera_lambda_d["default"].grad, "gradient of λ_d")


def test_vera_with_dropout_drops_x_in_the_adapter_path_only_as_peft(ids):
    ours, theirs = vera_pair(dropout=0.3)
    ours.train()
    theirs.train()
    torch.manual_seed(5)
    mine = ours(ids).logits
    torch.manual_seed(5)  # the same dropout masks, drawn in the same order
    close(mine, theirs(ids).logits)
    torch.manual_seed(6)  # another mask, another output: the dropout is live
    assert (ours(ids).logits - mine).abs().max() > 1e-3 * mine.abs().max()
    # By hand, one layer: y = W x + b + λ_b ⊙ B (λ_d ⊙ A dropout(x)); W x sees x undropped.
    layer = ours.get_submodule("bert.encoder.layer.0.intermediate.dense")
    v = layer.variant
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(8)
    y = layer(x)
    torch.manual_seed(8)
    dropped = F.dropout(x, 0.3, training=True)
    h = v.lambda_d * F.linear(dropped, layer.lora_A)
    close(y, layer.base_layer(x) + v.lambda_b * F.linear(h, layer.lora_B))
    # In eval mode the dropout does nothing: the output of the same vectors without dropout.
    plain, _ = vera_pair()
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(ids).logits, plain.eval()(ids).logits)
        twin = plain.get_submodule("bert.encoder.layer.0.intermediate.dense")
        torch.testing.assert_close(layer(x), twin(x))


def test_vera_merges_exactly_and_its_files_round_trip_with_peft(ids, tmp_path):
    ours, theirs = vera_pair()
    with torch.no_grad():
        close(merge_lora(copy.deepcopy(ours))(ids).logits, ours(ids).logits)
    round_trip_with_peft(ours, theirs, ids, tmp_path, '"peft_type": "VERA"', "vera")


def test_vera_refuses_what_it_cannot_do(tmp_path):
    model = tiny_bert()
    apply_lora(model, ["query"], r=4, variant="vera")
    with pytest.raises(ValueError, match="shares one set of matrices"):
        apply_lora(model, ["value"], r=4, variant="vera")  # another draw would not fit the file
    with pytest.raises(ValueError, match="shares one set of matrices"):
        apply_lora(model, ["value"], r=4, variant="vera", quantize="nf4")
    assert not any(type(m).__name__ == "QuantizedLinear" for m in model.modules())  # refused first
    with pytest.raises(ValueError, match="init='pissa' is for LoRA"):
        apply_lora(tiny_bert(), ["query"], r=4, init="pissa", variant="vera")
    theirs = peft.get_peft_model(
        tiny_bert(), peft.VeraConfig(r=4, target_modules=["query"], save_projection=False)
    )
    theirs.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="without its shared matrices"):
        load_adapter(tiny_bert(), tmp_path)


# ------------------------------------------------------------------------ LoRA-FA and LoRA+


def test_lora_fa_freezes_a_but_saves_it(ids, tmp_path):
    model = tiny_bert()
    apply_lora(model, LoRAConfig(TARGETS, r=4, alpha=8, variant="lora-fa"))
    mark_only_lora_trainable(model)
    layer = model.get_submodule("bert.encoder.layer.0.attention.self.query")
    a0 = layer.lora_A.detach().clone()
    assert not layer.lora_A.requires_grad and layer.lora_B.requires_grad
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, lr=1e-2))
    for _ in range(3):
        optimizer.zero_grad()
        model(ids).logits.square().sum().backward()
        optimizer.step()
    torch.testing.assert_close(layer.lora_A, a0)  # A as initialised
    assert layer.lora_B.abs().max() > 0  # B learned
    save_adapter(model, tmp_path)  # a plain LoRA file: A is needed to rebuild ΔW
    assert any(k.endswith("query.lora_A.weight") for k in adapter_state_dict(model))
    loaded_by_peft = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded_by_peft(ids).logits, model.eval()(ids).logits)


def test_lora_plus_gives_b_its_own_learning_rate():
    model = tiny_bert()
    apply_lora(model, LoRAConfig(TARGETS, r=4, alpha=8, variant="lora-plus"))
    mark_only_lora_trainable(model, modules_to_save=["classifier"])
    groups = optimizer_param_groups(model, lr=1e-3, weight_decay=0.01)
    assert [g["lr"] for g in groups] == [1e-3, 1e-3 * LORA_PLUS_RATIO]
    b_ids = {id(m.lora_B) for m in model.modules() if isinstance(m, LoRALinear)}
    assert {id(p) for p in groups[1]["params"]} == b_ids  # B, and only B, at 16 × lr
    assert any(p is model.classifier.weight for p in groups[0]["params"])  # the head at lr
    plain = tiny_bert()
    apply_lora(plain, TARGETS, r=4, alpha=8)
    mark_only_lora_trainable(plain)
    assert len(optimizer_param_groups(plain, lr=1e-3)) == 1  # plain LoRA: one learning rate


# ------------------------------------------------------------------------------------ AdaLoRA

ADA = dict(init_r=6, target_r=3, lora_alpha=8, target_modules=TARGETS)


def adalora_pair(total_step: int = 10):
    """Our AdaLoRA model and PEFT's (init_r=6 → target_r=3, allocation at every step between
    steps 2 and 8 of 10), holding the same P, Λ, Q with non-zero Λ."""
    ours = tiny_bert()
    apply_lora(ours, LoRAConfig(TARGETS, r=6, alpha=8, variant="adalora"))
    mark_only_lora_trainable(ours)
    config = peft.AdaLoraConfig(**ADA, tinit=2, tfinal=2, deltaT=1, total_step=total_step)
    theirs = peft.get_peft_model(tiny_bert(), config)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("lora_E"):
                p.normal_()
    state = {k: v.detach().clone() for k, v in adapter_state_dict(ours).items()}
    result = peft.set_peft_model_state_dict(theirs, state)
    assert not [k for k in result.unexpected_keys if "lora" in k]
    allocator = adalora_allocator(ours, total_step, target_r=3, tinit=0.2, tfinal=0.2, deltaT=1)
    return ours, theirs, allocator


def test_adalora_starts_as_the_base_model_and_its_forward_equals_peft(ids):
    base = tiny_bert()
    fresh = copy.deepcopy(base)
    apply_lora(fresh, LoRAConfig(TARGETS, r=6, alpha=8, variant="adalora"))
    layer = fresh.get_submodule("bert.encoder.layer.0.attention.self.query")
    assert isinstance(layer.variant, AdaLoRA) and layer.variant.lora_E.shape == (6, 1)
    assert 0.015 < layer.lora_A.std() < 0.025  # P, Q ~ N(0, 0.02²) as PEFT, Λ = 0
    ours, theirs, _ = adalora_pair()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, base(ids).logits)
        close(ours(ids).logits, theirs(ids).logits)
        close(merge_lora(copy.deepcopy(ours))(ids).logits, ours(ids).logits)


def test_adalora_regulariser_equals_peft(ids):
    ours, theirs, allocator = adalora_pair()
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        with_reg = theirs.base_model(input_ids=ids, labels=labels).loss  # AdaLoraModel adds it
        without = theirs.base_model.model(input_ids=ids, labels=labels).loss
        close(allocator.regularizer(), with_reg - without)


def test_adalora_rank_allocator_prunes_what_peft_prunes_at_every_step(ids):
    ours, theirs, allocator = adalora_pair(total_step=10)
    optimizers = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
        for m in (ours, theirs)
    ]
    generator = torch.Generator().manual_seed(4)
    seen_ranks = []
    for step in range(1, 11):
        batch = torch.randint(0, 100, (4, 7), generator=generator)
        labels = torch.randint(0, 2, (4,), generator=generator)
        for model, optimizer in zip((ours, theirs), optimizers, strict=True):
            optimizer.zero_grad()
            if model is ours:
                out = ours(input_ids=batch)
                loss = torch.nn.functional.cross_entropy(out.logits, labels)
                (loss + allocator.regularizer()).backward()
            else:
                theirs.base_model(input_ids=batch, labels=labels).loss.backward()
            optimizer.step()
        allocator.step(step)
        theirs.base_model.update_and_allocate(step)
        for name, layer in ((n, m) for n, m in ours.named_modules() if isinstance(m, LoRALinear)):
            peft_E = theirs.base_model.model.get_submodule(name).lora_E["default"]
            assert torch.equal(layer.variant.lora_E == 0, peft_E == 0), f"step {step}, {name}"
            close(layer.variant.lora_E.detach(), peft_E.detach(), f"Λ at step {step}")
        seen_ranks.append(sum(allocator.ranks().values()))
    assert seen_ranks[0] == 6 * 6 and seen_ranks[-1] == 3 * 6  # init_r → target_r, 6 layers
    assert sorted(seen_ranks, reverse=True) == seen_ranks  # the budget only shrinks


def test_adalora_adapter_files_round_trip_with_peft(ids, tmp_path):
    ours, theirs, allocator = adalora_pair(total_step=10)
    for step in range(1, 11):  # allocate ranks (no training), then compare the files
        for model in (ours, theirs):
            model(ids).logits.square().sum().backward()
        allocator.step(step)
        theirs.base_model.update_and_allocate(step)
        for model in (ours, theirs):
            model.zero_grad()
    assert theirs.peft_config["default"].rank_pattern  # PEFT saves the pruned layers smaller
    with torch.no_grad():
        close(theirs(ids).logits, ours(ids).logits)
    round_trip_with_peft(ours, theirs, ids, tmp_path, '"peft_type": "ADALORA"', "adalora")
