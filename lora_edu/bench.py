"""Side by side: what LoRA costs to train, to run and to hold in memory, measured.

``lora-edu bench`` (or ``run_bench(BenchConfig(...))``) builds one model, deep-copies it once per
mode (so every mode starts from equal weights), feeds all of them the same batch, and times them
in one process, **interleaved** (full, lora, peft, floor, full, lora, ...: a slow moment of the
machine hits every mode alike), reporting medians of ``reps`` repetitions after ``warmup``.

Training step = forward + backward + ``torch.optim.AdamW`` step, for four modes:

======  =====================================================================================
full    every weight trains (full fine-tuning)
lora    lora_edu's LoRA (``apply_lora`` on ``targets``, rank ``r``) + the classifier head
peft    Hugging Face PEFT's LoRA with the same settings + the head (skipped without peft)
floor   base frozen, no adapter, but the gradient still flows back through every layer to the
        embeddings' output (one trainable scalar multiplies it) + the head: the least that any
        adapter of the inner layers can cost, since it needs that same backward pass
======  =====================================================================================

Inference (forward only, ``torch.inference_mode``, eval mode): ``base`` (the model without LoRA),
``unmerged`` (LoRA's extra path), ``merged`` (ΔW folded into W by ``merge_lora``).

Layer: the numpy LoRA layer (``numpy_lora.lora_forward`` + ``lora_backward``) against
``lora.LoRALinear`` (forward + backward) on the same shapes: x (batch·seq, d), W (d, d), r.

Peak memory: each training mode in a fresh worker process (``python -m lora_edu.bench --worker
MODE``, single-threaded, two at a time, after the timings), as the growth over three training
steps above the loaded model: on CUDA ``torch.cuda.max_memory_allocated``, on a CPU the peak
resident set size (Linux: ``VmHWM`` reset through ``/proc/self/clear_refs``; elsewhere
``ru_maxrss``, a lower bound).

The model is ``MeanPoolClassifier`` (``lora_edu.models``; 2 labels) around the encoder: for
``"minilm"`` exactly ``load_text_model("sequence", 2, "minilm")``, the model the notebooks
fine-tune; ``"tiny-bert"`` is a random 2-layer BERT of width 32 (``TINY_BERT``) for tests. Inputs
are random token ids (the cost does not depend on which tokens), no padding. On CUDA the forward
pass runs under bfloat16 autocast; on a CPU in float32.

Causal language models (``CAUSAL_MODELS``): ``"smollm2"`` is SmolLM2-135M-Instruct exactly as
``load_causal_lm("smollm2")`` loads it (a ``LlamaForCausalLM``, embeddings tied to ``lm_head``),
``"tiny-llama"`` a random 2-layer Llama of width 32 (``TINY_LLAMA``) for tests. They run the same
modes on a batch of random token ids with the next-token cross-entropy as the loss
(``labels = input_ids``; the model shifts them), with two differences: no head trains (a causal
LM keeps its pretrained ``lm_head``, so ``lora``/``peft`` train A and B only and ``floor`` only
the scalar on ``model.model.embed_tokens``' output; PEFT gets ``task_type="CAUSAL_LM"``), and
inference is measured as **decoding** instead of one forward pass: ``model.generate`` with the
KV cache, greedy, exactly ``new_tokens`` new tokens after each of ``prompts`` random prompts of
``prompt_len`` tokens (one batch, no padding, end-of-sequence ignored), in tokens per second.
The numpy layer is timed at the model's width as for a text model.

Defaults depend on the kind of model (``MODEL_DEFAULTS``; a ``BenchConfig`` field left at None
takes them): a text model batch 32 × 64 tokens, targets query,value, 10 repetitions after 2
warm-up rounds; a causal LM batch 8 × 64 tokens, targets q_proj,v_proj, 5 repetitions after 1
warm-up round, decoding 32 new tokens after 4 prompts of 32 tokens. The real benchmark of the
causal LM: ``lora-edu bench --model smollm2`` (add ``--json bench-smollm2.json`` to keep it).

The result (``run_bench``'s dict, ``--json``'s file) has these keys::

    config          the settings: model, batch, seq, r, alpha, targets, device, precision,
                    reps, warmup, lr, seed, threads, memory
    machine         python, platform, processor, cpu_count, torch, transformers, peft, device_name
    train           {mode: {median_ms, times_ms, trainable_params, total_params,
                            optimizer_state_bytes, peak_memory_mb}}   modes: full lora peft floor
    inference       {variant: {median_ms, times_ms}}                   base unmerged merged
    merged_max_abs_diff   max |logits(merged) − logits(unmerged)|: merging changed nothing
    layer           {shape: {tokens, d_in, d_out, r}, numpy: {...}, torch: {...},
                     numpy_over_torch, max_abs_diff, max_rel_diff (relative to the largest gradient)}
    ratios          lora/peft, lora/full, lora/floor, merged/base, unmerged/base: ratios of the
                    medians (None if a side is missing)
    paired_ratios   the same ratios as medians of per-round ratios (robust to changing load)
    targets         the ratio each should stay at or below (TARGETS)
    meets_targets   ratio name → bool (None if missing)
    memory_method   how peak memory was measured (None when not measured)
    skipped         what was not measured → why (e.g. "peft": "peft is not installed ...")

For a causal LM ``config`` also holds new_tokens, prompts, prompt_len, and ``inference`` is
replaced by ``decode``; the other keys are as above, plus two::

    decode          {variant: {median_ms, times_ms, generated_tokens, tokens_per_s}}  base
                    unmerged merged; ms per ``generate`` call, generated_tokens = prompts ·
                    new_tokens per call, tokens_per_s = generated_tokens / median
    decode_tokens_match   whether merged and unmerged decoded exactly the same tokens
    ratios          lora/peft, lora/full, lora/floor (training times, as above) and
                    decode merged/base, decode unmerged/base (tokens/s: higher is better)
    targets         CAUSAL_TARGETS: training ratios at or below, decode ratios at or above
    at_least        the ratio names whose target is a lower bound (AT_LEAST)

A mode that was skipped has no entry in ``train``; a value that was not measured is ``None``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lora_edu.lora import (
    LoRAConfig,
    LoRALinear,
    _resolve_targets,
    apply_lora,
    count_parameters,
    mark_only_lora_trainable,
    merge_lora,
)
from lora_edu.models import CAUSAL_LMS
from lora_edu.numpy_lora import lora_backward, lora_forward

MODES = ("full", "lora", "peft", "floor")
#: What a memory worker can build: the benchmark's modes, and LoRA on a 4-bit (NF4) base.
MEMORY_MODES = (*MODES, "qlora")
INFERENCE = ("base", "unmerged", "merged")
#: ratio name → (section, numerator, denominator), all medians.
RATIOS = {
    "lora/peft": ("train", "lora", "peft"),
    "lora/full": ("train", "lora", "full"),
    "lora/floor": ("train", "lora", "floor"),
    "merged/base": ("inference", "merged", "base"),
    "unmerged/base": ("inference", "unmerged", "base"),
}
#: What each ratio should stay at or below (MiniLM-L6, batch 32 × 64 tokens, r = 8 on query, value).
TARGETS = {
    "lora/peft": 1.00,
    "lora/full": 0.85,
    "lora/floor": 1.10,
    "merged/base": 1.02,
    "unmerged/base": 1.10,
}
#: ``--model tiny-bert``: a random BERT small enough for unit tests.
TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "vocab_size": 100,
}
#: ``--model tiny-llama``: a random Llama (SmolLM2's architecture) small enough for unit tests.
TINY_LLAMA = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}
#: Model names benchmarked as causal language models (anything else is a text encoder).
CAUSAL_MODELS = ("tiny-llama", *CAUSAL_LMS)
#: The causal LM's ratios: training as for a text model; decoding in tokens/s (higher is better).
CAUSAL_RATIOS = {
    **{name: sides for name, sides in RATIOS.items() if sides[0] == "train"},
    "decode merged/base": ("decode", "merged", "base"),
    "decode unmerged/base": ("decode", "unmerged", "base"),
}
#: Training ratios at or below, decode ratios (tokens/s) at or above (SmolLM2-135M, batch 8 × 64).
CAUSAL_TARGETS = {
    **{name: TARGETS[name] for name in CAUSAL_RATIOS if name in TARGETS},
    "decode merged/base": 0.98,
    "decode unmerged/base": 0.85,
}
#: Ratios whose target is a lower bound (a speed, not a time).
AT_LEAST = frozenset({"decode merged/base", "decode unmerged/base"})
#: Settings only a causal LM has (decoding); None for a text model.
DECODE_FIELDS = ("new_tokens", "prompts", "prompt_len")
#: kind of model → what a ``BenchConfig`` field left at None becomes.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "text": {"batch": 32, "seq": 64, "targets": ("query", "value"), "reps": 10, "warmup": 2},
    "causal": {
        **{"batch": 8, "seq": 64, "targets": ("q_proj", "v_proj"), "reps": 5, "warmup": 1},
        **{"new_tokens": 32, "prompts": 4, "prompt_len": 32},
    },
}
HEAD = "classifier"
#: Training steps a memory worker runs (AdamW allocates its state in the first one).
MEMORY_STEPS = 3


def model_kind(name: str) -> str:
    """``"causal"`` for the names in ``CAUSAL_MODELS``, else ``"text"`` (an encoder)."""
    return "causal" if name in CAUSAL_MODELS else "text"


@dataclass
class BenchConfig:
    """What ``run_bench`` measures; the ``lora-edu bench`` flags have the same names. Fields left
    at None take the model's defaults (``MODEL_DEFAULTS``); the decode fields are a causal LM's."""

    model: str = field(
        default="minilm", metadata={"help": "minilm | tiny-bert | smollm2 | tiny-llama | HF id"}
    )
    batch: int | None = field(default=None, metadata={"help": "sequences per training batch"})
    seq: int | None = field(default=None, metadata={"help": "tokens per training sequence"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float = field(default=16.0, metadata={"help": "scaling = alpha / r"})
    targets: tuple[str, ...] | None = field(default=None, metadata={"help": "layers LoRA adapts"})
    device: str = field(default="auto", metadata={"help": "auto (lora_edu.device()), cpu, cuda"})
    reps: int | None = field(default=None, metadata={"help": "timed repetitions (medians)"})
    warmup: int | None = field(default=None, metadata={"help": "untimed rounds first"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None: as is)"})
    memory: bool = field(default=True, metadata={"help": "peak memory in worker processes"})
    checkpointing: bool = field(
        default=False,
        metadata={"help": "memory workers: recompute activations in backward (HF models)"},
    )
    chunked_loss: bool = field(
        default=False,
        metadata={"help": "memory workers, causal LMs: the loss 128 tokens at a time"},
    )
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    seed: int = field(default=0, metadata={"help": "weights of new layers, inputs"})
    new_tokens: int | None = field(default=None, metadata={"help": "decode: new tokens per prompt"})
    prompts: int | None = field(default=None, metadata={"help": "decode: prompts in the batch"})
    prompt_len: int | None = field(default=None, metadata={"help": "decode: tokens per prompt"})

    def __post_init__(self) -> None:
        kind = model_kind(self.model)
        for name, value in MODEL_DEFAULTS[kind].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        given = [name for name in DECODE_FIELDS if getattr(self, name) is not None]
        if kind == "text" and given:
            raise ValueError(
                f"{', '.join(given)} set for {self.model!r}, a text model; decoding is measured "
                f"for causal LMs only ({', '.join(CAUSAL_MODELS)})"
            )
        self.targets = tuple(self.targets)
        for name in ("batch", "seq", "r", "reps", "threads", *DECODE_FIELDS):
            value = getattr(self, name)
            if value is None and name in ("threads", *DECODE_FIELDS):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(
                f"targets must name layers, e.g. ('query', 'value'); got {self.targets!r}"
            )


# --------------------------------------------------------------------------------------------
# Pure functions


def median_ms(times_ms: list[float]) -> float:
    """The median of a list of timings (robust to the odd slow repetition)."""
    return statistics.median(times_ms)


def _ratio_sides(
    sections: Mapping[str, Mapping[str, Any] | None],
    table: Mapping[str, tuple[str, str, str]] = RATIOS,
) -> dict[str, tuple[Any, Any]]:
    """ratio name → (numerator, denominator) looked up in ``sections`` (None when absent)."""
    return {
        name: ((sections.get(section) or {}).get(top), (sections.get(section) or {}).get(bottom))
        for name, (section, top, bottom) in table.items()
    }


def compute_ratios(
    train_ms: Mapping[str, float | None],
    inference_ms: Mapping[str, float | None] | None = None,
    *,
    decode: Mapping[str, float | None] | None = None,
    table: Mapping[str, tuple[str, str, str]] = RATIOS,
) -> dict[str, float | None]:
    """Every ratio of ``table`` (``RATIOS``; a causal LM's: ``CAUSAL_RATIOS``) from medians
    (``decode``: tokens/s); ``None`` where either side is missing.

    >>> compute_ratios({"lora": 90, "full": 120}, {"base": 10})["lora/full"]
    0.75
    """
    sides = _ratio_sides({"train": train_ms, "inference": inference_ms, "decode": decode}, table)
    return {k: a / b if a is not None and b else None for k, (a, b) in sides.items()}


def paired_ratios(
    train_times: Mapping[str, list[float]],
    inference_times: Mapping[str, list[float]] | None = None,
    *,
    decode: Mapping[str, list[float]] | None = None,
    table: Mapping[str, tuple[str, str, str]] = RATIOS,
) -> dict[str, float | None]:
    """Every ratio of ``table`` as the median over rounds of ``top_i / bottom_i``.

    Both modes of a pair ran in the same round, seconds apart, so a change of machine load between
    rounds cancels out; when this and ``compute_ratios`` disagree, the machine was not quiet.
    """
    sections = {"train": train_times, "inference": inference_times, "decode": decode}
    return {
        k: statistics.median(x / y for x, y in zip(a, b, strict=True)) if a and b else None
        for k, (a, b) in _ratio_sides(sections, table).items()
    }


def check_targets(
    ratios: Mapping[str, float | None], targets: Mapping[str, float] = TARGETS
) -> dict[str, bool | None]:
    """ratio name → whether it meets its target in ``targets`` (None if not measured): at or below
    it, or at or above it for the speeds in ``AT_LEAST``."""
    return {
        k: None if ratios.get(k) is None else (ratios[k] >= t if k in AT_LEAST else ratios[k] <= t)
        for k, t in targets.items()
    }


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state (AdamW: two moments per trainable number + steps)."""
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )


# --------------------------------------------------------------------------------------------
# The model, the batch, the four modes


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → ``lora_edu.config.device()``; anything else → ``torch.device(name)``."""
    if name == "auto":
        from lora_edu.config import device

        return device()
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but torch sees no CUDA device; use --device cpu or auto")
    return dev


def bench_model(name: str = "minilm", seed: int = 0) -> nn.Module:
    """The model ``name`` names. Text: ``MeanPoolClassifier`` (2 labels) around the encoder
    "minilm" (offline MiniLM-L6, as ``load_text_model`` builds it), "tiny-bert" (random,
    ``TINY_BERT``) or a HF id / path. Causal LM: "smollm2" (``load_causal_lm``) or "tiny-llama"
    (a random ``LlamaForCausalLM``, ``TINY_LLAMA``)."""
    from lora_edu.models import MeanPoolClassifier, load_causal_lm, load_text_model

    if name == "tiny-llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).eval()
    if model_kind(name) == "causal":
        return load_causal_lm(name)[1]
    if name != "tiny-bert":
        return load_text_model("sequence", 2, name, seed=seed)[1]
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return MeanPoolClassifier(
        BertModel(BertConfig(**TINY_BERT), add_pooling_layer=False), 2, 0.1, seed
    )


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` (or the model inside a PEFT wrapper) is a transformers generation model."""
    from transformers import GenerationMixin

    unwrap = getattr(model, "get_base_model", None)
    return isinstance(unwrap() if callable(unwrap) else model, GenerationMixin)


def _model_config(model: nn.Module) -> Any:
    """The transformers config: the causal LM's own, or the classifier's encoder's."""
    return model.config if is_causal_lm(model) else model.encoder.config


def _check_length(model: nn.Module, length: int, what: str) -> None:
    """Raise when ``length`` tokens (``what``: "seq", or a decode's prompt + new tokens) do not
    fit into the model's positions."""
    limit = getattr(_model_config(model), "max_position_embeddings", length)
    if length > limit:
        hint = f"; use --seq {limit}" if what == "seq" else ""
        raise ValueError(f"{what}={length} is longer than this model's {limit} positions{hint}")


def make_batch(
    model: nn.Module, batch: int, seq: int, device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids (batch, seq), an all-ones attention mask and labels: random classes
    (batch,) for a classifier, the token ids themselves for a causal LM (next-token loss: the
    model shifts them by one)."""
    config = _model_config(model)
    _check_length(model, seq, "seq")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    labels = ids.clone() if is_causal_lm(model) else torch.randint(0, 2, (batch,), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device),
        "labels": labels.to(device),
    }


def _scale_output(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output * module.input_scale


def add_input_scale(model: nn.Module) -> nn.Parameter:
    """Multiply the embeddings' output by a trainable scalar (1.0): then every layer must pass the
    gradient back to the embeddings' output, whatever else is frozen. Returns the scalar.

    The embeddings: a classifier's ``encoder.embeddings`` (BERT) or else
    ``encoder.get_input_embeddings()``; a causal LM's ``get_input_embeddings()`` (Llama:
    ``model.model.embed_tokens``; with tied weights ``lm_head`` only shares the matrix and never
    calls this module)."""
    encoder = model if is_causal_lm(model) else model.encoder
    embeddings = getattr(encoder, "embeddings", None)
    if embeddings is None:  # encoders without a BERT-style embeddings block, causal LMs
        embeddings = encoder.get_input_embeddings()
    like = next(embeddings.parameters())
    embeddings.input_scale = nn.Parameter(torch.ones((), device=like.device, dtype=like.dtype))
    embeddings.register_forward_hook(_scale_output)
    return embeddings.input_scale


def build_mode(base: nn.Module, mode: str, config: BenchConfig) -> nn.Module:
    """A deep copy of ``base`` set up for ``mode`` (one of ``MODES``); ``base`` stays untouched.

    A classifier's head (``HEAD``) trains in every mode; a causal LM has no new head, so its
    ``lm_head`` stays frozen and lora/peft train A and B only, floor only the scalar."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"mode must be one of {', '.join(MEMORY_MODES)}, got {mode!r}")
    causal = is_causal_lm(base)
    heads = [] if causal else [HEAD]
    model = copy.deepcopy(base)
    torch.manual_seed(config.seed)  # LoRA's A starts random
    # One string ("all-linear", a regular expression) as apply_lora reads it; else a list.
    targets = config.targets[0] if len(config.targets) == 1 else list(config.targets)
    if mode == "full":
        model.requires_grad_(True)
    elif mode in ("lora", "qlora"):
        quantize = "nf4" if mode == "qlora" else None  # qlora: every other linear layer in NF4
        apply_lora(model, LoRAConfig(targets, r=config.r, alpha=config.alpha, quantize=quantize))
        mark_only_lora_trainable(model, modules_to_save=heads)
    elif mode == "peft":
        from peft import LoraConfig, get_peft_model

        settings = LoraConfig(
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=0.0,
            target_modules=_resolve_targets(model, targets),  # exactly the layers lora_edu adapts
            modules_to_save=heads or None,
            task_type="CAUSAL_LM" if causal else None,
        )
        model = get_peft_model(model, settings)
    else:
        model.requires_grad_(False)
        for head in heads:
            model.get_submodule(head).requires_grad_(True)
        add_input_scale(model)
    return model


def peft_missing() -> str | None:
    """Why the peft mode cannot run here, or None when it can."""
    try:
        import peft  # noqa: F401
    except ImportError:
        return "peft is not installed (pip install peft)"
    return None


# --------------------------------------------------------------------------------------------
# Timing


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work: GPU kernels run asynchronously to Python."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def _autocast(device: torch.device) -> Callable[[], AbstractContextManager]:
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def interleaved_times(
    fns: Mapping[str, Callable[[], object]],
    reps: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per call of each function, run in rounds A B C A B C ...; the first ``warmup``
    rounds are not kept. The garbage collector is paused so that it cannot land in one mode."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(warmup + reps):
            for name, fn in fns.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                if round_ >= warmup:
                    times[name].append(1e3 * (time.perf_counter() - start))
            if log:
                log(f"  round {round_ + 1}/{warmup + reps}")
    finally:
        if was_enabled:
            gc.enable()
    return times


def _train_step_fn(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    autocast: Callable[[], AbstractContextManager],
    chunked_loss: bool = False,
) -> Callable[[], None]:
    """One AdamW step on ``batch``; ``chunked_loss``: a causal LM's loss by
    ``training.chunked_loss.chunked_lm_loss`` (the same loss, without the whole batch's logits)."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            if chunked_loss:
                from lora_edu.training.chunked_loss import chunked_lm_loss

                loss = chunked_lm_loss(model, **batch)
            else:
                loss = model(**batch).loss
        loss.backward()
        optimizer.step()

    return step


def _greedy(model: nn.Module, new_tokens: int) -> dict[str, Any]:
    """``generate`` settings for exactly ``new_tokens`` new tokens, greedy (sampling settings of
    the model's generation config switched off), padding with its pad or end-of-sequence id."""
    settings = model.generation_config
    pad = settings.pad_token_id if settings.pad_token_id is not None else settings.eos_token_id
    return {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,  # the end-of-sequence token cannot stop a call early
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": pad[0] if isinstance(pad, list) else pad,
    }


def _inference_fn(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    autocast: Callable[[], AbstractContextManager],
    new_tokens: int | None = None,
) -> Callable[[], torch.Tensor]:
    """A forward pass → the logits; with ``new_tokens``, greedy decoding with the KV cache →
    the new token ids (len(prompts), new_tokens)."""
    settings = None if new_tokens is None else _greedy(model, new_tokens)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), autocast():
            if settings is None:
                return model(**inputs).logits
            return model.generate(**inputs, **settings)[:, inputs["input_ids"].shape[1] :]

    return forward


def layer_bench(
    tokens: int,
    d: int,
    r: int,
    alpha: float,
    reps: int,
    warmup: int,
    device: torch.device,
    seed: int = 0,
) -> dict[str, Any]:
    """numpy ``lora_forward`` + ``lora_backward`` against ``LoRALinear`` forward + backward on
    x (tokens, d), W (d, d), A (r, d), B (d, r), float32; W frozen, gradients for x, A and B."""
    rng = np.random.default_rng(seed)
    x, G = (rng.standard_normal((tokens, d), dtype=np.float32) for _ in range(2))
    W = rng.standard_normal((d, d), dtype=np.float32) / np.sqrt(d)
    A = rng.standard_normal((r, d), dtype=np.float32) / np.sqrt(d)
    B = rng.standard_normal((d, r), dtype=np.float32) / np.sqrt(r)
    scaling = alpha / r

    layer = LoRALinear(nn.Linear(d, d, bias=False), r, alpha).to(device)
    with torch.no_grad():
        for param, value in ((layer.base_layer.weight, W), (layer.lora_A, A), (layer.lora_B, B)):
            param.copy_(torch.from_numpy(value))
    layer.base_layer.requires_grad_(False)
    xt = torch.from_numpy(x).to(device).requires_grad_(True)
    Gt = torch.from_numpy(G).to(device)

    def numpy_step() -> tuple[np.ndarray, ...]:
        lora_forward(x, W, A, B, scaling)
        return lora_backward(x, W, A, B, scaling, G)

    def torch_step() -> None:
        xt.grad = layer.lora_A.grad = layer.lora_B.grad = None
        layer(xt).backward(Gt)

    times = interleaved_times(
        {"numpy": numpy_step, "torch": torch_step}, reps, warmup, _synchronizer(device)
    )
    expected = numpy_step()
    found = (xt.grad, layer.lora_A.grad, layer.lora_B.grad)
    errors = [np.abs(t.cpu().numpy() - e) for t, e in zip(found, expected, strict=True)]
    diff = max(float(np.max(err)) for err in errors)
    # float32 sums over the tokens: the absolute error grows with their number, the relative not
    rel = max(
        float(np.max(err) / np.max(np.abs(e))) for err, e in zip(errors, expected, strict=True)
    )
    result: dict[str, Any] = {"shape": {"tokens": tokens, "d_in": d, "d_out": d, "r": r}}
    for name, values in times.items():
        result[name] = {"median_ms": median_ms(values), "times_ms": values}
    result["numpy_over_torch"] = result["numpy"]["median_ms"] / result["torch"]["median_ms"]
    result["max_abs_diff"] = diff
    result["max_rel_diff"] = rel
    return result


# --------------------------------------------------------------------------------------------
# Peak memory, one fresh process per mode


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux: make VmHWM (the peak resident set size) restart from the current size."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


def measure_peak_memory(config: BenchConfig, mode: str) -> dict[str, Any]:
    """In *this* process: build ``mode``, run ``MEMORY_STEPS`` training steps and return
    ``{"peak_memory_mb", "method"}``, the peak growth above the loaded model. Call it in a fresh
    process (``python -m lora_edu.bench --worker MODE``): memory freed earlier distorts the peak.

    On Linux it also returns ``model_mb`` (resident memory the built model added to the process
    after its imports and after a tiny model of the same kind was built and trained once, so that
    code loaded by the first model of a family does not count as the model) and
    ``peak_total_mb`` (the training peak above that baseline: the model plus what training adds),
    the numbers that compare a 4-bit base with a float32 one."""
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.chunked_loss and model_kind(config.model) != "causal":
        raise ValueError(f"chunked_loss is for causal LMs, got {config.model!r}")
    # Code that loads on the first model of a family (transformers' model classes, kernels)
    # added ~150 MB to the first model's count; a tiny model of the same kind loads it first.
    _train_once(
        replace(config, model=TINY_OF[model_kind(config.model)], batch=2, seq=8), mode, device
    )
    gc.collect()
    baseline_kb = _proc_status_kb("VmRSS")  # the interpreter, torch and the model code loaded
    model, step = _training_step(config, mode, device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(MEMORY_STEPS):
            step()
        torch.cuda.synchronize(device)
        peak, method = torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    elif _reset_peak_rss():
        before = 1024 * _proc_status_kb("VmRSS")
        for _ in range(MEMORY_STEPS):
            step()
        peak, method = 1024 * _proc_status_kb("VmHWM"), "peak RSS (VmHWM after clear_refs)"
    else:
        import resource  # not on Windows: there the worker fails and memory is reported as None

        unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else kB
        before = unit * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(MEMORY_STEPS):
            step()
        peak = unit * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss growth (a lower bound)"
    result = {"peak_memory_mb": (peak - before) / 2**20, "method": method}
    if device.type == "cpu" and baseline_kb is not None and method.startswith("peak RSS"):
        result["model_mb"] = (before - 1024 * baseline_kb) / 2**20
        result["peak_total_mb"] = (peak - 1024 * baseline_kb) / 2**20
    return result


#: The tiny random model of each kind, which ``measure_peak_memory`` builds and trains first.
TINY_OF = {"text": "tiny-bert", "causal": "tiny-llama"}


def _training_step(
    config: BenchConfig, mode: str, device: torch.device
) -> tuple[nn.Module, Callable[[], None]]:
    """The model ``config`` names, built for ``mode`` on ``device``, and its training step."""
    model = build_mode(bench_model(config.model, config.seed), mode, config).to(device).train()
    if config.checkpointing:  # keep only each block's input; recompute the rest in backward
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = make_batch(model, config.batch, config.seq, device, config.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    return model, _train_step_fn(model, optimizer, batch, _autocast(device), config.chunked_loss)


def _train_once(config: BenchConfig, mode: str, device: torch.device) -> None:
    _, step = _training_step(config, mode, device)
    step()


def _config_flags(config: BenchConfig) -> list[str]:
    return [
        *("--model", config.model, "--batch", str(config.batch), "--seq", str(config.seq)),
        *("--r", str(config.r), "--alpha", str(config.alpha), "--lr", str(config.lr)),
        *("--targets", ",".join(config.targets), "--device", config.device),
        *("--seed", str(config.seed)),
        *(("--threads", str(config.threads)) if config.threads else ()),
        *(("--checkpointing",) if config.checkpointing else ()),
        *(("--chunked-loss",) if config.chunked_loss else ()),
    ]


def peak_memory_in_workers(
    config: BenchConfig, modes: list[str], parallel: int = 2
) -> dict[str, dict[str, Any]]:
    """``measure_peak_memory`` for each mode, each in a fresh Python process (``parallel`` at a
    time; run this while nothing is being timed). mode → its dict, or ``{"error": ...}``.

    Workers run single-threaded: memory does not depend on speed, and several multi-threaded
    workers would fight over a laptop's few cores (each waiting on the others' threads)."""
    flags = _config_flags(replace(config, threads=1))

    def run(mode: str) -> dict[str, Any]:
        command = [sys.executable, "-m", "lora_edu.bench", "--worker", mode, *flags]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""}
        return json.loads(done.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return dict(zip(modes, pool.map(run, modes), strict=True))


# --------------------------------------------------------------------------------------------
# The whole benchmark


def _cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo; elsewhere whatever platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(device: torch.device) -> dict[str, Any]:
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "device_name": name,
    }


def run_bench(
    config: BenchConfig | None = None,
    base: nn.Module | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure everything the module docstring lists; returns the result dict (JSON-ready).

    ``base``: a model of the kind ``config.model`` names (a ``MeanPoolClassifier``-like text
    model, or a causal LM with ``config.model="tiny-llama"``/``"smollm2"``) to use instead of
    loading ``config.model`` (then memory workers cannot rebuild it and peak memory is skipped).
    """
    config = config or BenchConfig()
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run_bench(config, base, log or (lambda message: None))
    finally:
        torch.set_num_threads(threads)


def _time_training(
    base: nn.Module, modes: list[str], config: BenchConfig, device: torch.device, log: Callable
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]], nn.Module]:
    """Training steps of every mode, interleaved: (train section, raw times, the trained LoRA
    model, which inference reuses)."""
    batch = make_batch(base, config.batch, config.seq, device, config.seed)
    models = {mode: build_mode(base, mode, config).train() for mode in modes}
    optimizers = {
        mode: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=config.lr)
        for mode, m in models.items()
    }
    steps = {m: _train_step_fn(models[m], optimizers[m], batch, _autocast(device)) for m in modes}
    log(f"training steps, interleaved: {', '.join(modes)}")
    times = interleaved_times(steps, config.reps, config.warmup, _synchronizer(device), log)
    train = {}
    for mode in modes:
        counts = count_parameters(models[mode])
        train[mode] = {
            "median_ms": median_ms(times[mode]),
            "times_ms": times[mode],
            "trainable_params": counts["trainable"],
            "total_params": counts["total"],
            "optimizer_state_bytes": optimizer_state_bytes(optimizers[mode]),
            "peak_memory_mb": None,
        }
    return train, times, models["lora"]


def _time_inference(
    base: nn.Module, lora: nn.Module, config: BenchConfig, device: torch.device, log: Callable
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]], float, bool | None]:
    """The base model, the (trained) LoRA model and a merged copy of it, interleaved: forward
    passes of a text model, or a causal LM's greedy decoding of ``config.new_tokens`` tokens
    after ``config.prompts`` prompts of ``config.prompt_len`` tokens. Returns (the inference or
    decode section, raw times, max |logits merged − logits unmerged|, whether merged and unmerged
    decoded the same tokens: None for a text model)."""
    new_tokens = config.new_tokens if model_kind(config.model) == "causal" else None
    shape = (
        (config.batch, config.seq) if new_tokens is None else (config.prompts, config.prompt_len)
    )
    batch = make_batch(base, *shape, device, config.seed)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    variants = {
        "base": copy.deepcopy(base).eval(),
        "unmerged": lora.eval(),
        "merged": merge_lora(copy.deepcopy(lora)).eval(),
    }
    forwards = {k: _inference_fn(m, inputs, _autocast(device)) for k, m in variants.items()}
    diff = (forwards["merged"]() - forwards["unmerged"]()).abs().max().item()
    same = None
    if new_tokens is not None:
        forwards = {
            k: _inference_fn(m, inputs, _autocast(device), new_tokens) for k, m in variants.items()
        }
        tokens = {k: decode() for k, decode in forwards.items()}  # each variant once, alike
        same = torch.equal(tokens["merged"], tokens["unmerged"])
    log(f"{'inference' if new_tokens is None else 'decoding'}, interleaved: {', '.join(variants)}")
    times = interleaved_times(forwards, config.reps, config.warmup, _synchronizer(device), log)
    section: dict[str, dict[str, Any]] = {}
    for name, values in times.items():
        section[name] = {"median_ms": median_ms(values), "times_ms": values}
        if new_tokens is not None:
            generated = config.prompts * new_tokens
            section[name] |= {
                "generated_tokens": generated,
                "tokens_per_s": generated * 1e3 / median_ms(values),
            }
    return section, times, diff, same


def _run_bench(
    config: BenchConfig, base: nn.Module | None, log: Callable[[str], None]
) -> dict[str, Any]:
    device = resolve_device(config.device)
    causal = model_kind(config.model) == "causal"
    skipped: dict[str, str] = {}
    reason = peft_missing()
    modes = [m for m in MODES if not (m == "peft" and reason)]
    if reason:
        skipped["peft"] = reason
    if not config.memory:
        skipped["memory"] = "not requested (--no-memory)"
    elif base is not None:
        skipped["memory"] = "a model object was passed in: worker processes cannot rebuild it"

    log(f"loading {config.model} on {device}")
    base = (base if base is not None else bench_model(config.model, config.seed)).to(device)
    if causal:  # before minutes of training, not after
        _check_length(base, config.prompt_len + config.new_tokens, "prompt_len + new_tokens")
    train, train_times, lora = _time_training(base, modes, config, device, log)
    inference, infer_times, diff, same = _time_inference(base, lora, config, device, log)
    del lora
    log("numpy LoRA layer against LoRALinear")
    layer = layer_bench(
        config.batch * config.seq,
        _model_config(base).hidden_size,
        config.r,
        config.alpha,
        config.reps,
        config.warmup,
        device,
    )

    memory_method = None
    if "memory" not in skipped:
        log(f"peak memory: one worker process per mode ({', '.join(modes)})")
        for mode, found in peak_memory_in_workers(config, modes).items():
            if "error" in found:
                skipped[f"memory:{mode}"] = f"the worker failed: {found['error']}"
            else:
                train[mode]["peak_memory_mb"] = found["peak_memory_mb"]
                memory_method = found["method"]

    train_ms = {m: v["median_ms"] for m, v in train.items()}
    if causal:  # decoding compares speeds: tokens/s, per median and per round
        targets = CAUSAL_TARGETS
        speeds = {k: v["tokens_per_s"] for k, v in inference.items()}
        rounds = {
            k: [v["generated_tokens"] * 1e3 / t for t in v["times_ms"]]
            for k, v in inference.items()
        }
        ratios = compute_ratios(train_ms, decode=speeds, table=CAUSAL_RATIOS)
        paired = paired_ratios(train_times, decode=rounds, table=CAUSAL_RATIOS)
    else:
        targets = TARGETS
        ratios = compute_ratios(train_ms, {m: v["median_ms"] for m, v in inference.items()})
        paired = paired_ratios(train_times, infer_times)
    settings = asdict(config) | {
        "targets": list(config.targets),
        "device": str(device),
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
        "threads": torch.get_num_threads(),
    }
    if not causal:
        settings = {k: v for k, v in settings.items() if k not in DECODE_FIELDS}
    result = {
        "config": settings,
        "machine": _machine(device),
        "train": train,
        "decode" if causal else "inference": inference,
        "merged_max_abs_diff": diff,
    }
    if causal:
        result["decode_tokens_match"] = same
    result |= {
        "layer": layer,
        "ratios": ratios,
        "paired_ratios": paired,
        "targets": dict(targets),
    }
    if causal:
        result["at_least"] = [k for k in targets if k in AT_LEAST]
    return result | {
        "meets_targets": check_targets(ratios, targets),
        "memory_method": memory_method,
        "skipped": skipped,
    }


# --------------------------------------------------------------------------------------------
# Reading the result


def format_table(result: Mapping[str, Any]) -> str:
    """The result as a plain-text table (what ``lora-edu bench`` prints)."""
    c = result["config"]
    threads = f"{c['threads']} thread" + ("s" if c["threads"] != 1 else "")
    lines = [
        f"lora-edu bench: {c['model']}, batch {c['batch']} × {c['seq']} tokens, r={c['r']} on "
        f"{','.join(c['targets'])}, {c['device']} ({threads}, {c['precision']}), "
        f"medians of {c['reps']} after {c['warmup']} warm-up",
        "",
        f"{'training step':<16}{'median ms':>11}{'trainable':>14}{'optimizer state':>17}"
        f"{'peak memory':>14}",
    ]
    for mode, row in result["train"].items():
        peak = row["peak_memory_mb"]
        lines.append(
            f"  {mode:<14}{row['median_ms']:>11.1f}{row['trainable_params']:>14,}"
            f"{row['optimizer_state_bytes'] / 2**20:>13.2f} MiB"
            + (f"{peak:>10.0f} MiB" if peak is not None else f"{'—':>14}")
        )
    if "decode" in result:  # a causal LM
        lines += [
            "",
            f"{'decode':<16}{'median ms':>11}{'tokens/s':>10}   {c['prompts']} prompts × "
            f"{c['prompt_len']} tokens, {c['new_tokens']} new tokens each (greedy, KV cache)",
        ]
        for name, row in result["decode"].items():
            lines.append(f"  {name:<14}{row['median_ms']:>11.1f}{row['tokens_per_s']:>10.1f}")
        same = "the same" if result["decode_tokens_match"] else "DIFFERENT"
        lines.append(
            f"  merged and unmerged decode {same} tokens (max |Δ logits| "
            f"{result['merged_max_abs_diff']:.1e})"
        )
    else:
        lines += ["", f"{'inference':<16}{'median ms':>11}"]
        for name, row in result["inference"].items():
            lines.append(f"  {name:<14}{row['median_ms']:>11.1f}")
    layer = result["layer"]
    s = layer["shape"]
    lines += [
        "",
        f"LoRA layer, forward + backward, x ({s['tokens']}, {s['d_in']}), r={s['r']}: numpy "
        f"{layer['numpy']['median_ms']:.2f} ms, torch {layer['torch']['median_ms']:.2f} ms "
        f"(numpy/torch {layer['numpy_over_torch']:.2f})",
        "",
    ]
    width = max(14, *map(len, result["ratios"]))
    lines.append(f"{'ratio':<{width + 2}}{'of medians':>11}{'paired':>9}{'target':>9}")
    for name, value in result["ratios"].items():
        ok, paired = result["meets_targets"][name], result["paired_ratios"][name]
        shown = "".join(
            f"{v:>{w}.3f}" if v is not None else f"{'—':>{w}}"
            for v, w in ((value, 11), (paired, 9))
        )
        verdict = "" if ok is None else ("  ok" if ok else "  MISSED")
        target = ("≥ " if name in AT_LEAST else "≤ ") + format(result["targets"][name], ".2f")
        lines.append(f"  {name:<{width}}{shown}{target:>9}{verdict}")
    for what, why in result["skipped"].items():
        lines.append(f"skipped {what}: {why}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line


def _comma_list(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer names, got {text!r}")
    return names


def _by_model(name: str) -> str:
    """The ``--help`` note on ``name``'s default for each kind of model (``MODEL_DEFAULTS``)."""
    shown = {
        kind: ",".join(v) if isinstance(v, tuple) else v
        for kind, v in ((k, d.get(name)) for k, d in MODEL_DEFAULTS.items())
    }
    if shown["text"] is None:
        return f"causal LMs only; default {shown['causal']}"
    return f"default {shown['text']}; causal LMs {shown['causal']}"


def _add_flags(parser: argparse.ArgumentParser) -> None:
    defaults = BenchConfig()
    parser.add_argument(
        "--model",
        default=defaults.model,
        help="text: minilm | tiny-bert | HF id/path; causal LM: smollm2 | tiny-llama",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help=f"sequences per batch ({_by_model('batch')})"
    )
    parser.add_argument(
        "--seq", type=int, default=None, help=f"tokens per sequence ({_by_model('seq')})"
    )
    parser.add_argument("--r", type=int, default=defaults.r, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=defaults.alpha, help="scaling = alpha/r")
    parser.add_argument(
        "--targets",
        type=_comma_list,
        default=None,
        help=f"layers LoRA adapts ({_by_model('targets')})",
    )
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument(
        "--reps", type=int, default=None, help=f"timed repetitions ({_by_model('reps')})"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help=f"untimed rounds ({_by_model('warmup')})"
    )
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=None,
        help=f"decode: new tokens per prompt, greedy ({_by_model('new_tokens')})",
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=None,
        help=f"decode: prompts per batch ({_by_model('prompts')})",
    )
    parser.add_argument(
        "--prompt-len",
        type=int,
        default=None,
        help=f"decode: random tokens per prompt ({_by_model('prompt_len')})",
    )
    parser.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate")
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seeds LoRA's A and the inputs"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=defaults.memory,
        help="measure peak memory in one worker process per mode (default: yes)",
    )
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="memory workers: gradient checkpointing (recompute activations in backward)",
    )
    parser.add_argument(
        "--chunked-loss",
        action="store_true",
        help="memory workers, causal LMs: the loss 128 tokens at a time, without the whole "
        "batch's logits (training.chunked_loss)",
    )
    parser.add_argument("--json", default=None, help="also write the full result to this file")
    parser.add_argument(
        "--readme",
        default=None,
        help="measure nothing: write the committed results "
        f"({', '.join(BENCH_RESULTS.values())}) into this README's Performance table and into "
        "docs/performance.md",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if a ratio misses its target"
    )
    parser.add_argument("--worker", choices=MEMORY_MODES, default=None, help=argparse.SUPPRESS)


def _config_from(args: argparse.Namespace) -> BenchConfig:
    names = BenchConfig.__dataclass_fields__
    return BenchConfig(**{k: v for k, v in vars(args).items() if k in names})


def _bench(args: argparse.Namespace) -> int:
    try:
        config = _config_from(args)
    except ValueError as err:
        print(f"lora-edu bench: {err}", file=sys.stderr)
        return 2
    if args.worker:
        print(json.dumps(measure_peak_memory(config, args.worker)))
        return 0
    if args.readme:
        from lora_edu.config import REPO_ROOT

        changed = write_committed_tables(args.readme, REPO_ROOT)
        print(committed_readme_table(REPO_ROOT))
        print(f"\nupdated: {', '.join(map(str, changed)) or 'nothing (already up to date)'}")
        return 0
    result = run_bench(config, log=lambda message: print(message, file=sys.stderr, flush=True))
    print(format_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path}")
    missed = [k for k, ok in result["meets_targets"].items() if ok is False]
    return 1 if args.check and missed else 0


# ---------------------------------------------------------------------------------- README

#: The benchmark results the README's Performance table is generated from (``--json`` files).
BENCH_RESULTS = {"minilm": "docs/bench/minilm.json", "smollm2": "docs/bench/smollm2.json"}
PERFORMANCE_START = (
    "<!-- performance:start (generated by `lora-edu bench --readme`; do not edit) -->"
)
PERFORMANCE_END = "<!-- performance:end -->"
_README_ROWS = (
    ("lora_edu / PEFT (training step)", "lora/peft", "lora/peft"),
    ("lora_edu / full fine-tuning (training step)", "lora/full", "lora/full"),
    ("lora_edu / frozen-base floor (training step)", "lora/floor", "lora/floor"),
    ("merged / base model (inference time; SmolLM2: decoding speed)", "merged/base",
     "decode merged/base"),
    ("unmerged / base model (same)", "unmerged/base", "decode unmerged/base"),
)  # fmt: skip


def readme_table(text_result: dict[str, Any], causal_result: dict[str, Any]) -> str:
    """The README's ratio table from two ``run_bench`` results (a text model and a causal LM):
    one row per ratio, the measured value of each and its target (≤ a time ratio, ≥ a speed)."""

    def shape(result: dict[str, Any]) -> str:
        c = result["config"]
        return f"{c['batch']} × {c['seq']} tokens"

    def target(name: str) -> str:
        bound = CAUSAL_TARGETS.get(name, TARGETS.get(name))
        return f"{'≥' if name in AT_LEAST else '≤'} {bound:.2f}"

    def value(result: dict[str, Any], name: str) -> str:
        ratio = result["ratios"].get(name)
        return "–" if ratio is None else f"{ratio:.3f}"

    names = {"minilm": "MiniLM-L6", "smollm2": "SmolLM2-135M"}

    def model(result: dict[str, Any]) -> str:
        return names.get(result["config"]["model"], result["config"]["model"])

    lines = [
        f"| ratio | {model(text_result)}, batch {shape(text_result)} | "
        f"{model(causal_result)}, batch {shape(causal_result)} | target |",
        "|---|---:|---:|---:|",
    ]
    for label, text_name, causal_name in _README_ROWS:
        bounds = (
            target(text_name)
            if text_name == causal_name
            else (f"{target(text_name)}; {target(causal_name)}")
        )
        lines.append(
            f"| {label} | {value(text_result, text_name)} | {value(causal_result, causal_name)} | "
            f"{bounds} |"
        )
    return "\n".join(lines)


def _block_markers(name: str) -> tuple[str, str]:
    """The markers of one result's printed table in ``docs/performance.md``."""
    return (
        f"<!-- bench-{name}:start (generated by `lora-edu bench --readme`; do not edit) -->",
        f"<!-- bench-{name}:end -->",
    )


def write_committed_tables(readme: str | os.PathLike, root: str | os.PathLike) -> list[Path]:
    """Write the committed results (``BENCH_RESULTS``) where the docs show them: the ratio table
    into ``readme`` and each result's full table (``format_table``, as ``lora-edu bench`` prints
    it) into ``docs/performance.md``; return the files that changed."""
    from lora_edu.report import update_readme

    changed = []
    if update_readme(readme, committed_readme_table(root), PERFORMANCE_START, PERFORMANCE_END):
        changed.append(Path(readme))
    docs = Path(root) / "docs" / "performance.md"
    for name, path in BENCH_RESULTS.items():
        result = json.loads((Path(root) / path).read_text())
        block = f"```text\n{format_table(result)}\n```"
        if update_readme(docs, block, *_block_markers(name)) and docs not in changed:
            changed.append(docs)
    return changed


def committed_readme_table(root: str | os.PathLike) -> str:
    """``readme_table`` of the committed results (``BENCH_RESULTS``, relative to ``root``)."""
    results = {k: json.loads((Path(root) / v).read_text()) for k, v in BENCH_RESULTS.items()}
    return readme_table(results["minilm"], results["smollm2"])


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``lora-edu``'s subparsers (``cli.build_parser``)."""
    parser = subparsers.add_parser(
        "bench",
        help="time LoRA against PEFT, full fine-tuning and the frozen-base floor",
        description="Training step, inference and peak memory of full fine-tuning, lora_edu's "
        "LoRA, PEFT's LoRA and the frozen-base floor, measured interleaved in one process; "
        "prints a table and the ratios against their targets. A causal LM (--model smollm2, "
        "SmolLM2-135M-Instruct; tiny-llama for tests) trains on the next-token loss and is "
        "timed decoding (tokens/s, greedy, KV cache) base, unmerged and merged.",
    )
    _add_flags(parser)
    parser.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m lora_edu.bench ...``: the same as ``lora-edu bench ...``."""
    parser = argparse.ArgumentParser(prog="python -m lora_edu.bench")
    _add_flags(parser)
    return _bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
