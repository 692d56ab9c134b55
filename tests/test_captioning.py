"""The video captioner (lora_edu.captioning): moving-digit clips, their captions and how they are
scored, the visual tokens, the prefix's alignment with the text, greedy decoding with the cache,
and what each method trains. A tiny random Llama stands in for SmolLM2 except where its
tokenizer is needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from lora_edu import LoRAConfig
from lora_edu.captioning import (
    DIRECTIONS,
    FRAMES,
    PHRASINGS,
    TOKENS_PER_FRAME,
    Clips,
    captioner,
    content_correct,
    encode_caption,
    finetune_captioner,
    frame_tokens,
    generate_captions,
    moving_digit_clips,
    named_content,
    nearest_tokens,
    render_caption,
    score_captions,
    shift,
)
from lora_edu.models import TinyViT


def _digits(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blocky fake digits: a filled square whose size encodes nothing; labels cycle 0..9."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        top, left = rng.integers(8, 12, size=2)
        images[i, top : top + 8, left : left + 6] = 255
    return images, np.arange(n) % 10


def _centroid(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(frame)
    return np.array([xs.mean(), ys.mean()])


def test_each_digit_moves_the_way_its_caption_says():
    clips = moving_digit_clips(*_digits(), 200, seed=3)
    assert clips.frames.shape == (200, FRAMES, 28, 28) and clips.frames.dtype == np.uint8
    counts = (clips.digits >= 0).sum(axis=1)
    assert set(counts) == {1, 2} and 0.35 < np.mean(counts == 2) < 0.65
    expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for i in range(len(clips)):
        for k, (_, direction) in enumerate(clips.content(i)):
            first, second = clips.frames[i, 2 * k], clips.frames[i, 2 * k + 1]
            step = _centroid(second) - _centroid(first)
            assert np.allclose(np.sign(np.round(step)), expected[direction]), (i, k, step)
        if counts[i] == 1:
            assert not clips.frames[i, 2:].any()  # a one-digit clip ends with blank frames
    again = moving_digit_clips(*_digits(), 200, seed=3)
    assert np.array_equal(again.frames, clips.frames)  # a fixed seed, the same clips


def test_shift_moves_pixels_and_fills_with_blank():
    image = np.zeros((5, 5), dtype=np.uint8)
    image[2, 2] = 7
    assert shift(image, 2, 0)[2, 4] == 7 and shift(image, 0, -2)[0, 2] == 7
    assert shift(image, 3, 0).sum() == 0  # moved out of the frame: gone


def test_every_phrasing_is_read_back_and_a_wrong_caption_is_not():
    content = [(3, "left"), (7, "up")]
    for p in range(len(PHRASINGS)):
        caption = render_caption(content, p)
        assert content_correct(caption, content), caption
        assert named_content(caption) == ([3, 7], ["left", "up"])
        assert not content_correct(caption, [(3, "left")])  # one digit too many
        assert not content_correct(caption, [(7, "up"), (3, "left")])  # order matters
        assert not content_correct(caption.replace("up", "down"), content)
    assert (
        render_caption(content, 1) == "the digit three moves left and then the digit seven moves up"
    )
    assert content_correct("A 3 going LEFT, then seven up.", content)


def test_captions_are_scored_by_content_and_by_bleu_against_every_phrasing():
    clips = moving_digit_clips(*_digits(), 6, seed=1)
    perfect = [clips.caption(i, i % len(PHRASINGS)) for i in range(len(clips))]
    scores = score_captions(perfect, clips)
    assert scores["metric"] == 1.0 and scores["eval_correct"] == "1" * 6
    assert scores["bleu"] > 99  # each caption is one of its references
    wrong = [c.replace("left", "right") if "left" in c else c.replace("right", "left")
             for c in perfect]  # fmt: skip
    scored = score_captions(wrong, clips)
    assert scored["metric"] < 1.0 and scored["digits_correct"] == 1.0
    assert scored["directions_correct"] == scored["metric"]  # only the directions changed
    with pytest.raises(ValueError, match="5 captions for 6 clips"):
        score_captions(perfect[:5], clips)


def test_frame_tokens_are_the_cls_and_the_quarter_means_of_the_vit_states():
    torch.manual_seed(0)
    vit = TinyViT().eval()
    clips = moving_digit_clips(*_digits(), 3, seed=0)
    tokens = frame_tokens(vit, clips.frames)
    assert tokens.shape == (3, FRAMES * TOKENS_PER_FRAME, vit.config["dim"])
    states = vit.token_states(torch.from_numpy(clips.frames[1]))  # clip 1's frames
    grid = states[:, 1:].reshape(FRAMES, 4, 4, -1)
    frame2 = tokens[1, 2 * TOKENS_PER_FRAME : 3 * TOKENS_PER_FRAME]
    assert torch.allclose(frame2[0], states[2, 0], atol=1e-6)  # CLS
    assert torch.allclose(frame2[2], grid[2, :2, 2:].mean(dim=(0, 1)), atol=1e-6)  # top right
    assert torch.allclose(frame2[3], grid[2, 2:, :2].mean(dim=(0, 1)), atol=1e-6)  # bottom left
    # the states are the ones the classifier reads
    logits = vit(torch.from_numpy(clips.frames[1]))
    assert torch.allclose(vit.classifier(states[:, 0]), logits, atol=1e-6)


@pytest.fixture(scope="module")
def tokenizer(smollm):
    return smollm[0]


def tiny_lm(vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab_size, tie_word_embeddings=True,
        initializer_range=0.5,  # large random weights: the next token depends on the context
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def test_the_loss_covers_the_caption_and_the_prefix_lines_up_with_the_text(tokenizer):
    ids, labels = encode_caption(tokenizer, "a 3 moving left")
    prompt = len(tokenizer("Caption:", add_special_tokens=False)["input_ids"])
    assert labels[:prompt] == [-100] * prompt and labels[prompt:] == ids[prompt:]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[prompt:-1]).strip() == "a 3 moving left"

    torch.manual_seed(0)
    model = captioner(TinyViT(), tiny_lm(len(tokenizer)), tokenizer, seed=0).eval()
    lead = tokenizer("Video:", add_special_tokens=False)["input_ids"]
    assert model.lead_ids.tolist() == [lead]
    features = torch.randn(2, 20, 64)
    input_ids = torch.tensor([ids, ids])
    logits = model(features, input_ids, torch.ones_like(input_ids))
    assert logits.shape == (2, len(ids), len(tokenizer))
    embeds = model.embed(features, input_ids)
    table = model.lm.get_input_embeddings()
    before = len(lead) + 20
    assert torch.equal(embeds[0, : len(lead)], table(torch.tensor(lead)))  # the lead's tokens
    assert torch.allclose(embeds[:, len(lead) : before], model.classifier(features))  # the image
    # position t of the output predicts text token t: the LM's position before - 1 + t
    full = model.lm(inputs_embeds=embeds).logits
    assert torch.allclose(logits, full[:, before - 1 : before - 1 + len(ids)], atol=1e-5)
    # the text's first token is predicted from the lead and the image alone
    alone = model.lm(inputs_embeds=embeds[:, :before]).logits[:, -1]
    assert torch.allclose(logits[:, 0], alone, atol=1e-5)


def test_without_a_lead_the_image_comes_first_and_nearest_tokens_read_the_embedding_table(
    tokenizer,
):
    model = captioner(TinyViT(), tiny_lm(len(tokenizer)), tokenizer, lead="").eval()
    features = torch.randn(1, 20, 64)
    ids = torch.tensor([[5, 6]])
    embeds = model.embed(features, ids)
    assert embeds.shape[1] == 22 and torch.allclose(embeds[:, :20], model.classifier(features))
    # a visual token set to a word's own embedding is read back as that word
    table = model.lm.get_input_embeddings().weight
    word = tokenizer(" seven", add_special_tokens=False)["input_ids"][0]
    model.classifier = torch.nn.Identity()
    feats = table[[word, word + 1]].detach()
    assert nearest_tokens(model, tokenizer, feats) == [tokenizer.decode([word]),
                                                        tokenizer.decode([word + 1])]  # fmt: skip


def test_greedy_captions_with_the_cache_equal_greedy_decoding_without_it(tokenizer):
    torch.manual_seed(1)
    model = captioner(TinyViT(), tiny_lm(len(tokenizer)), tokenizer, seed=1).eval()
    features = torch.randn(3, 20, 64)
    captions = generate_captions(model, tokenizer, features, max_new_tokens=6, batch_size=2)
    prompt = torch.tensor([tokenizer("Caption:", add_special_tokens=False)["input_ids"]])
    for i in range(3):
        ids = prompt.clone()
        out = []
        for _ in range(6):
            with torch.no_grad():
                nxt = int(
                    model.lm(inputs_embeds=model.embed(features[i : i + 1], ids))
                    .logits[0, -1]
                    .argmax()
                )
            if nxt == tokenizer.eos_token_id:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        assert captions[i] == tokenizer.decode(out, skip_special_tokens=True).strip()
        assert len(set(out)) > 1  # a caption of one repeated token would test no context


@pytest.mark.parametrize(
    ("method", "lora", "trains"),
    [
        ("head", None, {"classifier"}),
        ("lora", None, {"classifier", "q_proj", "v_proj"}),
        (
            "lora",
            LoRAConfig("all-linear"),
            {
                "classifier",
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            },
        ),
    ],  # fmt: skip
)
def test_each_method_trains_the_projection_and_its_own_part_of_the_language_model(
    tokenizer, method, lora, trains
):
    vit = TinyViT()
    clips = moving_digit_clips(*_digits(), 12, seed=0)
    record, model = finetune_captioner(
        clips.select(range(8)), clips.select(range(8, 12)), image_base=vit, method=method,
        lora=lora, batch_size=4, progress=False, return_model=True, max_new_tokens=4,
        base=tiny_lm(len(tokenizer)), tokenizer=tokenizer,
    )  # fmt: skip
    parts = set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            parts.add("classifier" if name.startswith("classifier.") else name.split(".")[-2])
    assert parts == trains
    assert not any("lm_head" in t or "classifier" in t for t in record["lora_targets"])
    assert record["steps"] == 2 and record["metric_name"] == "content_accuracy"
    assert len(record["eval_correct"]) == 4 and len(record["generations"]) == 4
    assert 0.0 <= record["metric"] <= 1.0


def test_wrong_inputs_are_named():
    vit = TinyViT()
    with pytest.raises(ValueError, match="supports 'head', 'lora' and 'full'"):
        finetune_captioner(None, None, image_base=vit, method="bitfit")
    with pytest.raises(TypeError, match="train must be Clips"):
        finetune_captioner([1, 2], None, image_base=vit)
    with pytest.raises(ValueError, match=r"expects images \(M, 28, 28\)"):
        moving_digit_clips(np.zeros((3, 8, 8)), np.zeros(3), 2)
    with pytest.raises(ValueError, match="tokenizer that belongs to base"):
        finetune_captioner(Clips(*[np.zeros((1, 4, 28, 28), np.uint8)] + [np.zeros((1, 2))] * 2),
                           None, image_base=vit, base=tiny_lm(10))  # fmt: skip
    assert DIRECTIONS == ("left", "right", "up", "down")
