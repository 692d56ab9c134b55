"""What a style adapter of the digit denoiser (``lora_edu.diffusion``, notebook 16) is, without
importing torch: the layers it goes into, the styles and how each is scored. The sweep's task
list and the presets read these; the training and the scores are in ``lora_edu.diffusion``.
Imports only ``config``."""

from __future__ import annotations

from typing import Any

from lora_edu.config import by_profile

#: Where LoRA goes in a style adapter: the attention projections and every residual block's two
#: 3×3 convolutions (``LoRAConv2d``), as Stable Diffusion LoRAs do.
DENOISER_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")

#: The style tasks: name → what the adapter learns and how its samples are scored.
STYLES = {
    "thick": "MNIST digits with every stroke dilated (``thick_strokes``); scored by the share of "
    "samples whose ink share lies within the middle 90 % of the thick training digits' "
    "(``thick_share``)",
    "sevens": "only sevens; scored by the share of samples a frozen MNIST classifier calls a 7",
}
#: Each style's score, the record's ``metric_name``.
STYLE_METRICS = {"thick": "thick_share", "sevens": "digit_share"}


def style_budget() -> dict[str, Any]:
    """The style adapters' budget at the active profile: how many style images, epochs and batch
    size, how many samples are scored with how many DDIM steps, and the denoiser's own
    pretraining (``diffusion.pretrained_denoiser``; at ``default``, 8,000 images × 30 epochs =
    3,750 steps took 1,085 s on a 2-core CPU, final loss 0.019)."""
    return by_profile(
        smoke={"n_train": 64, "epochs": 1, "batch_size": 32, "n_samples": 8, "sample_steps": 5,
               "pretrain_epochs": 1, "pretrain_max_train": 256},
        default={"n_train": 1000, "epochs": 20, "batch_size": 64, "n_samples": 256,
                 "sample_steps": 50, "pretrain_epochs": 30, "pretrain_max_train": None},
    )  # fmt: skip
