"""A small denoising diffusion model of handwritten digits, built from ``diffusers`` parts, and
LoRA "style" adapters for it: the use that made LoRA famous outside language models.

    unet = pretrained_denoiser()                               # a UNet2DModel trained on MNIST
    images = sample(unet, 16, seed=0)                          # (16, 28, 28) floats in [0, 1]
    apply_lora(unet, LoRAConfig(DENOISER_TARGETS, r=8))        # attention and convolutions
    mark_only_lora_trainable(unet)                             # the UNet frozen
    train_denoiser(unet, thick_strokes(some_digits), epochs=…)  # only A and B train
    with adapter_strength(unet, 0.5):                          # half the style
        images = sample(unet, 16, seed=0)

What is written here is only what the lesson is about (the training objective and the LoRA
strength); the network and the noise schedule are diffusers' (``UNet2DModel``, ``DDPMScheduler``
for training, ``DDIMScheduler`` for fast sampling), and training goes through the package's one
loop, ``train.fit``.

**The objective** (Ho et al. 2020). A clean image ``x₀`` is mixed with Gaussian noise ``ε`` at a
random step ``t`` of a fixed schedule: ``x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε``
(``DDPMScheduler.add_noise``). The network sees ``x_t`` and ``t`` and predicts ``ε``; the loss is
the mean squared error. Sampling starts from pure noise and removes the predicted noise step by
step. A LoRA adapter trained with the same loss on other images (thicker strokes, one digit)
shifts what the frozen model draws towards them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.config import REPO_ROOT, cache_dir
from lora_edu.styles import DENOISER_TARGETS, STYLE_METRICS, STYLES

#: The model's input size: MNIST's 28×28 padded by 2 pixels on every side, so that the UNet's
#: two downsamplings give 16×16 and 8×8.
IMAGE_SIZE = 32
PAD = (IMAGE_SIZE - 28) // 2
#: The UNet: three resolutions (32, 16, 8) with 16, 32 and 64 channels, self-attention at 8×8.
DENOISER_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": (16, 32, 64),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "attention_head_dim": 16,
}
#: Training steps of the noise schedule (the DDPM paper's 1,000).
TRAIN_TIMESTEPS = 1000


def make_denoiser(seed: int = 0) -> nn.Module:
    """A fresh ``diffusers.UNet2DModel(**DENOISER_CONFIG)``, its weights drawn with ``seed``."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**DENOISER_CONFIG)


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """Digits ``(N, 28, 28)`` (uint8 0–255, or floats in [0, 1]) → the model's input
    ``(N, 1, 32, 32)`` float32 in [−1, 1], black background, padded with background."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"expected digits of shape (N, 28, 28), got {images.shape}")
    x = torch.from_numpy(images.astype(np.float32))
    if images.dtype == np.uint8:
        x = x / 255.0
    x = F.pad(x, (PAD, PAD, PAD, PAD))
    return (2 * x - 1).unsqueeze(1)


def from_model_space(x: torch.Tensor) -> np.ndarray:
    """The inverse of ``to_model_space``: ``(N, 1, 32, 32)`` in [−1, 1] → ``(N, 28, 28)`` floats in
    [0, 1] (clipped), the padding cut off."""
    x = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)
    return x[:, 0, PAD : IMAGE_SIZE - PAD, PAD : IMAGE_SIZE - PAD].numpy()


def noisy_batches(images: np.ndarray, seed: int = 0) -> tuple[torch.Tensor, Any]:
    """The training data of the DDPM objective for ``train.fit``: the clean images in model space
    ``(N, 1, 32, 32)`` and a collate function that turns a batch of indices into the noisy
    images at random steps (the model's inputs) and the noise that was added (the target),
    drawn from a generator seeded with ``seed``."""
    from diffusers import DDPMScheduler

    data = to_model_space(images)
    scheduler = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS)
    generator = torch.Generator().manual_seed(seed)

    def collate(indices: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        clean = data[indices]
        noise = torch.randn(clean.shape, generator=generator)
        steps = torch.randint(0, TRAIN_TIMESTEPS, (len(clean),), generator=generator)
        return {"sample": scheduler.add_noise(clean, noise, steps), "timestep": steps}, noise

    return data, collate


def denoising_loss(output: Any, noise: torch.Tensor) -> torch.Tensor:
    """The DDPM loss: mean squared error between the predicted noise (``UNet2DModel``'s
    ``output.sample``) and the noise that was added."""
    return F.mse_loss(output.sample, noise)


def train_denoiser(
    unet: nn.Module,
    images: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    device: Any = None,
) -> dict[str, Any]:
    """Train ``unet``'s trainable parameters (all of them for pretraining; only A and B after
    ``apply_lora`` + ``mark_only_lora_trainable``) on ``images (N, 28, 28)`` with the DDPM loss,
    through the package's one training loop (``train.fit``: AdamW, linear warm-up and decay,
    gradient clipping, a progress bar). Returns ``fit``'s result (``history["loss"]`` per step,
    ``steps``, ``train_seconds``); the model is left in eval mode on ``device``."""
    from lora_edu import config
    from lora_edu.training.loop import fit

    data, collate = noisy_batches(images, seed)
    if len(data) == 0:
        raise ValueError("train_denoiser got no images")
    device = config.device() if device is None else torch.device(device)
    unet.to(device).train()
    result = fit(
        unet, len(data), collate, None, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
        device=device, progress=progress, weight_decay=0.0, loss_fn=denoising_loss,
        desc="denoiser",
    )  # fmt: skip
    unet.eval()
    return result


@torch.no_grad()
def sample(unet: nn.Module, n: int, *, steps: int = 50, seed: int = 0) -> np.ndarray:
    """``n`` digits ``(n, 28, 28)`` in [0, 1] drawn from ``unet`` with DDIM in ``steps`` steps,
    starting from noise drawn with ``seed`` (the same seed gives the same starting noise, so two
    models, or two adapter strengths, can be compared image by image)."""
    from diffusers import DDIMScheduler

    if n < 1 or steps < 1:
        raise ValueError(f"n and steps must be >= 1, got {n} and {steps}")
    scheduler = DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS)
    scheduler.set_timesteps(steps)
    device = next(unet.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, IMAGE_SIZE, IMAGE_SIZE), generator=generator).to(device)
    was_training = unet.training
    unet.eval()
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    unet.train(was_training)
    return from_model_space(x)


@contextlib.contextmanager
def adapter_strength(model: nn.Module, strength: float) -> Iterator[nn.Module]:
    """Scale every LoRA layer's update by ``strength`` inside the block (0: the base model, 1: the
    adapter as trained, 2: twice the style), then restore it: ``scaling`` becomes
    ``strength · α / r`` for a while, exactly what a LoRA "weight" slider in an image generator
    does. Refuses a model with merged adapters (their update is inside W)."""
    from lora_edu.lora import _require_lora_layers

    layers = [layer for _, layer in _require_lora_layers(model)]
    merged = [layer for layer in layers if layer.merged]
    if merged:
        raise ValueError("adapter_strength needs unmerged adapters; call unmerge_lora first")
    kept = [layer.scaling for layer in layers]
    try:
        for layer, scaling in zip(layers, kept, strict=True):
            layer.scaling = scaling * float(strength)
        yield model
    finally:
        for layer, scaling in zip(layers, kept, strict=True):
            layer.scaling = scaling


# ---------------------------------------------------------------------------------- styles


def thick_strokes(images: np.ndarray, width: int = 3) -> np.ndarray:
    """The digits with every stroke dilated by a ``width × width`` maximum filter: the same shapes,
    bolder ink (a style a frozen MNIST model does not draw)."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).unsqueeze(1)
    out = F.max_pool2d(x, width, stride=1, padding=width // 2)
    return out.squeeze(1).numpy().astype(np.asarray(images).dtype)


def ink_shares(images: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Each image's share of inked pixels, brighter than ``threshold`` (MNIST draws white ink on
    black; images ``(N, 28, 28)`` in [0, 1], or uint8): ``(N,)``, a simple measure of stroke
    thickness."""
    x = np.asarray(images, dtype=np.float32)
    if np.asarray(images).dtype == np.uint8:
        x = x / 255.0
    return (x > threshold).reshape(len(x), -1).mean(axis=1)


def ink_share(images: np.ndarray, threshold: float = 0.5) -> float:
    """The share of inked pixels over all ``images`` (the mean of ``ink_shares``): how much ink
    a batch of digits carries."""
    return float(ink_shares(images, threshold).mean())


# ---------------------------------------------------------------------------------- pretraining

#: Pretrained denoisers committed with the repository, in float16 (the default budget's: 1.3 MB),
#: under the same file names as the cache's; ``pretrained_denoiser`` reads one before training.
COMMITTED_DENOISERS = REPO_ROOT / "data" / "models"


def pretrained_denoiser(
    *,
    epochs: int = 10,
    max_train: int | None = None,
    seed: int = 0,
    lr: float = 1e-3,
    batch_size: int = 64,
    cache: bool = True,
    progress: bool = True,
) -> nn.Module:
    """A ``make_denoiser(seed)`` trained on MNIST's training split (``load_mnist``; the first
    ``max_train`` images) for ``epochs``, cached as safetensors under ``cache_dir()`` (the name
    holds a hash of the settings and the data), so later calls only read the file. A denoiser
    committed under ``COMMITTED_DENOISERS`` with the same name (the default budget's, stored in
    float16) is read instead of training. The returned model is on the CPU in eval mode, in
    float32; ``model.pretrain_record`` says how it was trained."""
    import safetensors.torch

    from lora_edu.data import load_mnist
    from lora_edu.models import image_arrays
    from lora_edu.training.images import _fingerprint

    images, labels = image_arrays(load_mnist(seed=seed)["train"])
    if max_train is not None:
        images, labels = images[:max_train], labels[:max_train]
    key = {"config": DENOISER_CONFIG, "epochs": epochs, "seed": seed, "lr": lr,
           "batch_size": batch_size, "data": _fingerprint(images, labels)}  # fmt: skip
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:10]
    path = cache_dir() / f"denoiser-mnist-e{epochs}-s{seed}-{digest}.safetensors"
    unet = make_denoiser(seed)
    for found in (COMMITTED_DENOISERS / path.name, path):
        if cache and found.is_file():
            state = safetensors.torch.load_file(found)
            unet.load_state_dict(
                {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
            )
            with safetensors.safe_open(found, framework="pt") as f:
                unet.pretrain_record = json.loads(f.metadata()["record"])
            return unet.eval()
    result = train_denoiser(
        unet, images, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress
    )
    unet.cpu().eval()
    record = {"n_train": len(images), "epochs": epochs, "steps": result["steps"],
              "final_loss": float(np.mean(result["history"]["loss"][-50:])),
              "train_seconds": round(result["train_seconds"], 1)}  # fmt: skip
    unet.pretrain_record = record
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in unet.state_dict().items()}
        safetensors.torch.save_file(state, path, metadata={"record": json.dumps(record)})
    return unet


# ---------------------------------------------------------------------------------- styles as tasks


def style_images(style: str, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The training images of ``style`` made from digits ``images``/``labels``."""
    if style == "thick":
        return thick_strokes(images)
    if style == "sevens":
        return images[labels == 7]
    raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")


def ink_band(images: np.ndarray, share: float = 0.9) -> tuple[float, float]:
    """The range of ink shares that the middle ``share`` of ``images`` fall in (by default from
    their 5th to their 95th percentile): what "drawn in this style" means for ``thick_share``."""
    tail = 100 * (1 - share) / 2
    low, high = np.percentile(ink_shares(images), [tail, 100 - tail])
    return float(low), float(high)


def style_scores(
    samples: np.ndarray,
    classifier: nn.Module | None = None,
    digit: int = 7,
    band: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """How a batch of samples ``(n, 28, 28)`` in [0, 1] looks: its ``ink_share`` and each
    sample's (``eval_values``, rounded to 4 decimals: what paired tests between two models
    resample, since the same seed gives both the same starting noise); with an ink ``band``
    (``ink_band`` of the style images) ``thick_share``, the share of samples inside it, and
    ``eval_correct`` (``"0110…"``: each sample inside or not); with a frozen digit ``classifier``
    (a ``TinyViT``) the share of each predicted class, ``digit_share`` (the share called
    ``digit``) and ``eval_correct`` marking the samples called ``digit`` (only one of ``band``
    and ``classifier`` may be given)."""
    if band is not None and classifier is not None:
        raise ValueError("style_scores scores one style: give band or classifier, not both")
    samples = np.asarray(samples, dtype=np.float32)
    per_sample = ink_shares(samples)
    scores: dict[str, Any] = {
        "ink_share": float(per_sample.mean()),
        "eval_values": [round(float(v), 4) for v in per_sample],
    }
    if band is not None:
        inside = (per_sample >= band[0]) & (per_sample <= band[1])
        scores["ink_band"] = [round(band[0], 4), round(band[1], 4)]
        scores["thick_share"] = float(inside.mean())
        scores["eval_correct"] = "".join("1" if v else "0" for v in inside)
    if classifier is not None:
        with torch.no_grad():
            predicted = classifier.eval()(torch.from_numpy(samples)).argmax(-1).numpy()
        counts = np.bincount(predicted, minlength=10)
        scores["class_shares"] = (counts / len(samples)).tolist()
        scores["digit_share"] = float(counts[digit] / len(samples))
        scores["eval_correct"] = "".join("1" if p == digit else "0" for p in predicted)
    return scores


def finetune_denoiser(
    train: np.ndarray,
    eval: dict[str, Any],
    *,
    base: nn.Module,
    style: str,
    classifier: nn.Module | None = None,
    method: str = "lora",
    lora: Any = None,
    epochs: int = 20,
    lr: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: Any = None,
    progress: bool = True,
    return_model: bool = False,
    **loop: Any,
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Adapt a copy of the pretrained denoiser ``base`` to the style images ``train`` with
    ``method`` (``"lora"``: ``lora``, default r = 8, α = 16 on ``DENOISER_TARGETS``, as the
    committed style adapters; ``"full"``; ``"none"``: the base as it is), through the
    package's training loop, then draw ``eval["n_samples"]``
    samples (``eval["steps"]`` DDIM steps from the noise of ``eval["seed"]``, default 0) and
    score them: ``metric`` is the style's score (``STYLE_METRICS``; ``thick``: the share of
    samples inside the ink band of ``train``; ``sevens``: the share a frozen ``classifier``
    calls 7), beside every other score. Returns the record (and the model with
    ``return_model``)."""
    import copy

    from lora_edu.lora import LoRAConfig
    from lora_edu.training.loop import _check_method, seed_everything
    from lora_edu.training.run import LoopSettings, TrainSettings, _run

    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    if method in ("head", "bitfit"):
        raise ValueError("a denoiser has no new head: use 'lora', 'full' or 'none'")
    if method != "none":
        _check_method(method)
    if style == "sevens" and classifier is None:
        raise ValueError("the sevens style is scored by a frozen digit classifier: pass classifier")
    seed_everything(seed)
    unet = copy.deepcopy(base)
    data, collate = noisy_batches(train, seed)

    def final(model: nn.Module) -> dict[str, Any]:
        samples = sample(model, eval["n_samples"], steps=eval["steps"], seed=eval.get("seed", 0))
        if style == "thick":
            scores = style_scores(samples, band=ink_band(train))
        else:
            scores = style_scores(samples, classifier)
        return {"metric": scores[STYLE_METRICS[style]], **scores}

    settings = TrainSettings(
        method=method,
        epochs=epochs,
        lr=lr,
        default_lr={"lora": 1e-3, "full": 2e-4},
        batch_size=batch_size,
        seed=seed,
        lora=lora if lora is not None else LoRAConfig(list(DENOISER_TARGETS), r=8, alpha=16),
        device=device,
        progress=progress,
        return_model=return_model,
        head=None,  # the UNet keeps its own output layer
        loss_fn=denoising_loss,
        final=final,
        loop=LoopSettings.from_keywords(
            "finetune_denoiser()", {"weight_decay": 0.0, **loop}, DENOISER_TARGETS
        ),
    )
    return _run(
        f"style-{style}",
        "unet2d",
        unet,
        len(data),
        collate,
        None,
        {
            "max_length": None,
            "metric_name": STYLE_METRICS[style],
            "n_eval": eval["n_samples"],
            "sample_steps": eval["steps"],
            "style": style,
            "base": getattr(base, "pretrain_record", None),
        },
        settings,
    )


# ---------------------------------------------------------------------------------- samples side by side


def style_budget_denoiser(progress: bool = False) -> nn.Module:
    """The pretrained denoiser of the active profile's style budget (``styles.style_budget``; at
    ``default`` the committed one)."""
    from lora_edu.styles import style_budget

    b = style_budget()
    return pretrained_denoiser(
        epochs=b["pretrain_epochs"], max_train=b["pretrain_max_train"], progress=progress
    )


def draw_sample_rows(rows: dict[str, np.ndarray], *, title: str | None = None) -> Any:
    """One row of digits per entry of ``rows`` (name → samples ``(n, 28, 28)`` in [0, 1]), the
    name on the left: the figure."""
    import matplotlib.pyplot as plt

    n = max(len(samples) for samples in rows.values())
    fig, axes = plt.subplots(
        len(rows), n, figsize=(0.9 * n + 1.6, 0.95 * len(rows) + 0.4), squeeze=False
    )
    for (name, samples), line in zip(rows.items(), axes, strict=True):
        for k, ax in enumerate(line):
            if k < len(samples):
                ax.imshow(samples[k], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        line[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    return fig


def style_sample_rows(unet: nn.Module, n: int = 8, *, steps: int = 50, seed: int = 0) -> dict:
    """The same starting noise drawn by the base model, by each style adapter of a
    ``styled_denoiser``, and by both styles mixed (``combine_adapters`` "cat", weights 1 and 1):
    name → samples ``(n, 28, 28)``. The model's active adapter is restored."""
    from lora_edu.adapters import (
        active_adapter,
        adapter_names,
        combine_adapters,
        delete_adapter,
        set_adapter,
    )
    from lora_edu.lora import disable_adapters

    kept = active_adapter(unet)
    styles = [name for name in STYLES if name in adapter_names(unet)]
    with disable_adapters(unet):
        rows = {"base model": sample(unet, n, steps=steps, seed=seed)}
    try:
        for style in styles:
            set_adapter(unet, style)
            rows[f"+ {style}"] = sample(unet, n, steps=steps, seed=seed)
        combine_adapters(unet, styles, [1.0] * len(styles), "both", method="cat")
        set_adapter(unet, "both")
        rows[f"+ {' + '.join(styles)}"] = sample(unet, n, steps=steps, seed=seed)
    finally:
        set_adapter(unet, kept)
        if "both" in adapter_names(unet):
            delete_adapter(unet, "both")
    return rows


__all__: Sequence[str] = (
    "DENOISER_CONFIG",
    "DENOISER_TARGETS",
    "IMAGE_SIZE",
    "STYLE_METRICS",
    "STYLES",
    "adapter_strength",
    "denoising_loss",
    "draw_sample_rows",
    "finetune_denoiser",
    "from_model_space",
    "ink_band",
    "ink_share",
    "ink_shares",
    "make_denoiser",
    "noisy_batches",
    "pretrained_denoiser",
    "sample",
    "style_budget_denoiser",
    "style_images",
    "style_sample_rows",
    "style_scores",
    "thick_strokes",
    "to_model_space",
    "train_denoiser",
)
