"""The sweep runner: grids, resumable results files, corrupted lines, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_edu import sweep
from lora_edu.data import find_dataset
from lora_edu.lora import LoRAConfig


def _fake_task(calls: list, fail_on: int | None = None) -> sweep.TaskSpec:
    """A task whose 'training' is instant: the metric is a function of the configuration."""

    def finetune(train, eval, *, return_model=False, **kwargs):
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt  # an interruption in the middle of the sweep
        calls.append(kwargs)
        metric = 0.5 + 0.01 * (kwargs.get("r") or 0) + 0.001 * kwargs["seed"]
        return {"metric": metric, "metric_name": "accuracy", "trainable_params": 10,
                "total_params": 1000, "train_seconds": 0.1, "history": {"loss": [1.0]}}  # fmt: skip

    return sweep.TaskSpec(
        name="fake",
        metric_name="accuracy",
        load=lambda: (list(range(20)), list(range(5))),
        finetune=finetune,
        budget=lambda: {"n_train": 20, "n_eval": 5, "epochs": 1, "batch_size": 4},
    )


def test_make_grid_counts_and_non_lora_methods():
    grid = sweep.make_grid(
        methods=["lora", "full", "head"],
        ranks=[1, 8],
        alphas=[None, 16],
        target_sets=[["query"], ["query", "value"]],
        seeds=[0, 1],
    )
    lora = [g for g in grid if g["method"] == "lora"]
    assert len(lora) == 2 * 2 * 2 * 2
    assert {g["alpha"] for g in lora if g["r"] == 1} == {1.0, 16.0}  # None → alpha = r
    others = [g for g in grid if g["method"] != "lora"]
    assert len(others) == 2 * 2 and all(g["r"] is None for g in others)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": ["lora", "prompt"]}, "unknown method"),
        ({"ranks": [0, 4]}, "ranks must be"),
        ({"ranks": [2.5]}, r"whole numbers ≥ 1, got \[2.5\]"),
    ],
)
def test_make_grid_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sweep.make_grid(**kwargs)


def test_sweep_writes_one_line_per_run_and_resumes(tmp_path):
    out = tmp_path / "results.jsonl"
    grid = sweep.make_grid(methods=["lora", "head"], ranks=[2, 4], seeds=[0, 1])
    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(_fake_task(calls, fail_on=3), grid, out, progress=False)
    assert len(out.read_text().splitlines()) == 3  # three finished runs survived the interruption
    records = sweep.run_sweep(_fake_task(calls), grid, out, progress=False)
    assert len(calls) == len(grid) == 6  # the three finished runs were not run again
    assert len(records) == 6 and len(out.read_text().splitlines()) == 6
    again = sweep.run_sweep(_fake_task(calls), grid, out, progress=False)
    assert len(calls) == 6 and again == records
    first = json.loads(out.read_text().splitlines()[0])
    for key in ("task", "method", "r", "alpha", "target_modules", "seed", "n_train", "epochs",
                "lr", "trainable_params", "total_params", "metric_name", "metric",
                "train_seconds", "profile", "version"):  # fmt: skip
        assert key in first
    assert first["history"] == {"loss": [1.0]}


def test_default_lr_is_resolved_into_the_record(tmp_path):
    from lora_edu.defaults import FORMER_LR

    records = sweep.run_sweep(
        _fake_task([]), sweep.make_grid(methods=["full"]), tmp_path / "r.jsonl", progress=False
    )
    assert records[0]["lr"] == FORMER_LR["full"]  # the rate of the sweeps before the pilot


def test_corrupted_last_line_is_reported_and_set_aside(tmp_path):
    out = tmp_path / "results.jsonl"
    grid = sweep.make_grid(ranks=[2, 4])
    calls: list = []
    sweep.run_sweep(_fake_task(calls), grid[:1], out, progress=False)
    with out.open("a") as f:
        f.write('{"task": "fake", "method": "lo')  # cut off mid-write
    with pytest.warns(UserWarning, match="not a complete JSON record"):
        records = sweep.run_sweep(_fake_task(calls), grid, out, progress=False)
    assert len(records) == 2 and len(calls) == 2
    assert [json.loads(x)["r"] for x in out.read_text().splitlines()] == [2, 4]
    assert (tmp_path / "results.jsonl.corrupt").read_text().startswith('{"task": "fake"')


def test_corrupted_middle_line_is_an_error(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2: not a JSON record"):
        sweep.read_results(out)
    assert out.read_text().count("\n") == 3  # nothing was dropped


def test_summary_table_lists_every_run():
    records = [
        {"method": "lora", "r": 8, "alpha": 16.0, "target_modules": ["query", "value"], "seed": 0,
         "trainable_params": 73728, "total_params": 22713216, "metric_name": "accuracy",
         "metric": 0.8, "train_seconds": 12.0},
        {"method": "full", "r": None, "alpha": None, "target_modules": None, "seed": 0,
         "trainable_params": 22713216, "total_params": 22713216, "metric_name": "accuracy",
         "metric": 0.81, "train_seconds": 20.0},
    ]  # fmt: skip
    table = sweep.summary_table(records)
    assert "73,728" in table and "0.325" in table and "query,value" in table
    assert table.index("lora") < table.index("full")


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'imagenet'"):
        sweep.task_spec("imagenet")


def test_cli_sweep_on_real_sst2_smoke(tmp_path, monkeypatch, capsys):
    if find_dataset("sst2") is None:
        pytest.skip("SST-2 not found (set LORA_EDU_DATA to a folder holding sst2/)")
    from lora_edu import cli

    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    out = tmp_path / "sst2.jsonl"
    args = ["sweep", "--task", "sst2", "--methods", "lora,head", "--ranks", "2", "--quiet"]
    assert cli.main([*args, "--out", str(out), "--keep-adapters"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["method"] for r in lines] == ["lora", "head"]
    assert lines[0]["n_train"] == 64 and lines[0]["profile"] == "smoke"
    assert (tmp_path / lines[0]["adapter_path"] / "adapter_model.safetensors").is_file()
    assert "2 runs in" in capsys.readouterr().out


def test_cli_sweep_vit_smoke(tmp_path, monkeypatch):
    if find_dataset("mnist") is None:
        pytest.skip("MNIST not found (set LORA_EDU_DATA to a folder holding mnist/)")
    from lora_edu import cli

    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    monkeypatch.setenv("LORA_EDU_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "vit.jsonl"
    args = ["sweep", "--task", "vit", "--methods", "lora,head", "--ranks", "4", "--quiet"]
    assert cli.main([*args, "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["method"] for r in lines] == ["lora", "head"]
    assert lines[0]["n_train"] == 128 and lines[0]["metric_name"] == "accuracy"
    assert lines[0]["resized_from"] is not None
    assert list((tmp_path / "cache").glob("tinyvit-*.safetensors"))  # the pretrained base, cached


def _rec(method, seed, metric, r=None):
    return {"task": "sst2", "method": method, "r": r, "alpha": None if r is None else 16.0,
            "target_modules": None if r is None else ["query", "value"], "init": None,
            "use_rslora": None, "seed": seed, "n_train": 100, "epochs": 1, "lr": 1e-3,
            "metric_name": "accuracy", "metric": metric, "trainable_params": 10,
            "total_params": 1000, "train_seconds": 2.0 + seed}  # fmt: skip


def test_aggregate_means_over_seeds_only():
    rows = sweep.aggregate(
        [_rec("lora", 0, 0.80, r=8), _rec("lora", 1, 0.84, r=8), _rec("full", 0, 0.85)]
    )
    assert [(r["method"], r["seeds"]) for r in rows] == [("lora", [0, 1]), ("full", [0])]
    assert rows[0]["metric"] == pytest.approx(0.82) and rows[0]["spread"] == pytest.approx(0.04)
    assert rows[0]["train_seconds"] == pytest.approx(2.5)


def test_report_into_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{sweep.REPORT_START}\nold\n{sweep.REPORT_END}\n\nafter\n")
    table = sweep.markdown_report([_rec("lora", 0, 0.80, r=8), _rec("lora", 1, 0.84, r=8)])
    assert "accuracy 82.00 ± 2.00" in table and "| 2 |" in table
    assert sweep.update_readme(readme, table) is True
    text = readme.read_text()
    assert "old" not in text and table in text and text.endswith("after\n")
    assert sweep.update_readme(readme, table) is False
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="has no generated-section markers"):
        sweep.update_readme(tmp_path / "plain.md", table)


def test_cli_report(tmp_path, capsys):
    from lora_edu import cli

    out = tmp_path / "r.jsonl"
    sweep.append_record(
        out, _rec("head", 0, 0.7)
    )  # in no finished study (studies: test_experiments)
    assert cli.main(["report", str(out)]) == 0
    assert "| sst2 | head |" in capsys.readouterr().out


def test_cli_report_reads_the_folder_sweep_writes(tmp_path, monkeypatch, capsys):
    from lora_edu import cli, config

    monkeypatch.setenv("LORA_EDU_RESULTS", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no data/results below the working directory
    sweep.append_record(config.results_dir() / "sst2-default.jsonl", _rec("head", 0, 0.7))
    assert cli.main(["report"]) == 0
    assert "| head |" in capsys.readouterr().out
    monkeypatch.setenv("LORA_EDU_RESULTS", str(tmp_path / "empty"))
    assert cli.main(["report"]) == 1
    assert str(tmp_path / "empty") in capsys.readouterr().out


def test_a_target_set_given_as_a_string_is_one_name():
    grid = sweep.make_grid(target_sets=["query", ("query", "value")])
    assert [g["target_modules"] for g in grid] == [["query"], ["query", "value"]]


def test_alpha_16_and_16_point_0_are_the_same_run():
    base = {"task": "t", "method": "lora", "r": 8, "seed": 0, "lr": 0.002}
    assert sweep.run_key({**base, "alpha": 16}) == sweep.run_key({**base, "alpha": 16.0})
    assert sweep.run_key({**base, "alpha": 16}) != sweep.run_key({**base, "alpha": 32})


def test_a_json_line_that_is_not_an_object_is_named(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2: a JSON list, not a record"):
        sweep.read_results(out)


def test_a_cut_off_line_followed_by_a_blank_line_is_the_cut_off_last_record(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text('{"a": 1}\n{"b": \n\n')
    with pytest.warns(UserWarning, match="results.jsonl:2: not a complete JSON record"):
        assert sweep.read_results(out, repair=True) == [{"a": 1}]
    assert out.read_text() == '{"a": 1}\n\n'
    assert (tmp_path / "results.jsonl.corrupt").read_text() == '{"b": \n'


def test_a_record_after_a_cut_off_line_starts_on_its_own_line_and_resumes(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text('{"a": 1}\n{"b": ')  # a writer crashed mid-line
    sweep.append_record(out, {"c": 3})
    assert out.read_text().splitlines() == ['{"a": 1}', '{"b": ', '{"c": 3}']
    with pytest.warns(UserWarning, match="results.jsonl:2: not a complete JSON record"):
        assert sweep.read_results(out, repair=True) == [{"a": 1}, {"c": 3}]
    assert out.read_text() == '{"a": 1}\n{"c": 3}\n'  # resumable again


def test_repair_rereads_under_the_lock_and_keeps_a_record_appended_meanwhile(tmp_path, monkeypatch):
    # Another writer appends right after read_results has read the file: the repair must
    # re-read before rewriting, or that record is lost.
    out = tmp_path / "results.jsonl"
    out.write_text('{"a": 1}\n{"cut off')
    real_read_text = type(out).read_text
    calls = []

    def read_text_then_a_writer_appends(self, *args, **kwargs):
        text = real_read_text(self, *args, **kwargs)
        if self == out and not calls:
            calls.append(1)
            sweep.append_record(out, {"meanwhile": 2})
        return text

    monkeypatch.setattr(type(out), "read_text", read_text_then_a_writer_appends)
    with pytest.warns(UserWarning):
        sweep.read_results(out, repair=True)
    monkeypatch.undo()
    assert sweep.read_results(out) == [{"a": 1}, {"meanwhile": 2}]


_WRITER = """
import sys, time
from lora_edu.sweep import append_record
path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    append_record(path, {"writer": tag, "i": i, "pad": "x" * 2000})
    time.sleep(0.002)
"""


def _writers(path, tags, n):
    import subprocess
    import sys

    return [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, str(n)]) for tag in tags
    ]


def test_two_processes_appending_never_mix_their_lines(tmp_path):
    out = tmp_path / "results.jsonl"
    for proc in _writers(out, ["a", "b"], 60):
        assert proc.wait(timeout=120) == 0
    records = sweep.read_results(out)
    assert sorted((r["writer"], r["i"]) for r in records) == sorted(
        (w, i) for w in "ab" for i in range(60)
    )


def test_repair_while_another_process_appends_loses_no_record(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text('{"writer": "old", "i": 0}\n{"cut off')
    procs = _writers(out, ["a"], 80)
    import time

    time.sleep(0.3)  # the writer is appending now
    with pytest.warns(UserWarning):
        sweep.read_results(out, repair=True)
    assert procs[0].wait(timeout=120) == 0
    records = sweep.read_results(out)
    assert sorted(r["i"] for r in records if r["writer"] == "a") == list(range(80))
    assert [r for r in records if r["writer"] == "old"] == [{"writer": "old", "i": 0}]


def test_a_variant_is_part_of_the_run_and_reaches_finetune(tmp_path):
    """DoRA runs are runs of their own (key, adapter folder, report row); records written before
    variants existed (no "variant" field) still resume as plain LoRA."""
    plain = sweep.make_grid(ranks=[2])
    dora = sweep.make_grid(methods=["lora", "head"], ranks=[2], variant="dora")
    assert dora[0]["variant"] == "dora" and dora[1]["variant"] is None  # head: no variant
    assert sweep.run_key(plain[0]) != sweep.run_key(dora[0])
    old = {k: v for k, v in plain[0].items() if k != "variant"}
    assert sweep.run_key(old) == sweep.run_key(plain[0])
    assert "_dora_" in sweep.adapter_slug(dora[0]) and "dora" not in sweep.adapter_slug(plain[0])
    calls: list = []
    out = tmp_path / "r.jsonl"
    records = sweep.run_sweep(_fake_task(calls), plain + dora, out, progress=False)
    assert [c["lora"].variant for c in calls if "lora" in c] == [None, "dora"]
    assert [r["variant"] for r in records] == [None, "dora", None]
    table = sweep.markdown_report(records)
    assert "| fake | dora | 2 |" in table and "| fake | lora | 2 |" in table
    with pytest.raises(ValueError, match="unknown variant 'dorra'; expected one of dora"):
        sweep.make_grid(variant="dorra")


def test_full_profile_budgets_a_base_size_encoder_and_three_seeds(monkeypatch):
    from lora_edu.experiments import preset_grid

    monkeypatch.setenv("LORA_EDU_PROFILE", "full")
    for task in ("sst2", "conll2003"):
        budget = sweep.task_spec(task).budget()
        assert budget["model"] == sweep.FULL_TEXT_MODEL and budget["n_train"] is None
    monkeypatch.setattr(
        "lora_edu.presets.lr_pilot_chosen",
        lambda task: {
            "lora": 1e-3,
            "lora-all-linear": 1e-3,
            "full": 1e-4,
            "head": 1e-2,
            "bitfit": 3e-3,
        },  # fmt: skip
    )
    assert sorted({run["seed"] for run in preset_grid("sst2", "headline")}) == [0, 1, 2]
    # train_one hands the budget's model to the fine-tuning function; smoke has none.
    seen = []
    spec = sweep.TaskSpec(
        "fake", "accuracy", lambda: ([0], [0]),
        lambda train, eval, return_model=False, **kw: seen.append(kw.get("model")) or {"metric": 1},
        lambda: {"n_train": 1, "epochs": 1, "batch_size": 1, "model": "some/base-model"},
    )  # fmt: skip
    config = sweep._full_config(spec, sweep.make_grid(["head"])[0], 1, spec.budget())
    sweep.train_one(spec, config, [0], [0])
    assert seen == ["some/base-model"]
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    assert "model" not in sweep.task_spec("sst2").budget()


def test_a_base_width_bert_from_a_folder_fine_tunes_like_minilm(tmp_path):
    """The full profile's encoder is a BERT of width 768: the same code path as MiniLM. Checked
    offline with a randomly initialised BERT of that width (2 layers, to stay fast) saved with
    MiniLM's tokenizer."""
    import datasets
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lora_edu.models import resolve_text_model
    from lora_edu.train import finetune_text_classifier

    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model("minilm"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=2,
                        num_attention_heads=12, intermediate_size=3072)  # fmt: skip
    BertModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ds = datasets.Dataset.from_dict({"text": ["good", "bad", "fine film", "awful"] * 2,
                                     "label": [1, 0, 1, 0] * 2})  # fmt: skip
    record = finetune_text_classifier(ds, ds, model=str(tmp_path), lora=LoRAConfig(["query", "value"], r=4),
                                      batch_size=4, progress=False)  # fmt: skip
    assert record["model"] == str(tmp_path)
    # q and v of 2 layers: 2 × 2 × r × (768 + 768), plus the head (768 × 2 + 2).
    assert record["trainable_params"] == 2 * 2 * 4 * (768 + 768) + 768 * 2 + 2


def test_loop_settings_travel_with_a_run_and_their_defaults_match_old_records():
    plain = sweep.make_grid(["lora"])[0]
    assert "head_lr" not in plain and "warmup_ratio" not in plain  # old grids are unchanged
    own = sweep.make_grid(["lora"], head_lr=3e-2, warmup_ratio=0.2)[0]
    assert own["head_lr"] == 3e-2 and own["warmup_ratio"] == 0.2
    # a record writes the loop's default warm-up down; the grid entry leaves it out: one run
    assert sweep.run_key({**plain, "warmup_ratio": 0.06}) == sweep.run_key(plain)
    assert sweep.run_key(own) != sweep.run_key(plain)
    assert sweep.run_key({**plain, "head_lr": 3e-2}) != sweep.run_key(plain)
    seen = []
    spec = sweep.TaskSpec(
        "fake", "accuracy", lambda: ([0], [0]),
        lambda train, eval, return_model=False, **kw: seen.append(kw) or {"metric": 1},
        lambda: {"n_train": 1, "epochs": 1, "batch_size": 1},
    )  # fmt: skip
    sweep.train_one(spec, sweep._full_config(spec, own, 1, spec.budget()), [0], [0])
    sweep.train_one(spec, sweep._full_config(spec, plain, 1, spec.budget()), [0], [0])
    assert seen[0]["head_lr"] == 3e-2 and seen[0]["warmup_ratio"] == 0.2
    # the head at the method's rate, said explicitly: no finetune_* default can change the run
    assert seen[1]["head_lr"] is None and "warmup_ratio" not in seen[1]


def test_sparse_selection_keeps_the_share_of_o_tags():
    tags = [[0, 1, 2], [0, 0, 0, 0], [3, 4], [0] * 10, [0, 5], [0] * 6]
    picked = sweep.sparse_selection(tags, 4, 0.8)
    flat = [t for i in picked for t in tags[i]]
    assert picked == [1, 3, 4, 5]  # [0, 1, 2] and [3, 4] would drop the share below 0.8
    assert sum(t == 0 for t in flat) / len(flat) >= 0.8
    with pytest.raises(ValueError, match="only 4 sentences fit an O share of 0.8; 5 wanted"):
        sweep.sparse_selection(tags, 5, 0.8)


def test_n_examples_counts_examples_not_fields():
    """A task's data may be a Dataset, an (images, labels) pair or a dict of arrays: the
    training-set size in a run's key is the number of examples in each."""
    import numpy as np

    assert sweep.n_examples({"images": np.zeros((5, 2, 2)), "labels": np.zeros(5), "boxes": 0}) == 5
    assert sweep.n_examples((np.zeros((7, 2, 2)), np.zeros(7))) == 7
    assert sweep.n_examples([0, 1, 2]) == 3


def _real_record_line() -> str:
    """One record of a committed results file, as ``append_record`` wrote it (newline
    excluded): its literals, numbers, nested lists and strings are the cut points a crash
    meets."""
    path = Path(__file__).resolve().parents[1] / "data" / "results" / "sst2-default.jsonl"
    line = path.read_text(encoding="utf-8").splitlines()[0]
    record = json.loads(line)
    # short enough to try every cut point, with every kind of JSON token still in it
    record["history"] = {"loss": record["history"]["loss"][:3]}
    record = {k: v for k, v in record.items() if k != "eval_correct"}
    record.update({"use_rslora": False, "head_lr": None, "alpha": 16.0, "delta": -0.5})
    return json.dumps(record, sort_keys=True)


def test_a_record_cut_at_any_point_is_set_aside_and_the_sweep_resumes(tmp_path):
    """A writer killed anywhere in a record leaves the file resumable: cut at every character
    of a real record, as the file's last line (no newline) and, after a later append, in the
    middle of the file, the cut-off part is set aside and the intact records are read."""
    line = _real_record_line()
    whole = json.loads(line)
    assert any(c in line for c in ("false", "null", "-0.5", "16.0"))
    out = tmp_path / "r.jsonl"
    for cut in range(1, len(line)):
        out.write_text(line + "\n" + line[:cut], encoding="utf-8")
        with pytest.warns(UserWarning, match="not a complete JSON record"):
            assert sweep.read_results(out) == [whole], f"last line cut after {cut} characters"
        sweep.append_record(out, whole)  # the next record starts on its own line
        with pytest.warns(UserWarning, match="not a complete JSON record"):
            records = sweep.read_results(out, repair=True)
        assert records == [whole, whole], f"middle line cut after {cut} characters"
        assert out.read_text(encoding="utf-8") == (line + "\n") * 2
        (tmp_path / "r.jsonl.corrupt").unlink()


def test_a_damaged_line_is_still_an_error_with_or_without_its_newline(tmp_path):
    out = tmp_path / "r.jsonl"
    for text in ('{"a": 1}\n{"a": 1} x\n{"b": 2}\n', '{"a": 1}\n{"a": 1}}\n', '{"a": 1}\n[1, 2]'):
        out.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=r"r.jsonl:2:"):
            sweep.read_results(out)


def test_runs_differing_in_any_key_field_get_their_own_adapter_folder():
    """Runs that differ only in their learning rate, initialisation, rsLoRA, the head's rate,
    the warm-up, the training-set size or the number of epochs have different run keys, and
    so different adapter folders."""
    base = {**sweep.make_grid(ranks=[8], lr=1e-3)[0], "n_train": 4000, "epochs": 2}
    variants = [
        base,
        {**base, "lr": 1e-4},
        {**base, "init": "pissa"},
        {**base, "use_rslora": True},
        {**base, "head_lr": 0.1},
        {**base, "warmup_ratio": 0.2},
        {**base, "n_train": 1000},
        {**base, "epochs": 3},
        {**base, "seed": 1},
    ]
    assert len({sweep.run_key(v) for v in variants}) == len(variants)
    assert len({sweep.adapter_slug(v) for v in variants}) == len(variants)
    # the loop's default warm-up written down or left out is the same run, and the same folder
    assert sweep.adapter_slug({**base, "warmup_ratio": 0.06}) == sweep.adapter_slug(base)
    assert sweep.adapter_slug(base) == "lora_r8_a16_query-value_lr0.001_n4000_e2_s0"
