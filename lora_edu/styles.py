"""What a style adapter of the digit denoiser (``lora_edu.diffusion``, notebook 16) is, without
importing torch: the layers it goes into, the styles and how each is scored. The sweep's task
list and the presets read these; the training and the scores are in ``lora_edu.diffusion``."""

from __future__ import annotations

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
