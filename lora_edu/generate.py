"""Text generation with a causal LM: chat prompts, the response-only loss mask, batched greedy
decoding, and the E2E metrics (BLEU and ROUGE-L against every reference of a meaning
representation).

    tokenizer, model = load_causal_lm()
    generate(model, tokenizer, ["What is the capital of France?"])   # ['The capital of France is Paris.']

Shapes: a tokenised example is ``input_ids (T,)`` with ``labels (T,)`` equal to the next token
where the loss counts and ``-100`` elsewhere (``encode_example``); a batch is left-padded
``(B, T_max)`` for generation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

#: The instruction that turns an E2E meaning representation into a prompt (as in the calibration
#: of the package's budgets): "Describe this restaurant in one sentence: name : Blue Spice | ...".
E2E_INSTRUCTION = "Describe this restaurant in one sentence: "


def e2e_prompt(mr: str) -> str:
    """The user message for one E2E meaning representation."""
    return E2E_INSTRUCTION + mr


def instruction_prompt(instruction: str, input: str = "") -> str:
    """The user message for one Alpaca-style item: the instruction, then its input if any."""
    return instruction if not input else f"{instruction}\n\n{input}"


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    """``prompt`` as the user turn of the tokenizer's chat template, ending with the assistant's
    header, so that the model's next tokens are its answer (``add_generation_prompt=True``)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return prompt + "\n"  # a base model without a chat template: plain continuation
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn(tokenizer: Any) -> str:
    """The token that ends the assistant's answer (SmolLM2: ``<|im_end|>``)."""
    return tokenizer.eos_token


def encode_example(
    tokenizer: Any, prompt: str, response: str, max_length: int = 256, mask_prompt: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids of ``chat_prompt(prompt) + response + end_of_turn`` and the labels for a
    causal-LM loss, already shifted by one: ``labels[t]`` is the token the model must predict
    after reading ``input_ids[: t + 1]``.

    Returns ``(input_ids, labels)`` of equal length ``T - 1`` (the last token is only a target).
    With ``mask_prompt`` the targets inside the prompt are ``-100`` (ignored by the loss): the
    model learns to answer, not to reproduce the question. The sequence is cut to ``max_length``
    tokens from the right; a prompt longer than that raises a ValueError.
    """
    prompt_ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    answer = response + end_of_turn(tokenizer)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) >= max_length:
        raise ValueError(
            f"the prompt alone is {len(prompt_ids)} tokens, max_length={max_length}; raise "
            f"max_length or shorten the prompt: {prompt[:80]!r}..."
        )
    ids = (prompt_ids + answer_ids)[:max_length]
    targets = ids[1:]
    if mask_prompt:
        # targets[t] = ids[t + 1]: the first answer token is target number len(prompt) - 1.
        targets = [-100] * (len(prompt_ids) - 1) + targets[len(prompt_ids) - 1 :]
    return ids[:-1], targets


@contextlib.contextmanager
def _decoding(model: nn.Module, tokenizer: Any) -> Iterator[Callable[[list[str]], Any]]:
    """Eval mode, no autograd and a left-padding tokenizer for the block (both restored after);
    yields ``encode(texts)``: the texts as one left-padded batch on the model's device."""
    side, was_training = tokenizer.padding_side, model.training
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    model.eval()

    def encode(texts: list[str]) -> Any:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return batch.to(device)

    try:
        with torch.inference_mode():
            yield encode
    finally:
        tokenizer.padding_side = side
        model.train(was_training)


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    chat: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> list[str]:
    """The model's answer to each prompt, decoded in batches of ``batch_size``.

    Batches are left-padded (every prompt ends where generation starts) and decoded with the
    KV cache; greedy (``do_sample=False``) by default, so the same model gives the same text.
    ``chat=True`` wraps each prompt in the chat template (``chat_prompt``). Generation stops at
    the end-of-turn token or after ``max_new_tokens``; special tokens are removed and the answer
    stripped. Prompts are sorted by length internally (less padding) and returned in order.

    ``max_new_tokens=0`` returns one empty string per prompt without running the model. A
    prompt of no tokens (``""`` with ``chat=False``), a prompt that with ``max_new_tokens``
    does not fit the model's context (``config.max_position_embeddings``), or a
    ``batch_size`` below 1 raises ValueError.
    """
    from tqdm.auto import tqdm

    for what, value, least in (
        ("max_new_tokens", max_new_tokens, 0),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{what} must be an int >= {least}, got {value!r}")
    if isinstance(prompts, str):
        prompts = [prompts]
    texts = [chat_prompt(tokenizer, p) if chat else p for p in prompts]
    _check_prompt_lengths(model, tokenizer, texts, max_new_tokens, chat)
    if max_new_tokens == 0:
        return [""] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str] = [""] * len(texts)
    if do_sample:
        torch.manual_seed(seed)
    with _decoding(model, tokenizer) as encode:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
            batch = order[start : start + batch_size]
            enc = encode([texts[i] for i in batch])
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=_pad_id(tokenizer),
                eos_token_id=tokenizer.eos_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            for i, ids in zip(batch, new, strict=True):
                answers[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return answers


def _context_length(model: nn.Module) -> int | None:
    """The most positions the model was built for (``config.max_position_embeddings``, GPT-2's
    ``n_positions``), or None when its config names no limit."""
    config = getattr(model, "config", None)
    for field in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_prompt_lengths(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], max_new_tokens: int, chat: bool
) -> None:
    """Refuse a prompt of no tokens (nothing to continue from) and one that, with its
    ``max_new_tokens`` answer, does not fit the model's context (positions past it are
    unlike anything the model was trained on: its output there is junk, not an error)."""
    if not texts:
        return
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    empty = [i for i, n in enumerate(lengths) if n == 0]
    if empty:
        raise ValueError(
            f"prompts[{empty[0]}] is {texts[empty[0]]!r}, which is 0 tokens (chat={chat}); "
            "expected at least one token for the model to continue from: give a non-empty "
            "prompt, or chat=True to wrap it in the chat template"
        )
    limit = _context_length(model)
    if limit is None:
        return
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    n = lengths[longest]
    if n > limit:
        raise ValueError(
            f"prompts[{longest}] is {n} tokens long (chat={chat}); the model's context is "
            f"{limit} tokens (config.max_position_embeddings); shorten the prompt so that it "
            f"and its answer (max_new_tokens={max_new_tokens}) fit in {limit} positions"
        )
    if n + max_new_tokens > limit:
        raise ValueError(
            f"prompts[{longest}] is {n} tokens long and max_new_tokens={max_new_tokens}: "
            f"{n} + {max_new_tokens} = {n + max_new_tokens} positions, more than the model's "
            f"context of {limit} tokens (config.max_position_embeddings); lower max_new_tokens "
            f"to at most {limit - n}, or shorten the prompt"
        )


def decode_speed(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    new_tokens: int = 32,
    batch_size: int = 8,
) -> float:
    """Generated tokens per second for ``prompts`` with exactly ``new_tokens`` new tokens each
    (end-of-turn ignored, greedy, KV cache): the same work whatever the model says."""
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    total, seconds = 0, 0.0
    with _decoding(model, tokenizer) as encode:
        for start in range(0, len(texts), batch_size):
            enc = encode(texts[start : start + batch_size])
            began = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, top_p=None, top_k=None,
                                 pad_token_id=_pad_id(tokenizer))  # fmt: skip
            seconds += time.perf_counter() - began
            total += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return total / seconds


# --------------------------------------------------------------------------- metrics


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-hypothesis reference lists → sacrebleu's reference streams (one per reference slot;
    ``None`` where a segment has fewer references than the most)."""
    most = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(most)]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0–100) of ``hypotheses`` against ``references[i]``, all references of the
    i-th input (sacrebleu, its default 13a tokenisation, so "shop ." and "shop." match)."""
    _check_pairs(hypotheses, references)
    return float(_bleu().corpus_score(list(hypotheses), _reference_streams(references)).score)


def bleu_statistics(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> list[list[int]]:
    """sacrebleu's sufficient statistics of each hypothesis (hypothesis and reference length,
    matched and total n-grams for n = 1..4): summed over any subset of inputs they give that
    subset's corpus BLEU exactly, which is what a paired bootstrap resamples
    (``stats.paired_bootstrap(..., metric="bleu")``)."""
    _check_pairs(hypotheses, references)
    rows = _bleu()._extract_corpus_statistics(list(hypotheses), _reference_streams(references))
    return [[int(v) for v in row] for row in rows]


def _bleu() -> Any:
    """sacrebleu's BLEU with its default 13a tokenisation. ``force=True`` only silences its
    warning about hypotheses ending in " ." (the E2E references are tokenised, so the models
    learn that style): 13a splits "shop." into "shop ." anyway, so the score is the same."""
    from sacrebleu.metrics import BLEU

    return BLEU(force=True)


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F-measure (0–100), each hypothesis scored against its best reference
    (Google's ``rouge-score`` package, as Hugging Face ``evaluate`` uses)."""
    from rouge_score import rouge_scorer

    _check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [
        scorer.score_multi(list(refs), hyp)["rougeL"].fmeasure
        for hyp, refs in zip(hypotheses, references, strict=True)
    ]
    return 100 * sum(scores) / len(scores)


def _check_pairs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(
            f"need one list of references per hypothesis; got {len(hypotheses)} hypotheses and "
            f"{len(references)} reference lists"
        )
    empty = [i for i, refs in enumerate(references) if isinstance(refs, str) or not refs]
    if empty:
        raise ValueError(
            f"references[{empty[0]}] is {references[empty[0]]!r}; expected a non-empty list of "
            "reference strings for each hypothesis"
        )


def paired_bootstrap(
    hypotheses_a: Sequence[str],
    hypotheses_b: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    samples: int = 1000,
    seed: int = 0,
    keep_deltas: bool = False,
) -> dict[str, Any]:
    """Paired bootstrap for corpus BLEU (Koehn 2004): resample the test inputs with replacement
    ``samples`` times and score both systems on the same resample. Returns ``bleu_a``,
    ``bleu_b``, ``delta`` (a − b), the 95 % interval of the delta, and ``p_value``: the two-sided
    share of resamples whose delta has the other sign than the observed one (×2, capped at 1);
    with ``keep_deltas`` also ``deltas``, every resample's delta (to draw their histogram)."""
    import numpy as np

    _check_pairs(hypotheses_a, references)
    _check_pairs(hypotheses_b, references)
    bleu = _bleu()
    # Sufficient statistics per sentence, summed per resample: exact corpus BLEU, fast.
    streams = _reference_streams(references)
    stats_a = np.array(bleu._extract_corpus_statistics(list(hypotheses_a), streams))
    stats_b = np.array(bleu._extract_corpus_statistics(list(hypotheses_b), streams))

    def score(stats: np.ndarray) -> float:
        return float(bleu._compute_score_from_stats(stats.tolist()).score)

    rng = np.random.default_rng(seed)
    n = len(references)
    deltas = np.empty(samples)
    for k in range(samples):
        idx = rng.integers(0, n, n)
        deltas[k] = score(stats_a[idx].sum(0)) - score(stats_b[idx].sum(0))
    observed = score(stats_a.sum(0)) - score(stats_b.sum(0))
    other_side = np.mean(deltas <= 0) if observed > 0 else np.mean(deltas >= 0)
    return {
        "bleu_a": score(stats_a.sum(0)),
        "bleu_b": score(stats_b.sum(0)),
        "delta": observed,
        "ci_low": float(np.percentile(deltas, 2.5)),
        "ci_high": float(np.percentile(deltas, 97.5)),
        "p_value": float(min(1.0, 2 * other_side)),
        **({"deltas": deltas.tolist()} if keep_deltas else {}),
    }


# --------------------------------------------------------------------------- datasets → prompts


def e2e_examples(dataset: Any, *, unique: bool = False) -> Any:
    """An E2E split (``load_e2e``) as columns ``prompt`` (``e2e_prompt(mr)``), ``response`` (the
    row's reference) and ``references``; ``unique=True`` keeps one row per MR (for decoding)."""
    import datasets

    from lora_edu.data import unique_mrs

    data = unique_mrs(dataset) if unique else dataset
    return datasets.Dataset.from_dict(
        {
            "prompt": [e2e_prompt(mr) for mr in data["mr"]],
            "response": list(data["text"]),
            "references": list(data["references"]),
        }
    )


def instruction_examples(dataset: Any) -> Any:
    """An instruction split (``load_instructions``) as columns ``prompt``
    (``instruction_prompt``), ``response`` (the output) and ``references`` (``[output]``)."""
    import datasets

    columns = zip(dataset["instruction"], dataset["input"], dataset["output"], strict=True)
    rows = [(instruction_prompt(i, x), y) for i, x, y in columns]
    return datasets.Dataset.from_dict(
        {
            "prompt": [p for p, _ in rows],
            "response": [y for _, y in rows],
            "references": [[y] for _, y in rows],
        }
    )
