"""Resumable sweeps: a grid of fine-tuning runs → one JSON line per finished run.

    grid = make_grid(methods=["lora", "full"], ranks=[4, 8], alphas=[16], seeds=[0])
    records = run_sweep("sst2", grid, "data/results/sst2.jsonl")

The pieces live in modules of their own, each with one job; this module gathers them under the
name the command line, the notebooks and older code use:

- ``grid``: run configurations (``make_grid``), their identity (``run_key``) and the names of
  their adapter folders (``adapter_slug``);
- ``store``: the results file (``read_results``, ``append_record``, ``write_record``): one line
  per run, written under a lock, a cut-off record set aside;
- ``runner``: ``run_sweep``, ``train_one``, ``lora_config``;
- ``tasks``: the tasks as plug-ins, looked up by name (``task_spec``);
- ``report``: tables of results and the generated sections of the README and docs.

Running the same sweep again skips every run already in the file (matched on its configuration,
see ``run_key``) and continues where it stopped.
"""

from __future__ import annotations

from lora_edu.grid import (
    KEY_FIELDS,
    LOOP_DEFAULTS,
    METHODS,
    NON_LORA_METHODS,
    _canonical,
    adapter_slug,
    describe_run,
    key_value,
    make_grid,
    run_key,
    unique_runs,
)
from lora_edu.report import (
    REPORT_END,
    REPORT_START,
    aggregate,
    markdown_report,
    summary_table,
    update_readme,
)
from lora_edu.runner import (
    _full_config,
    _targets_argument,
    lora_config,
    n_examples,
    prepare_sweep,
    run_sweep,
    train_one,
)
from lora_edu.store import _cut_off, _locked, _parse, append_record, read_results, write_record
from lora_edu.tasks.common import (
    DEV_SIZE,
    FULL_TEXT_MODEL,
    _dev_data,
    _subset,
    _text_task_data,
)
from lora_edu.tasks.generation import _e2e_budget, _e2e_data, _e2e_finetune
from lora_edu.tasks.images import (
    _detection_budget,
    _detection_data,
    _detection_finetune,
    _digits_data,
    _matching_budget,
    _matching_finetune,
    _mnist_parts,
    _pretrained_image_tower,
    _vit_budget,
    _vit_finetune,
)
from lora_edu.tasks.registry import TaskSpec, task_names, task_spec
from lora_edu.tasks.styles import _style_budget, _style_data, _style_finetune
from lora_edu.tasks.text import (
    COMPRESSION_RANKS,
    _compressed_finetune,
    _sst2_budget,
)
from lora_edu.tasks.token import (
    SPARSE_NER,
    _conll_budget,
    _sparse_ner_budget,
    _sparse_ner_data,
    sparse_selection,
)

_describe = describe_run

__all__ = [
    "COMPRESSION_RANKS", "DEV_SIZE", "FULL_TEXT_MODEL", "KEY_FIELDS", "LOOP_DEFAULTS", "METHODS",
    "NON_LORA_METHODS", "REPORT_END", "REPORT_START", "SPARSE_NER", "TaskSpec", "_canonical",
    "_compressed_finetune", "_conll_budget", "_cut_off", "_describe", "_detection_budget",
    "_detection_data", "_detection_finetune", "_dev_data", "_digits_data",
    "_e2e_budget", "_e2e_data", "_e2e_finetune", "_full_config", "_locked", "_matching_budget",
    "_matching_finetune", "_mnist_parts", "_parse", "_pretrained_image_tower",
    "_sparse_ner_budget", "_sparse_ner_data", "_sst2_budget", "_style_budget", "_style_data",
    "_style_finetune", "_subset", "_targets_argument", "_text_task_data", "_vit_budget",
    "_vit_finetune", "adapter_slug", "aggregate", "append_record", "describe_run", "key_value",
    "lora_config", "make_grid", "markdown_report", "n_examples", "prepare_sweep", "read_results",
    "run_key", "run_sweep", "sparse_selection", "summary_table", "task_names", "task_spec",
    "train_one", "unique_runs", "update_readme", "write_record",
]  # fmt: skip
