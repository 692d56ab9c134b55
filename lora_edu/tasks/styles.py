"""Style adapters of the digit denoiser (notebook 16): the tasks ``style-thick`` and
``style-sevens`` (a LoRA for the UNet trained on thick-stroke digits, or on sevens, its samples
scored by numbers), each with a ``-dev`` twin sampling other noise for choosing learning rates;
their presets (the pilot and the headline); and the kept adapters they stand for
(``styled_denoiser``, ``save_style_figure``). Imports ``styles``, ``tasks.registry``,
``tasks.images`` (the frozen digit classifier), ``presets`` and ``kept``; the diffusion model
and training on use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lora_edu.grid import make_grid
from lora_edu.kept import kept_adapters, kept_run_record
from lora_edu.presets import headline_grid, lr_pilot_grid, preset_grid
from lora_edu.styles import DENOISER_TARGETS, STYLE_METRICS, STYLES, style_budget
from lora_edu.tasks.images import _pretrained_image_tower
from lora_edu.tasks.registry import TaskSpec, register_pilot, register_presets, register_task

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


#: The learning-rate pilots of the style adapters (``style-<name>-dev``): a style adapter for
#: the digit denoiser (pretrained at 1e-3), against tuning every weight of the UNet. The thick
#: style's LoRA and full fine-tuning grids were extended twice each, downward: its score
#: saturates near 95 %, best at low rates (LoRA 1e-4, full fine-tuning 1e-5); the sevens
#: style's LoRA twice and its full fine-tuning once, upward, until at 3e-2 the classifier called
#: none of LoRA's samples a 7 and at 1e-3 only 14 % of full fine-tuning's.
STYLE_PILOT_LRS: dict[str, dict[str, tuple[float, ...]]] = {
    "thick": {"lora": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3), "full": (3e-6, 1e-5, 3e-5, 1e-4, 3e-4)},
    "sevens": {
        "lora": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
        "full": (3e-5, 1e-4, 3e-4, 1e-3),
    },
}


def _style_headline(task: str) -> Callable[[], list[dict[str, Any]]]:
    """The base denoiser as it is (its samples scored once), then LoRA and full fine-tuning at
    their pilot rates, three seeds each (``presets.headline_grid``). LoRA adapts the attention
    projections and the residual blocks' convolutions, as image-generation LoRAs do."""
    headline = headline_grid(task)
    return lambda: make_grid(["none"]) + headline()


for _style, _rates in STYLE_PILOT_LRS.items():
    register_pilot(f"style-{_style}", _rates, lora_targets=DENOISER_TARGETS)
    register_presets(f"style-{_style}", {"headline": _style_headline(f"style-{_style}")})
    register_presets(f"style-{_style}-dev", {"lr-pilot": lr_pilot_grid(f"style-{_style}")})


def style_adapter_run(style: str) -> dict[str, Any]:
    """The run whose adapter stands for ``style``: LoRA, seed 0, of the style's ``headline``."""
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
