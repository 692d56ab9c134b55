"""Knowledge distillation (soft labels, a transfer set) and compression by truncated SVD, plus
their sweep tasks."""

from __future__ import annotations

import copy

import pytest
import test_models
import torch
from test_train import sentiment
from torch import nn

from lora_edu.compression import FEED_FORWARD, LowRankLinear, compress_feed_forward
from lora_edu.distill import distillation_loss, mixed_distillation_loss, soft_targets
from lora_edu.train import finetune_text_classifier

tiny_bert = test_models.tiny_bert


# ------------------------------------------------------------------ distillation


def test_soft_targets_and_the_loss_against_their_definitions():
    torch.manual_seed(0)
    teacher, student = torch.randn(5, 3), torch.randn(5, 3, requires_grad=True)
    T = 2.0
    p = soft_targets(teacher, T)
    torch.testing.assert_close(p, torch.softmax(teacher / 2, dim=-1))
    loss = distillation_loss(T)(student, p)
    # T² (H(p) + KL(p ‖ q)), with q the student's softened probabilities
    q = torch.softmax(student / T, dim=-1)
    entropy = -(p * p.log()).sum(-1).mean()
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(loss, T**2 * (entropy + kl))
    # With T = 1 and one-hot targets it is the ordinary cross-entropy.
    labels = torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(
        distillation_loss(1.0)(student, nn.functional.one_hot(labels, 3).float()),
        nn.functional.cross_entropy(student, labels),
    )
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_targets(teacher, 0)
    with pytest.raises(ValueError, match="do not match the logits"):
        distillation_loss()(student, p[:, :2])


def test_the_mixed_loss_weighs_soft_and_hard_terms_and_skips_missing_labels():
    torch.manual_seed(0)
    logits, T = torch.randn(4, 3), 2.0
    soft = soft_targets(torch.randn(4, 3), T)
    labels = torch.tensor([2, 0, -1, 1])
    targets = torch.cat([soft, labels[:, None].float()], dim=1)
    per_soft = -(soft * torch.log_softmax(logits / T, -1)).sum(-1) * T**2
    per_hard = nn.functional.cross_entropy(logits, labels.clamp_min(0), reduction="none")
    w = 0.3
    expected = torch.stack([
        w * per_soft[i] + (1 - w) * per_hard[i] if labels[i] >= 0 else per_soft[i]
        for i in range(4)
    ]).mean()  # fmt: skip
    torch.testing.assert_close(mixed_distillation_loss(T, w)(logits, targets), expected)
    # weight 1: the soft labels alone, as distillation_loss
    torch.testing.assert_close(
        mixed_distillation_loss(T, 1.0)(logits, targets), distillation_loss(T)(logits, soft)
    )
    # weight 0 and every label present: the ordinary cross-entropy
    all_labelled = torch.cat([soft, torch.tensor([[2.0], [0], [1], [1]])], dim=1)
    torch.testing.assert_close(
        mixed_distillation_loss(T, 0.0)(logits, all_labelled),
        nn.functional.cross_entropy(logits, torch.tensor([2, 0, 1, 1])),
    )
    with pytest.raises(ValueError, match="soft_weight must be in"):
        mixed_distillation_loss(T, 1.5)
    with pytest.raises(ValueError, match="4 columns"):
        mixed_distillation_loss(T, 0.5)(logits, soft)


def test_unlabelled_sentences_need_a_teacher(tiny_bert):
    from datasets import Dataset

    train = sentiment(16)
    unlabelled = Dataset.from_dict({"text": train["text"], "label": [-1] * 8 + train["label"][8:]})
    with pytest.raises(ValueError, match="8 training sentences have label -1"):
        finetune_text_classifier(unlabelled, None, model=tiny_bert, progress=False)
    with pytest.raises(ValueError, match="evaluation set has label -1"):
        finetune_text_classifier(train, unlabelled, model=tiny_bert, progress=False)


def test_a_student_learns_what_its_teacher_says_not_the_labels(tiny_bert):
    """A teacher that answers the opposite of the labels: distilled from it, a student gets the
    labels wrong, though the same training on the labels gets them right."""
    train, eval_ = sentiment(96), sentiment(48, seed=1)
    kwargs = dict(method="full", model=tiny_bert, lr=1e-2, epochs=6, batch_size=16, progress=False)
    record, teacher = finetune_text_classifier(train, eval_, return_model=True, **kwargs)
    assert record["metric"] >= 0.9 and record["distill_temperature"] is None
    contrarian = copy.deepcopy(teacher)
    with torch.no_grad():
        contrarian.classifier.weight.neg_()
        contrarian.classifier.bias.neg_()
    distilled = finetune_text_classifier(train, eval_, teacher=contrarian, **kwargs)
    assert distilled["metric"] <= 0.2 and distilled["distill_temperature"] == 2.0


# ------------------------------------------------------------------ compression


def test_low_rank_linear_is_the_truncated_svd():
    torch.manual_seed(0)
    layer = nn.Linear(12, 7)
    x = torch.randn(4, 12)
    full = LowRankLinear(layer, 7)
    torch.testing.assert_close(full(x), layer(x), atol=1e-5, rtol=1e-5)
    U, S, Vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    W3 = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
    three = LowRankLinear(layer, 3)
    torch.testing.assert_close(three(x), x @ W3.T + layer.bias.detach(), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in three.parameters()) == 3 * (12 + 7) + 7
    with pytest.raises(ValueError, match=r"rank must be in 1\.\.7 for a 7×12 layer, got 8"):
        LowRankLinear(layer, 8)


def test_compress_feed_forward_takes_the_mlp_and_not_the_attention(tiny_bert):
    from lora_edu.models import load_text_model

    _, model = load_text_model("sequence", 2, tiny_bert)
    W = model.get_submodule("encoder.encoder.layer.0.intermediate.dense").weight.detach().clone()
    info = compress_feed_forward(model, 4)
    assert info["layers"] and all(
        n.endswith(("intermediate.dense", ".output.dense")) and "attention" not in n
        for n in info["layers"]
    )
    assert isinstance(model.get_submodule("encoder.encoder.layer.0.output.dense"), LowRankLinear)
    assert isinstance(
        model.get_submodule("encoder.encoder.layer.0.attention.output.dense"), nn.Linear
    )
    S = torch.linalg.svdvals(W)
    first = "encoder.encoder.layer.0.intermediate.dense"
    assert info["relative_error"][first] == pytest.approx(float(S[4:].norm() / S.norm()), rel=1e-5)
    d_out, d_in = W.shape
    saved = len(info["layers"]) * (d_out * d_in - 4 * (d_in + d_out))  # each keeps 4 (d_in + d_out)
    assert info["params_before"] - info["params_after"] == saved
    with pytest.raises(ValueError, match="matches"):
        compress_feed_forward(nn.Sequential(nn.ReLU()), 2, FEED_FORWARD)


# ------------------------------------------------------------------ the sweep tasks (real SST-2)


def test_teacher_is_cached_and_the_two_studies_run(tmp_path, monkeypatch):
    from lora_edu.data import find_dataset

    if find_dataset("sst2") is None:
        pytest.skip("SST-2 files not found (LORA_EDU_DATA)")
    from lora_edu.tasks.text import sst2_teacher

    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    monkeypatch.setenv("LORA_EDU_CACHE", str(tmp_path / "cache"))
    tokenizer, teacher, record = sst2_teacher(progress=False)
    assert record["method"] == "full" and record["seed"] == 0
    _, again, same = sst2_teacher(progress=False)  # read from the cache this time
    assert same["metric"] == record["metric"]
    ids = tokenizer(["a fine film"], return_tensors="pt")
    torch.testing.assert_close(again(**ids).logits, teacher(**ids).logits)
    compressed = _compression_runs(tmp_path, record)
    assert compressed


def test_the_distillation_split_is_disjoint_and_every_arm_runs(tmp_path, monkeypatch):
    from lora_edu.data import find_dataset

    if find_dataset("sst2") is None:
        pytest.skip("SST-2 files not found (LORA_EDU_DATA)")
    from lora_edu.experiments import TRANSFER_LABELS, preset_grid
    from lora_edu.sweep import run_sweep
    from lora_edu.tasks import task_spec
    from lora_edu.tasks.distillation import distillation_split

    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    monkeypatch.setenv("LORA_EDU_CACHE", str(tmp_path / "cache"))
    split = distillation_split()
    texts = {name: set(part["text"]) for name, part in split.items()}
    assert not texts["transfer"] & texts["teacher"] and not texts["dev"] & texts["teacher"]
    assert not texts["transfer"] & texts["dev"] and texts["labelled"] <= texts["teacher"]
    distilled = run_sweep("sst2-distill", preset_grid("sst2-distill", "distillation"),
                          tmp_path / "d.jsonl", progress=False)  # fmt: skip
    assert [r["transfer_labels"] for r in distilled] == list(TRANSFER_LABELS)
    assert {r["n_train"] for r in distilled} == {len(split["labelled"]) + len(split["transfer"])}
    soft = next(r for r in distilled if r["transfer_labels"] == "teacher-soft")
    assert (soft["distill_temperature"], soft["distill_soft_weight"]) == (2.0, 0.5)
    assert all(r.get("distill_temperature") is None for r in distilled if r is not soft)
    for rec in distilled:  # the teacher, scored beside each student that read it
        read_it = rec["transfer_labels"].startswith("teacher")
        assert ("teacher_eval_correct" in rec) == read_it
        if read_it:
            verdicts = rec["teacher_eval_correct"]
            assert len(verdicts) == len(rec["eval_correct"])
            assert rec["teacher_metric"] == verdicts.count("1") / len(verdicts)
    spec = task_spec("sst2-distill")
    with pytest.raises(ValueError, match="transfer_labels must be one of"):
        spec.finetune(*spec.load(), transfer_labels="oracle")


def _compression_runs(tmp_path, record):
    from lora_edu.experiments import preset_grid
    from lora_edu.sweep import run_sweep

    compressed = run_sweep("sst2-ffn32", preset_grid("sst2-ffn32", "compression"),
                           tmp_path / "c.jsonl", progress=False)  # fmt: skip
    none, lora, full = compressed
    assert [none["method"], lora["method"], full["method"]] == ["none", "lora", "full"]
    assert none["total_params"] < record["total_params"]  # the compressed teacher is smaller
    assert none["total_params"] == lora["total_params"] - lora["trainable_params"] + 770
    first = run_sweep("sst2-ffn32-pretrained", preset_grid("sst2-ffn32-pretrained", "compression"),
                      tmp_path / "c.jsonl", progress=False)  # fmt: skip
    (pretrained,) = first  # the pretrained model, compressed, then LoRA: as small as the teacher
    assert pretrained["total_params"] == lora["total_params"] and pretrained["task"].endswith(
        "-pretrained"
    )
    return compressed


def test_method_none_needs_the_trained_classifier(tiny_bert):
    with pytest.raises(ValueError, match="pass that classifier as base="):
        finetune_text_classifier(sentiment(8), sentiment(8), method="none", model=tiny_bert)
