"""Style adapters of the digit denoiser (notebook 16): the tasks ``style-thick`` and
``style-sevens`` (a LoRA for the UNet trained on thick-stroke digits, or on sevens, its samples
scored by numbers), each with a ``-dev`` twin sampling other noise for choosing learning rates;
and the kept adapters they stand for (``styled_denoiser``, ``save_style_figure``). Imports
``styles``, ``tasks.registry`` and ``tasks.images`` (the frozen digit classifier), and
``experiments`` for the kept adapters; the diffusion model and training on use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lora_edu.styles import STYLE_METRICS, STYLES, style_budget
from lora_edu.tasks.images import _pretrained_image_tower
from lora_edu.tasks.registry import TaskSpec, register_task

if TYPE_CHECKING:  # torch is imported only when a denoiser is built
    from torch import nn

#: Kept for the names the sweeps used: the style tasks' budget (``styles.style_budget``).
_style_budget = style_budget


def _style_data(style: str, dev: bool) -> Callable[[], tuple[Any, Any]]:
    """A style task's training images and its sampling plan: the reported task samples from the
    noise of seed 0, its ``-dev`` twin (for choosing learning rates) from seed 1."""

    def load():
        from lora_edu.data import load_mnist
        from lora_edu.diffusion import style_images
        from lora_edu.models import image_arrays

        b = style_budget()
        images, labels = image_arrays(load_mnist(seed=0)["test"])
        train = style_images(style, images, labels)[: b["n_train"]]
        return train, {"n_samples": b["n_samples"], "steps": b["sample_steps"], "seed": int(dev)}

    return load


def _style_finetune(style: str) -> Callable[..., dict[str, Any]]:
    def finetune(train_ds, eval_spec, **kwargs):
        from lora_edu.diffusion import finetune_denoiser, style_budget_denoiser

        base = style_budget_denoiser()
        classifier = _pretrained_image_tower() if style == "sevens" else None
        return finetune_denoiser(
            train_ds, eval_spec, base=base, style=style, classifier=classifier, **kwargs
        )

    return finetune


for _style in STYLES:
    for _dev in (False, True):
        _name = f"style-{_style}{'-dev' * _dev}"
        register_task(
            _name,
            lambda name=_name, style=_style, dev=_dev: TaskSpec(
                name,
                STYLE_METRICS[style],
                _style_data(style, dev),
                _style_finetune(style),
                style_budget,
                default_lr={"lora": 1e-3, "full": 2e-4},
            ),  # fmt: skip
        )


def style_adapter_run(style: str) -> dict[str, Any]:
    """The run whose adapter stands for ``style``: LoRA, seed 0, of the style's ``headline``."""
    from lora_edu.experiments import preset_grid

    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    grid = preset_grid(f"style-{style}", "headline")
    return next(run for run in grid if run["method"] == "lora" and run["seed"] == 0)


def styled_denoiser(progress: bool = False) -> nn.Module:
    """The profile's pretrained denoiser with every style's kept adapter (``style_adapter_run``,
    float16 files under ``data/adapters/``; trained first where missing, e.g. in ``smoke``)
    loaded as a named adapter (``"thick"``, ``"sevens"``; the first is active). Switch with
    ``set_adapter``, mix with ``combine_adapters``; ``model.style_records[style]`` is what the
    adapter's run measured."""
    from lora_edu.adapters import load_named_adapter
    from lora_edu.diffusion import style_budget_denoiser
    from lora_edu.experiments import kept_adapters, kept_run_record

    unet = style_budget_denoiser(progress)
    unet.style_records = {}
    for style in STYLES:
        (path,) = kept_adapters(f"style-{style}", [style_adapter_run(style)], progress=progress)
        load_named_adapter(unet, path, style)
        unet.style_records[style] = kept_run_record(path)
    return unet.eval()


def save_style_figure(path: str = "notebooks/figures/style_adapters.png") -> Any:
    """The README's picture: ``style_sample_rows`` of the profile's ``styled_denoiser``, saved as
    a small PNG at ``path``; returns the path."""
    import matplotlib.pyplot as plt

    from lora_edu.diffusion import draw_sample_rows, style_sample_rows

    rows = style_sample_rows(styled_denoiser())
    fig = draw_sample_rows(rows, title="the same noise, the base denoiser and its style adapters")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path
