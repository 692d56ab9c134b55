"""The small denoising diffusion model of digits and its LoRA style adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusion model needs diffusers")

from lora_edu import diffusion  # noqa: E402
from lora_edu.lora import (  # noqa: E402
    LoRAConfig,
    apply_lora,
    mark_only_lora_trainable,
    merge_lora,
    unmerge_lora,
)
from lora_edu.lora_conv import LoRAConv2d  # noqa: E402


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    rng = np.random.default_rng(0)
    images = np.zeros((12, 28, 28), np.uint8)
    for img in images:  # a bar of ink somewhere in the middle of each image
        row = rng.integers(6, 20)
        img[row : row + 3, 6:22] = 255
    return images


def test_model_space_round_trip_pads_with_background(digits):
    x = diffusion.to_model_space(digits)
    assert x.shape == (12, 1, 32, 32) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1 and (x[:, :, :2] == -1).all()  # the padding is black
    assert np.array_equal(diffusion.from_model_space(x), digits / 255.0)
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        diffusion.to_model_space(np.zeros((2, 8, 8)))


def test_thick_strokes_add_ink_and_keep_the_shape(digits):
    thick = diffusion.thick_strokes(digits)
    assert thick.shape == digits.shape and thick.dtype == digits.dtype
    assert (thick >= digits).all()  # dilation only adds ink
    # a 3-row bar grows to 5 rows and 2 columns wider: (5 × 18) / (3 × 16) of the ink
    assert diffusion.ink_share(thick) == pytest.approx(diffusion.ink_share(digits) * 90 / 48)


def test_lora_on_the_unet_wraps_attention_and_convolutions_and_trains_only_them(digits):
    unet = diffusion.make_denoiser(seed=0)
    names = apply_lora(unet, LoRAConfig(diffusion.DENOISER_TARGETS, r=2, alpha=2))
    convs = [n for n in names if isinstance(unet.get_submodule(n), LoRAConv2d)]
    assert convs and len(convs) < len(names)  # both kinds of layer
    assert any(n.endswith("to_q") for n in names)
    mark_only_lora_trainable(unet)
    before = {k: v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}
    result = diffusion.train_denoiser(unet, digits, epochs=1, batch_size=6, progress=False)
    assert result["steps"] == 2 and len(result["history"]["loss"]) == 2
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base did not move
    assert any(after[k].abs().sum() > 0 for k in after if "lora_B" in k)  # B left zero


def test_strength_zero_is_the_base_and_the_scaling_comes_back(digits):
    unet = diffusion.make_denoiser(seed=1)
    base = diffusion.sample(unet, 2, steps=3, seed=5)
    apply_lora(unet, LoRAConfig(diffusion.DENOISER_TARGETS, r=2, alpha=2))
    mark_only_lora_trainable(unet)
    diffusion.train_denoiser(unet, digits, epochs=1, batch_size=6, lr=1e-2, progress=False)
    with diffusion.adapter_strength(unet, 0.0):
        assert np.array_equal(diffusion.sample(unet, 2, steps=3, seed=5), base)
    styled = diffusion.sample(unet, 2, steps=3, seed=5)
    assert not np.array_equal(styled, base)
    assert np.array_equal(diffusion.sample(unet, 2, steps=3, seed=5), styled)  # seeded, restored
    merge_lora(unet)
    with pytest.raises(ValueError, match="unmerged"):
        with diffusion.adapter_strength(unet, 0.5):
            pass
    unmerge_lora(unet)
    with pytest.raises(ValueError, match="no LoRALinear"):
        with diffusion.adapter_strength(diffusion.make_denoiser(), 0.5):
            pass


def test_the_denoiser_is_cached_with_its_record(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_EDU_CACHE", str(tmp_path))
    first = diffusion.pretrained_denoiser(epochs=1, max_train=32, batch_size=16, progress=False)
    assert first.pretrain_record["steps"] == 2 and first.pretrain_record["n_train"] == 32
    (cached,) = tmp_path.glob("denoiser-mnist-e1-*.safetensors")
    again = diffusion.pretrained_denoiser(epochs=1, max_train=32, batch_size=16, progress=False)
    assert again.pretrain_record == first.pretrain_record
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert cached.stat().st_size < 5e6


def test_the_committed_denoiser_is_read_instead_of_trained(tmp_path, monkeypatch):
    """The default budget's pretrained denoiser is committed in float16: a call with that budget
    finds it (same settings, same data) and trains nothing, even with an empty cache."""
    from lora_edu.data import locate_datasets
    from lora_edu.sweep import _style_budget

    if locate_datasets().get("mnist") is None:
        pytest.skip("needs the MNIST files (LORA_EDU_DATA) to recompute the denoiser's name")
    (committed,) = diffusion.COMMITTED_DENOISERS.glob("denoiser-mnist-*.safetensors")
    assert committed.stat().st_size < 2e6  # float16
    monkeypatch.setenv("LORA_EDU_CACHE", str(tmp_path))
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    b = _style_budget()
    unet = diffusion.pretrained_denoiser(
        epochs=b["pretrain_epochs"], max_train=b["pretrain_max_train"], progress=False
    )
    assert unet.pretrain_record["stored"] == "float16" and unet.pretrain_record["steps"] == 3750
    assert not list(tmp_path.iterdir())  # nothing trained, nothing cached
    assert all(p.dtype == torch.float32 for p in unet.parameters())


def test_a_style_task_scores_its_samples(digits):
    torch.manual_seed(0)
    base = diffusion.make_denoiser(seed=2)
    assert diffusion.style_images("sevens", digits, np.arange(12) % 10).shape == (1, 28, 28)
    thick = diffusion.style_images("thick", digits, np.zeros(12))
    assert np.array_equal(thick, diffusion.thick_strokes(digits))
    plan = {"n_samples": 4, "steps": 2}
    none = diffusion.finetune_denoiser(thick, plan, base=base, style="thick", method="none")
    assert none["trainable_params"] == 0 and none["metric_name"] == "thick_share"
    samples = diffusion.sample(base, 4, steps=2, seed=0)
    assert none["ink_share"] == pytest.approx(diffusion.ink_share(samples))
    low, high = diffusion.ink_band(thick)
    inside = [low <= v <= high for v in diffusion.ink_shares(samples)]
    assert none["eval_correct"] == "".join(str(int(v)) for v in inside)
    assert none["metric"] == np.mean(inside)
    assert none["eval_values"] == [round(float(v), 4) for v in diffusion.ink_shares(samples)]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    lora = diffusion.finetune_denoiser(
        thick, plan, base=base, style="thick", epochs=1, batch_size=6, progress=False
    )
    assert 0 < lora["trainable_params"] < lora["total_params"] / 5 and lora["steps"] == 2
    assert len(lora["lora_targets"]) == 38  # attention projections and residual convolutions
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # a copy trained
    with pytest.raises(ValueError, match="no new head"):
        diffusion.finetune_denoiser(thick, plan, base=base, style="thick", method="head")
    with pytest.raises(ValueError, match="unknown style"):
        diffusion.style_images("bold", digits, np.zeros(12))
    with pytest.raises(ValueError, match="pass classifier"):
        diffusion.finetune_denoiser(thick, plan, base=base, style="sevens", method="none")


def test_style_scores_mark_each_sample_for_paired_tests():
    """A sample is "thick" when its ink share lies in the style images' middle 90 %; a sevens
    score marks the samples a classifier calls 7; the per-sample values pair two models."""
    from lora_edu.stats import compare_records

    blank, full = np.zeros((28, 28)), np.ones((28, 28))
    half = np.zeros((28, 28))
    half[:14] = 1
    style = np.stack([half] * 38 + [blank, full])
    assert diffusion.ink_band(style) == pytest.approx((0.5, 0.5))
    scores = diffusion.style_scores(np.stack([half, blank, full]), band=(0.4, 0.6))
    assert scores["eval_correct"] == "100" and scores["thick_share"] == pytest.approx(1 / 3)
    assert scores["eval_values"] == [0.5, 0.0, 1.0]

    class CallsEverythingSeven(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), 7), 10).float()

    sevens = diffusion.style_scores(np.stack([half, blank]), CallsEverythingSeven())
    assert sevens["digit_share"] == 1.0 and sevens["eval_correct"] == "11"
    with pytest.raises(ValueError, match="not both"):
        diffusion.style_scores(style, CallsEverythingSeven(), band=(0, 1))
    a = {"metric_name": "ink_share", "eval_values": [0.5, 0.4, 0.6, 0.5]}
    b = {"metric_name": "ink_share", "eval_values": [0.2, 0.1, 0.3, 0.2]}
    result = compare_records([a], [b], samples=200)
    assert result["delta"] == pytest.approx(0.3) and result["ci_low"] == pytest.approx(0.3)
