"""Captioning clips of moving digits: a small vision-language model, LoRA in its language model.

The LLaVA pattern (Liu et al. 2023, "Visual Instruction Tuning") at laptop size:

    train = moving_digit_clips(images, labels, 2000, seed=0)    # frames, digits, directions
    record = finetune_captioner(train, eval, image_base=pretrained_vit(), method="lora",
                                lora=LoRAConfig(LLAMA_QV))     # projection + LoRA on q, v

**The clips.** Each clip has ``FRAMES`` = 4 frames of 28×28 pixels and shows one or two MNIST
digits one after the other, each for two frames while it moves ``STEP`` pixels left, right, up
or down (from ``-STEP/2`` to ``+STEP/2`` around the centre); a clip with one digit ends with two
blank frames. Its caption names each digit and its direction in order, in one of several
phrasings (``PHRASINGS``: "a 3 moving left, then a 7 moving up", "the digit three moves left and
then the digit seven moves up", ...). Generated from MNIST with a fixed seed.

**The model.** Each frame goes through the MNIST-pretrained TinyViT, frozen in every arm, so its
features are computed once (``frame_tokens``): ``TOKENS_PER_FRAME`` = 5 vectors per frame, the
CLS state and the mean state of each quarter of the 4×4 patch grid (where the digit is). A
projection (a two-layer MLP as in LLaVA-1.5, ``model.classifier``: the "head" every arm trains)
maps them to SmolLM2-135M's embedding width; those 20 vectors are the **prefix** the language model
reads before the text ``PROMPT`` and the caption. The loss covers the caption tokens only.

**Scoring.** The trained model writes a caption greedily for every clip. ``content_correct``
reads the digits (numerals or words) and directions it names, in order: a caption is right when
both lists equal the clip's (``metric``, per clip in ``eval_correct`` for paired tests). BLEU
compares each caption with every phrasing of its clip.

ARCHITECTURE notes: a task module on top of the training side: imports ``defaults``, ``lora``,
``models`` (``load_causal_lm``), ``generate`` (BLEU, on use) and ``training.loop``, ``run``;
imported by ``tasks.images`` (tasks ``caption``, ``caption-dev``). The pretrained image tower
comes from the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lora_edu.defaults import LLAMA_QV
from lora_edu.lora import LoRAConfig
from lora_edu.models import image_arrays, load_causal_lm
from lora_edu.training.loop import _check_method, _pad, seed_everything
from lora_edu.training.run import LoopSettings, TrainSettings, _run, lora_or_default

FRAMES = 4
#: Frames per digit, and the pixels a digit moves between its two frames.
FRAMES_PER_DIGIT, STEP = 2, 8
DIRECTIONS = ("left", "right", "up", "down")
#: (dx, dy) of each direction, in pixels per unit (y grows downwards).
_MOVES = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Phrasings of a caption: how one digit is described ({d}: "7", {name}: "seven", {dir}), and
#: how a second one is joined on.
PHRASINGS: tuple[tuple[str, str], ...] = (
    ("a {d} moving {dir}", ", then "),
    ("the digit {name} moves {dir}", " and then "),
    ("a {name} going {dir}", ", followed by "),
    ("digit {d} slides {dir}", "; next, "),
)
#: The text before the visual tokens (a language model treats its first token as an "attention
#: sink", so that place goes to a real token, not to an image), and after them, before the
#: caption.
LEAD, PROMPT = "Video:", "Caption:"
TOKENS_PER_FRAME = 5
#: LoRA's targets in the language model when ``lora`` is left out: q and v (the paper's).
CAPTIONER_TARGETS = LLAMA_QV
#: The rates of a call without ``lr``: before the learning-rate pilot (task ``caption-dev``),
#: the causal LM's LoRA rate for LoRA, and for the projection alone a rate of the order the
#: image heads use.
CAPTIONER_LR: dict[str, float] = {"head": 1e-3, "lora": 2e-3, "full": 5e-5}


@dataclass(frozen=True)
class Clips:
    """Clips of moving digits: ``frames (N, FRAMES, 28, 28)`` uint8; ``digits`` and
    ``directions (N, 2)``: each clip's digits and direction indices (into ``DIRECTIONS``), -1
    where a clip has only one digit."""

    frames: np.ndarray
    digits: np.ndarray
    directions: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    def content(self, i: int) -> list[tuple[int, str]]:
        """Clip ``i``'s (digit, direction) pairs, in order."""
        return [
            (int(d), DIRECTIONS[int(m)])
            for d, m in zip(self.digits[i], self.directions[i], strict=True)
            if d >= 0
        ]

    def caption(self, i: int, phrasing: int = 0) -> str:
        """Clip ``i``'s caption in ``PHRASINGS[phrasing]``."""
        return render_caption(self.content(i), phrasing)

    def select(self, indices: Sequence[int] | np.ndarray) -> Clips:
        """The clips at ``indices``."""
        idx = np.asarray(indices)
        return Clips(self.frames[idx], self.digits[idx], self.directions[idx])


def render_caption(content: Sequence[tuple[int, str]], phrasing: int = 0) -> str:
    """The caption of ``content`` ((digit, direction) pairs) in ``PHRASINGS[phrasing]``."""
    template, join = PHRASINGS[phrasing]
    parts = [template.format(d=d, name=DIGIT_NAMES[d], dir=m) for d, m in content]
    return join.join(parts)


def shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``image`` moved ``dx`` pixels right and ``dy`` down; what leaves the frame is lost and
    what enters it is blank."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def moving_digit_clips(
    images: Any, labels: Any = None, n: int = 1000, *, seed: int = 0, two_share: float = 0.5
) -> Clips:
    """``n`` clips drawn (with ``seed``) from digit ``images`` ``(M, 28, 28)`` and their
    ``labels`` (or a dataset with columns ``image`` and ``label``): each clip has one digit, or
    two with probability ``two_share``; each digit is drawn at random and moves in a random
    direction (module docstring)."""
    if labels is None:
        images, labels = image_arrays(images)
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"moving_digit_clips expects images (M, 28, 28); got {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, FRAMES, 28, 28), dtype=np.uint8)
    digits = np.full((n, 2), -1, dtype=np.int64)
    directions = np.full((n, 2), -1, dtype=np.int64)
    for i in range(n):
        count = 2 if rng.random() < two_share else 1
        for k in range(count):
            pick, move = int(rng.integers(len(images))), int(rng.integers(len(DIRECTIONS)))
            dx, dy = _MOVES[DIRECTIONS[move]]
            digits[i, k], directions[i, k] = int(labels[pick]), move
            for f, t in enumerate((-STEP // 2, STEP // 2)):
                frames[i, FRAMES_PER_DIGIT * k + f] = shift(images[pick], dx * t, dy * t)
    return Clips(frames, digits, directions)


def named_content(caption: str) -> tuple[list[int], list[str]]:
    """The digits (numerals or words) and the directions a caption names, each in order."""
    words = re.findall(r"[a-z]+|\d", caption.lower())
    digits = [int(w) if w.isdigit() else DIGIT_NAMES.index(w) for w in words
              if w.isdigit() or w in DIGIT_NAMES]  # fmt: skip
    return digits, [w for w in words if w in DIRECTIONS]


def content_correct(caption: str, content: Sequence[tuple[int, str]]) -> bool:
    """Whether ``caption`` names exactly the digits and directions of ``content``, in order."""
    digits, directions = named_content(caption)
    return digits == [d for d, _ in content] and directions == [m for _, m in content]


# ------------------------------------------------------------------------------------ the model


@torch.no_grad()
def frame_tokens(image_base: nn.Module, frames: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """The visual tokens of every frame, ``(N, FRAMES * TOKENS_PER_FRAME, dim)``: per frame the
    TinyViT's final CLS state and the mean state of each quarter of its patch grid (top-left,
    top-right, bottom-left, bottom-right)."""
    image_base.eval()
    n, f = frames.shape[:2]
    flat = torch.from_numpy(np.ascontiguousarray(frames.reshape(n * f, *frames.shape[2:])))
    side = image_base.config["image_size"] // image_base.config["patch_size"]
    half = side // 2
    out = []
    for start in range(0, len(flat), batch_size):
        states = image_base.token_states(flat[start : start + batch_size])
        cls, grid = states[:, 0], states[:, 1:].reshape(len(states), side, side, -1)
        quarters = [grid[:, r : r + half, c : c + half].mean(dim=(1, 2))
                    for r in (0, half) for c in (0, half)]  # fmt: skip
        out.append(torch.stack([cls, *quarters], dim=1))
    tokens = torch.cat(out)
    return tokens.reshape(n, f * TOKENS_PER_FRAME, tokens.shape[-1])


class Projection(nn.Module):
    """LLaVA-1.5's connector: ``fc2(gelu(fc1(x)))``, visual features → the LM's embedding width."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_dim, out_dim), nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class Captioner(nn.Module):
    """A causal LM (``lm``) that reads projected visual tokens as a prefix.

    The sequence it reads is ``lead_ids`` (the tokens of ``LEAD``), the ``V`` projected visual
    tokens, then the text. ``forward(features, input_ids, attention_mask)``: ``features
    (B, V, dim)`` from ``frame_tokens``; ``input_ids (B, L)`` the text after the visual tokens
    (``PROMPT`` and the caption, right-padded). Returns the logits that predict text token ``t``
    at position ``t`` ``(B, L, vocab)``: the LM's outputs at positions ``P - 1 .. P + L - 2``,
    with ``P`` = len(lead_ids) + V tokens before the text.
    """

    def __init__(self, lm: nn.Module, feature_dim: int, lead_ids: Sequence[int]) -> None:
        super().__init__()
        self.lm = lm
        self.classifier = Projection(feature_dim, lm.get_input_embeddings().embedding_dim)
        ids = torch.tensor([list(lead_ids)], dtype=torch.long).reshape(1, len(lead_ids))
        self.register_buffer("lead_ids", ids, persistent=False)

    def embed(self, features: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The lead, the visual tokens and the text, one sequence of embeddings
        ``(B, len(lead) + V + L, d)``."""
        table = self.lm.get_input_embeddings()
        lead = table(self.lead_ids).expand(len(features), -1, -1)
        visual = self.classifier(features).to(lead.dtype)
        return torch.cat([lead, visual, table(input_ids)], dim=1)

    def forward(
        self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        before = self.lead_ids.shape[1] + features.shape[1]
        mask = torch.cat([attention_mask.new_ones(len(features), before), attention_mask], dim=1)
        logits = self.lm(inputs_embeds=self.embed(features, input_ids), attention_mask=mask).logits
        return logits[:, before - 1 : -1]


def captioner(
    image_base: nn.Module, lm: nn.Module, tokenizer: Any, *, seed: int = 0, lead: str = LEAD
) -> Captioner:
    """A ``Captioner`` over ``lm`` with a fresh projection from ``image_base``'s width, drawn
    with ``seed``; ``lead`` is the text before the visual tokens (spelled by ``tokenizer``;
    ``""``: the visual tokens come first)."""
    torch.manual_seed(seed)
    lead_ids = tokenizer(lead, add_special_tokens=False)["input_ids"] if lead else []
    return Captioner(lm, image_base.config["dim"], lead_ids)


def _prompt_ids(tokenizer: Any) -> list[int]:
    return tokenizer(PROMPT, add_special_tokens=False)["input_ids"]


def encode_caption(tokenizer: Any, caption: str) -> tuple[list[int], list[int]]:
    """The text after the prefix, ``PROMPT + " " + caption + eos``, as token ids, and its labels:
    -100 on the prompt (not learned), the ids themselves on the caption and the end token."""
    prompt = _prompt_ids(tokenizer)
    answer = tokenizer(" " + caption, add_special_tokens=False)["input_ids"]
    answer = answer + [tokenizer.eos_token_id]
    return prompt + answer, [-100] * len(prompt) + answer


@torch.inference_mode()
def generate_captions(
    model: Captioner,
    tokenizer: Any,
    features: torch.Tensor,
    *,
    max_new_tokens: int = 24,
    batch_size: int = 64,
) -> list[str]:
    """A greedy caption for each clip's ``features``: the prefix and ``PROMPT`` are read at
    once, then one token at a time with the LM's key/value cache, until the end token."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    prompt = torch.tensor([_prompt_ids(tokenizer)], device=device)
    eos = tokenizer.eos_token_id
    captions: list[str] = []
    for start in range(0, len(features), batch_size):
        batch = features[start : start + batch_size].to(device)
        embeds = model.embed(batch, prompt.expand(len(batch), -1))
        out = model.lm(inputs_embeds=embeds, use_cache=True)
        tokens, done = [], torch.zeros(len(batch), dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            tokens.append(nxt)
            done |= nxt == eos
            if bool(done.all()):
                break
            out = model.lm(input_ids=nxt[:, None], cache=out.cache, use_cache=True)
        ids = torch.stack(tokens, dim=1).tolist()
        for row in ids:
            row = row[: row.index(eos)] if eos in row else row
            captions.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    model.train(was_training)
    return captions


@torch.no_grad()
def nearest_tokens(model: Captioner, tokenizer: Any, features: torch.Tensor) -> list[str]:
    """For each visual token of one clip (``features (V, dim)``), the vocabulary token whose
    input embedding is nearest by cosine to its projection: what the prefix "says" in the
    language model's own words (often nothing a reader would recognise)."""
    table = model.lm.get_input_embeddings().weight
    visual = model.classifier(features.to(table.device)).to(table.dtype)
    cosines = nn.functional.normalize(visual, dim=-1) @ nn.functional.normalize(table, dim=-1).T
    return [tokenizer.decode([int(i)]) for i in cosines.argmax(dim=-1)]


def score_captions(captions: Sequence[str], clips: Clips) -> dict[str, Any]:
    """Content accuracy (``metric``: digits and directions all right), the per-clip verdicts
    (``eval_correct``), the share of clips whose digits alone (``digits_correct``) and whose
    directions alone (``directions_correct``) are right, and corpus BLEU against every phrasing
    of each clip."""
    from lora_edu.generate import corpus_bleu

    if len(captions) != len(clips):
        raise ValueError(f"{len(captions)} captions for {len(clips)} clips")
    right = [content_correct(c, clips.content(i)) for i, c in enumerate(captions)]
    named = [named_content(c) for c in captions]
    digits = [n[0] == [d for d, _ in clips.content(i)] for i, n in enumerate(named)]
    moves = [n[1] == [m for _, m in clips.content(i)] for i, n in enumerate(named)]
    references = [[clips.caption(i, p) for p in range(len(PHRASINGS))] for i in range(len(clips))]
    return {
        "metric": float(np.mean(right)) if right else None,
        "eval_correct": "".join("1" if ok else "0" for ok in right),
        "digits_correct": float(np.mean(digits)) if digits else None,
        "directions_correct": float(np.mean(moves)) if moves else None,
        "bleu": corpus_bleu(list(captions), references),
    }


def finetune_captioner(
    train: Clips,
    eval: Clips | None,
    *,
    image_base: nn.Module,
    method: str = "lora",
    lora: LoRAConfig | None = None,
    epochs: int = 1,
    lr: float | None = None,
    batch_size: int = 16,
    seed: int = 0,
    device: Any = None,
    progress: bool = True,
    return_model: bool = False,
    max_new_tokens: int = 24,
    lm: str = "smollm2",
    base: nn.Module | None = None,
    tokenizer: Any = None,
    lead: str = LEAD,
    **loop: Any,
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Train a ``Captioner`` (``image_base``'s frame tokens → a fresh projection → the causal LM
    ``load_causal_lm(lm)``) to caption ``train`` clips, each paired at every step with one of
    its ``PHRASINGS`` (drawn with ``seed``), with ``method``: ``"head"`` (the projection only),
    ``"lora"`` (the projection and LoRA in the language model: ``lora``, default r = 8 on
    q_proj and v_proj; ``"all-linear"`` adapts every linear layer of the LM, never the
    projection nor ``lm_head``) or ``"full"`` (the projection and the whole LM). After training
    the model captions every ``eval`` clip greedily: ``metric`` is the content accuracy
    (``score_captions``), with ``bleu``, ``eval_correct`` and the ``generations``. ``lr=None``
    → ``CAPTIONER_LR[method]``; ``base``/``tokenizer``: a language model already loaded (it is
    modified in place) instead of ``lm``; ``lead``: the text before the visual tokens (``""``:
    none); ``loop`` may set the loop's keywords (``LoopSettings``)."""
    loop_settings = LoopSettings.from_keywords("finetune_captioner()", loop, CAPTIONER_TARGETS)
    lora = lora_or_default(lora, CAPTIONER_TARGETS)
    _check_method(method)
    if method not in ("head", "lora", "full"):
        raise ValueError(f"finetune_captioner supports 'head', 'lora' and 'full', not {method!r}")
    for name, clips in (("train", train), ("eval", eval)):
        if clips is not None and not isinstance(clips, Clips):
            raise TypeError(
                f"{name} must be Clips (moving_digit_clips), got {type(clips).__name__}"
            )
    seed_everything(seed)
    if base is None:
        tokenizer, base = load_causal_lm(lm)
    elif tokenizer is None:
        raise ValueError("pass the tokenizer that belongs to base= as tokenizer=")
    model = captioner(image_base, base, tokenizer, seed=seed, lead=lead)
    features = frame_tokens(image_base, train.frames)
    eval_features = None if eval is None else frame_tokens(image_base, eval.frames)
    generator = torch.Generator().manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(indices: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        picks = torch.randint(len(PHRASINGS), (len(indices),), generator=generator).tolist()
        pairs = [encode_caption(tokenizer, train.caption(int(i), p))
                 for i, p in zip(indices.tolist(), picks, strict=True)]  # fmt: skip
        ids, labels = [t for t, _ in pairs], [y for _, y in pairs]
        mask = _pad([[1] * len(t) for t in ids], 0)
        inputs = {
            "features": features[indices],
            "input_ids": _pad(ids, pad),
            "attention_mask": mask,
        }
        return inputs, _pad(labels, -100)

    final = None
    if eval is not None:

        def final(net: nn.Module) -> dict[str, Any]:
            captions = generate_captions(net, tokenizer, eval_features,
                                         max_new_tokens=max_new_tokens)  # fmt: skip
            return {**score_captions(captions, eval), "generations": captions}

    settings = TrainSettings(
        method=method,
        lora=lora,
        epochs=epochs,
        lr=lr,
        default_lr=CAPTIONER_LR,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        return_model=return_model,
        final=final,
        loop=loop_settings,
    )
    return _run(
        "video-captioning",
        f"tinyvit+{lm}",
        model,
        len(train),
        collate,
        None,
        {
            "max_length": None,
            "metric_name": "content_accuracy",
            "n_eval": None if eval is None else len(eval),
            "max_new_tokens": max_new_tokens,
            "phrasings": [list(p) for p in PHRASINGS],
            **({"lead": lead} if lead != LEAD else {}),
            "base": getattr(image_base, "pretrain_record", None),
        },
        settings,
    )
