"""LoRAConv2d: a k×k down-projection A and a 1×1 up-projection B, checked against peft itself
on a small convolutional network (forward, gradients, merge, adapter files both ways)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.lora import (
    adapter_state_dict,
    apply_lora,
    count_parameters,
    load_adapter,
    mark_only_lora_trainable,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from lora_edu.lora_conv import LoRAConv2d

peft = pytest.importorskip("peft")
warnings.filterwarnings("ignore", message=".*groups > 1.*")

TARGETS = ["conv1", "conv2", "conv3", "head"]


class SmallConvNet(nn.Module):
    """3×16×16 images → 5 classes: a 3×3 conv, a strided 3×3 conv, a 1×1 conv, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(12, 6, 1)
        self.head = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.head(F.relu(self.conv3(x)).flatten(1))


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def ours_trained(r: int = 4, alpha: float = 8, **kwargs) -> nn.Module:
    """Our LoRA net with every B (and A) random, as after training."""
    model = SmallConvNet()
    apply_lora(model, TARGETS, r=r, alpha=alpha, **kwargs)
    mark_only_lora_trainable(model)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model


def peft_twin(ours: nn.Module, r: int = 4, alpha: float = 8, **kwargs) -> nn.Module:
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, **kwargs)
    theirs = peft.get_peft_model(SmallConvNet(), config)
    state = adapter_state_dict(ours)
    assert set(state) == set(peft.get_peft_model_state_dict(theirs))
    for key, value in state.items():
        assert value.shape == peft.get_peft_model_state_dict(theirs)[key].shape, key
    peft.set_peft_model_state_dict(theirs, {k: v.detach() for k, v in state.items()})
    return theirs


def test_shapes_follow_peft_and_the_output_starts_unchanged(images):
    model = SmallConvNet()
    plain = model(images)
    names = apply_lora(model, TARGETS, r=4, alpha=8)
    assert names == TARGETS
    conv = model.conv2
    assert isinstance(conv, LoRAConv2d) and conv.lora_A.shape == (4, 8, 3, 3)
    assert conv.lora_B.shape == (12, 4, 1, 1) and not conv.lora_B.any()
    assert torch.equal(model(images), plain)  # B = 0
    mark_only_lora_trainable(model)
    lora_conv = sum(
        4 * (c_in * k * k + c_out) for c_in, c_out, k in ((3, 8, 3), (8, 12, 3), (12, 6, 1))
    )
    assert count_parameters(model)["trainable"] == lora_conv + 4 * (6 * 8 * 8 + 5)
    theirs = peft.get_peft_model(SmallConvNet(), peft.LoraConfig(r=4, target_modules=TARGETS))
    assert theirs.get_nb_trainable_parameters()[0] == count_parameters(model)["trainable"]


@pytest.mark.parametrize("use_rslora", [False, True])
def test_forward_and_gradients_equal_peft(images, use_rslora):
    ours = ours_trained(use_rslora=use_rslora)
    theirs = peft_twin(ours, use_rslora=use_rslora)
    y_ours, y_theirs = ours(images), theirs(images)
    torch.testing.assert_close(y_ours, y_theirs, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y_ours, SmallConvNet()(images), atol=1e-3)  # the adapter acts
    y_ours.square().sum().backward()
    y_theirs.square().sum().backward()
    grads_theirs = {n: p.grad for n, p in theirs.named_parameters() if p.grad is not None}
    for name, p in ours.named_parameters():
        if "lora_" in name and "conv" in name:
            key = next(
                k
                for k in grads_theirs
                if k.endswith(
                    name.replace("lora_A", "lora_A.default.weight").replace(
                        "lora_B", "lora_B.default.weight"
                    )
                )
            )
            torch.testing.assert_close(p.grad, grads_theirs[key], atol=1e-4, rtol=1e-4)


def test_merge_is_exact_and_equals_peft_merge(images):
    ours = ours_trained()
    before = ours(images)
    theirs = peft_twin(ours).merge_and_unload()
    merged = merge_lora(copy.deepcopy(ours))
    torch.testing.assert_close(merged(images), before, atol=1e-5, rtol=1e-5)
    for name in ("conv1", "conv2", "conv3"):
        torch.testing.assert_close(
            getattr(merged, name).base_layer.weight,
            getattr(theirs, name).weight,
            atol=1e-6,
            rtol=1e-5,
        )
    unmerged = unmerge_lora(merged)
    torch.testing.assert_close(
        unmerged.conv2.base_layer.weight, SmallConvNet().conv2.weight, atol=1e-6, rtol=0
    )


def test_delta_weight_is_the_composed_convolution():
    layer = ours_trained().conv2
    A, B, s = layer.lora_A, layer.lora_B, layer.scaling
    by_conv = F.conv2d(A.transpose(0, 1), B).transpose(0, 1) * s  # PEFT's formula
    torch.testing.assert_close(layer.delta_weight(), by_conv, atol=1e-6, rtol=1e-5)
    x = torch.randn(2, 8, 9, 9)
    base = layer.base_layer
    direct = F.conv2d(x, layer.delta_weight(), None, base.stride, base.padding)
    torch.testing.assert_close(layer(x) - base(x), direct, atol=1e-5, rtol=1e-5)


def test_adapter_files_move_both_ways(tmp_path, images):
    ours = ours_trained()
    save_adapter(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(SmallConvNet(), tmp_path / "ours")
    torch.testing.assert_close(theirs(images), ours(images), atol=1e-5, rtol=1e-5)
    fresh = SmallConvNet()
    load_adapter(fresh, tmp_path / "ours")
    torch.testing.assert_close(fresh(images), ours(images), atol=1e-5, rtol=1e-5)

    peft_model = peft_twin(ours_trained(r=2, alpha=4), r=2, alpha=4)
    peft_model.save_pretrained(tmp_path / "peft")
    loaded = SmallConvNet()
    assert load_adapter(loaded, tmp_path / "peft") == TARGETS
    assert isinstance(loaded.conv1, LoRAConv2d) and loaded.conv1.r == 2
    torch.testing.assert_close(loaded(images), peft_model(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("layer", "settings", "match"),
    [
        (nn.Conv2d(4, 8, 3, groups=2), {}, "groups=2"),
        (nn.Conv2d(4, 8, 3, dilation=2), {}, "dilation"),
        (nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), {}, "padding_mode"),
        (nn.Conv2d(4, 8, 3), {"variant": "dora"}, "plain LoRA"),
        (nn.Conv2d(4, 8, 3), {"init": "pissa"}, "plain LoRA"),
    ],
)
def test_unsupported_convolutions_are_refused_with_a_reason(layer, settings, match):
    with pytest.raises(ValueError, match=match):
        LoRAConv2d(layer, 4, 8, **settings)


def test_a_conv_cannot_be_wrapped_as_linear_and_vice_versa():
    from lora_edu.lora import LoRALinear

    with pytest.raises(TypeError, match="LoRALinear wraps an nn.Linear"):
        LoRALinear(nn.Conv2d(3, 4, 3), 2, 4)
    with pytest.raises(TypeError, match="LoRAConv2d wraps an nn.Conv2d"):
        LoRAConv2d(nn.Linear(3, 4), 2, 4)


def test_the_head_can_train_at_its_own_learning_rate():
    from lora_edu.lora import optimizer_param_groups

    model = SmallConvNet()
    apply_lora(model, ["conv1", "conv2"], r=2, alpha=4)
    mark_only_lora_trainable(model, modules_to_save=["head"])
    groups = optimizer_param_groups(model, 2e-3, head_lr=5e-4, head="head")
    assert [g["lr"] for g in groups] == [2e-3, 5e-4]  # the base rate first: schedulers read it
    head_params = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in groups[1]["params"]} == head_params
    assert not head_params & {id(p) for p in groups[0]["params"]}
    assert len(optimizer_param_groups(model, 2e-3, head="head")) == 1  # no head_lr: one group
    with pytest.raises(ValueError, match="no trainable module 'classifier'"):
        optimizer_param_groups(model, 2e-3, head_lr=1e-3)
