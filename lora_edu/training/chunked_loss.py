"""A causal LM's next-token loss computed a few hundred tokens at a time (``chunked_lm_loss``), so
that training never holds the logits of the whole batch.

Why it matters for memory: SmolLM2's vocabulary has 49,152 tokens, so a batch of 8 × 64 tokens has
8 × 64 × 49,152 float32 logits (96 MiB); the usual loss keeps them, their softmax and their
gradient alive during backward, often the largest single cost of a LoRA step on a small model.
Here the last hidden states (8 × 64 × 576 numbers) are kept instead, and each chunk of positions
recomputes its logits inside ``torch.utils.checkpoint`` during backward, one chunk at a time. The
loss and every gradient are those of ``model(**batch).loss`` (mean cross-entropy over the tokens
whose label is not -100, after the shift by one); only the peak memory differs. Libraries such as
Liger Kernel fuse the same idea into one GPU kernel; on a CPU this plain version is enough to see
the effect.

ARCHITECTURE notes: torch only; imported by ``bench`` (its memory workers); imports nothing from
lora_edu.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

#: Positions whose logits are computed at once (512 × 49,152 float32 logits: 96 MiB).
CHUNK_TOKENS = 128


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), labels, reduction="sum")


def chunked_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> torch.Tensor:
    """The mean next-token cross-entropy of a transformers causal LM (``model.model`` is its
    decoder, ``model.lm_head`` its output layer, as in Llama-style models): equal to
    ``model(input_ids=..., attention_mask=..., labels=labels).loss`` and with the same gradients,
    but only ``chunk_tokens`` positions' logits exist at any time."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    decoder, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if decoder is None or head is None:
        raise TypeError(
            f"chunked_lm_loss needs a causal LM with .model (the decoder) and .lm_head, got "
            f"{type(model).__name__}"
        )
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    hidden, targets = hidden[:, :-1].reshape(-1, hidden.shape[-1]), labels[:, 1:].reshape(-1)
    keep = targets != -100
    hidden, targets = hidden[keep], targets[keep]
    if targets.numel() == 0:
        raise ValueError("every label is -100: there is no token to compute a loss on")
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, y in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True):
        total = total + checkpoint(_chunk_loss, head, h, y, use_reentrant=False)
    return total / targets.numel()
