"""The chunked next-token loss equals the model's own loss, gradients included."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lora_edu.bench import TINY_LLAMA
from lora_edu.training.chunked_loss import chunked_lm_loss


def _model_and_batch() -> tuple[LlamaForCausalLM, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).train()
    ids = torch.randint(0, model.config.vocab_size, (3, 11))
    labels = ids.clone()
    labels[0, :4] = -100  # a masked prompt
    labels[2, 7:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return model, {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunked_loss_and_gradients_equal_the_model_loss(chunk: int) -> None:
    model, batch = _model_and_batch()
    expected = model(**batch).loss
    expected.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = chunked_lm_loss(model, chunk_tokens=chunk, **batch)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_loss_refuses_what_it_cannot_compute() -> None:
    model, batch = _model_and_batch()
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_lm_loss(model, chunk_tokens=0, **batch)
    with pytest.raises(ValueError, match="every label is -100"):
        chunked_lm_loss(model, batch["input_ids"], torch.full_like(batch["labels"], -100))
    with pytest.raises(TypeError, match="Linear"):
        chunked_lm_loss(torch.nn.Linear(2, 2), batch["input_ids"], batch["labels"])
