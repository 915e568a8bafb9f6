"""The ``massedit`` command line end to end, on tiny and toy-world models saved to folders."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from massedit.cli.main import app
from massedit.engine.patch import EditPatch

FAST = ["--set", "v_num_grad_steps=5", "--set", "layers=[1,2]", "--stats-tokens", "2000"]
FACTS = [
    ("The {} is located in", "Eiffel Tower", "Rome", "Paris", "The Eiffel Tower is in",
     "The Louvre is located in"),
    ("{} is located in the country of", "Colosseum", "Japan", "Italy", "The Colosseum is in",
     "Big Ben is located in the country of"),
    ("{} plays", "Michael Jordan", "tennis", "basketball", "Michael Jordan is a player of",
     "Lionel Messi plays"),
    ("The mother tongue of {} is", "Marie Curie", "English", "French", "Marie Curie speaks",
     "The mother tongue of Albert Einstein is"),
]
MORE_FACTS = [
    ("{} works as a", "Barack Obama", "chef", "politician", "", ""),
    ("The capital city of {} is", "France", "Madrid", "Paris", "", ""),
]
COLUMNS = ["prompt", "subject", "target_new", "target_true", "paraphrase", "neighborhood"]


def write_csv(path: Path, facts, columns=COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(facts)
    return path


def invoke(*args: str | Path):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def assert_same_patch(a: EditPatch, b: EditPatch) -> None:
    assert [(d.site, d.layer) for d in a.deltas] == [(d.site, d.layer) for d in b.deltas]
    for x, y in zip(a.deltas, b.deltas, strict=True):
        assert torch.equal(x.delta.matrix(), y.delta.matrix()), x.site


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_corpus, stats_dir):
    """A tiny GPT-2 saved as a folder, edit files, and one finished edit run (with the model)."""
    import os

    from massedit.testing import tiny_model

    root = tmp_path_factory.mktemp("cli")
    model, tok = tiny_model("gpt2")
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    old_cache = os.environ.get("MASSEDIT_CACHE")
    os.environ["MASSEDIT_CACHE"] = str(stats_dir)
    common = ["--stats-corpus", tiny_corpus, *FAST]
    result = invoke("edit", "--model", root / "base", "--edits",
                    write_csv(root / "facts.csv", FACTS), "--out", root / "run", "--method",
                    "memit", "--batch-size", "2", "--save-model", *common)
    assert result.exit_code == 0, result.output
    yield {"root": root, "base": root / "base", "run": root / "run", "common": common,
           "output": result.output}
    if old_cache is None:
        os.environ.pop("MASSEDIT_CACHE", None)
    else:
        os.environ["MASSEDIT_CACHE"] = old_cache


def test_edit_writes_patch_tables_config_and_model(workspace) -> None:
    run = workspace["run"]
    for name in ("patch/patch.json", "patch/deltas.safetensors", "patch/originals.safetensors",
                 "results.csv", "results.json", "summary.json", "config.json", "run.json",
                 "model/config.json", "model/tokenizer.json"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoints").exists()
    assert not [p for p in run.rglob(".*")], "temporary files left behind"
    config = json.loads((run / "config.json").read_text())
    assert (config["method"], config["objective"], config["distribution"]) == (
        "memit", "least_squares", "spread")
    assert config["layers"] == [1, 2] and config["hparams"]["v_num_grad_steps"] == 5
    assert config["batch_size"] == 2 and config["stats"]["spec"]["tokens"] == 2000
    assert config["edits"]["n_requests"] == 4 and "massedit" in config["versions"]
    with (run / "results.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["subject"] for r in rows] == [f[1] for f in FACTS]
    for column in ("continuation_before", "continuation_after", "p_new_before", "p_new_after",
                   "p_true_before", "p_true_after", "paraphrase_p_new_after",
                   "neighborhood_p_true_after"):
        assert column in rows[0]
    assert "summary over 4 edits" in workspace["output"]
    patch = EditPatch.load(run / "patch")
    assert [d.layer for d in patch.deltas] == [1, 2, 1, 2]  # two batches, two layers each


def test_saved_model_is_base_plus_patch(workspace) -> None:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(workspace["base"])
    EditPatch.load(workspace["run"] / "patch").apply(base)
    assert_same_weights(base.state_dict(), weights(workspace["run"] / "model"))


def test_apply_revert_merge_round_trips(workspace) -> None:
    root, base, run = workspace["root"], workspace["base"], workspace["run"]
    result = invoke("apply", run, "--model", base, "--out", root / "applied")
    assert result.exit_code == 0, result.output
    assert_same_weights(weights(root / "applied"), weights(run / "model"))

    result = invoke("revert", run, "--out", root / "reverted")  # default model: RUN_DIR/model
    assert result.exit_code == 0, result.output
    assert_same_weights(weights(root / "reverted"), weights(base))

    # A second run on top of the first one's model, then one merged patch for both.
    result = invoke("edit", "--model", run / "model", "--edits",
                    write_csv(root / "more.csv", MORE_FACTS), "--out", root / "run2",
                    "--save-model", *workspace["common"])
    assert result.exit_code == 0, result.output
    result = invoke("merge", run, root / "run2", "--out", root / "merged")
    assert result.exit_code == 0, result.output
    result = invoke("apply", root / "merged", "--model", base, "--out", root / "both")
    assert result.exit_code == 0, result.output
    assert_same_weights(weights(root / "both"), weights(root / "run2" / "model"))
    result = invoke("revert", root / "merged", "--model", root / "both", "--out", root / "none")
    assert result.exit_code == 0, result.output
    assert_same_weights(weights(root / "none"), weights(base))

    # Refusals: a patch on a model it was not made for; reverting an unedited model.
    result = invoke("apply", run, "--model", root / "both", "--out", root / "wrong")
    assert result.exit_code == 1 and "another base model" in result.output
    result = invoke("revert", run, "--model", base, "--out", root / "wrong")
    assert result.exit_code == 1 and "not what this patch wrote" in result.output
    assert not (root / "wrong").exists()


def test_finished_run_is_kept_and_other_commands_refused(workspace) -> None:
    run = workspace["run"]
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    result = invoke("edit", "--model", workspace["base"], "--edits",
                    workspace["root"] / "facts.csv", "--out", run, "--method", "memit",
                    "--batch-size", "2", *workspace["common"])
    assert result.exit_code == 0 and "already holds this finished run" in result.output
    result = invoke("edit", "--model", workspace["base"], "--edits",
                    workspace["root"] / "facts.csv", "--out", run, "--method", "rome",
                    *workspace["common"])
    assert result.exit_code == 1 and "never overwritten" in result.output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


BAD_INPUTS = {
    "missing_column": ("prompt,target_new\nThe {} is in,Rome\n", "line 1: missing column"),
    "empty_field": ("prompt,subject,target_new\nThe {} is in,Eiffel Tower,Rome\n"
                    "The {} is in,,Rome\n", "row 2 (line 3): field 'subject' is empty"),
    "subject_not_in_prompt": ("prompt,subject,target_new\nWhere is it,Eiffel Tower,Rome\n",
                              "row 1 (line 2): field 'prompt' contains neither"),
    "duplicate": ("prompt,subject,target_new\nThe {} is in,Big Ben,Rome\n"
                  "The {} is in,Eiffel Tower,Rome\nThe {} is in,Eiffel Tower,Rome\n",
                  "row 3 (line 4): exact duplicate of row 2"),
    "conflict": ("prompt,subject,target_new\nThe {} is in,Eiffel Tower,Rome\n"
                 "The {} is in,Eiffel Tower,Tokyo\n", "row 2 (line 3): conflicts with row 1"),
    "encoding": (b"prompt,subject,target_new\nThe {} is in,Caf\xe9,Rome\n",
                 "row 1 (line 2): unreadable encoding"),
    "tokenisation": ("prompt,subject,target_new\nThe {} is in,Eiffel Tower,Zanzibar\n",
                     "row 1: target_new 'Zanzibar' has tokens the tokenizer does not know"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_reported_and_nothing_written(workspace, tmp_path: Path, case: str) -> None:
    body, expected = BAD_INPUTS[case]
    path = tmp_path / "bad.csv"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    out = tmp_path / "run"
    result = invoke("edit", "--model", workspace["base"], "--edits", path, "--out", out,
                    *workspace["common"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())  # the console wraps long lines where it likes
    assert expected in said, result.output
    assert "nothing was edited or written" in said
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--set", "colour=3"], "unknown hyper-parameter(s) ['colour']"),
    (["--set", "layers=[9]"], "edit layers [9] invalid for 4 layers"),
    (["--set", "max_update_ratio=1e-9"], "the edit was stopped"),
])
def test_bad_options_and_failed_edits_leave_nothing(workspace, tmp_path, extra, message):
    out = tmp_path / "run"
    result = invoke("edit", "--model", workspace["base"], "--edits",
                    workspace["root"] / "facts.csv", "--out", out, *workspace["common"], *extra)
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not out.exists()


def test_dry_run_writes_nothing(workspace, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("edit", "--model", workspace["base"], "--edits",
                    workspace["root"] / "facts.csv", "--out", out, "--batch-size", "3",
                    "--dry-run", *workspace["common"])
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output and "4 edit(s)" in result.output
    assert "2 batch(es)" in result.output and "layers [1, 2]" in result.output
    assert not out.exists()


def test_resume_after_interruption_gives_the_same_patch(workspace, tmp_path, monkeypatch):
    from massedit.editing.editor import Editor

    edits = write_csv(tmp_path / "three.csv", FACTS[:3])
    args = ["edit", "--model", workspace["base"], "--edits", edits, "--method", "memit",
            "--batch-size", "1", *workspace["common"]]
    result = invoke(*args, "--out", tmp_path / "whole")
    assert result.exit_code == 0, result.output

    # Stopped on purpose after the first batch: exit 3 and a checkpoint.
    result = invoke(*args, "--out", tmp_path / "parts", "--max-batches", "1")
    assert result.exit_code == 3, result.output
    assert len(list((tmp_path / "parts" / "checkpoints").glob("batch-*"))) == 1
    assert not (tmp_path / "parts" / "patch").exists()

    # Killed in the middle of its second batch (the third in all), before any weight changed.
    real = Editor._edit_batch
    calls = {"n": 0}

    def dies_in_second_batch(self, reqs, patch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, reqs, patch)

    monkeypatch.setattr(Editor, "_edit_batch", dies_in_second_batch)
    result = invoke(*args, "--out", tmp_path / "parts")
    assert result.exit_code == 130, result.output
    monkeypatch.setattr(Editor, "_edit_batch", real)
    assert [p.name for p in (tmp_path / "parts" / "checkpoints").glob("batch-*")] == [
        "batch-000002"]

    result = invoke(*args, "--out", tmp_path / "parts")
    assert result.exit_code == 0, result.output
    whole = EditPatch.load(tmp_path / "whole" / "patch")
    parts = EditPatch.load(tmp_path / "parts" / "patch")
    assert_same_patch(whole, parts)
    for name in ("n_requests", "requests_digest", "target_nll", "prefixes", "hparams"):
        assert whole.metadata[name] == parts.metadata[name], name
    assert (tmp_path / "whole" / "results.csv").read_text() == (
        tmp_path / "parts" / "results.csv").read_text()


def test_resume_reads_its_targets_from_disk_and_gives_a_bit_identical_patch(
        workspace, tmp_path, monkeypatch):
    """Killed after the second batch's targets were optimised, before it wrote anything: the
    re-run reads those targets from the disk cache instead of optimising them again, and ends
    with exactly the patch of an uninterrupted run (docs/design.md §12)."""
    import massedit.editing.editor as editor_module

    edits = write_csv(tmp_path / "three.csv", FACTS[:3])
    args = ["edit", "--model", workspace["base"], "--edits", edits, "--method", "memit",
            "--batch-size", "1", *workspace["common"]]
    calls: list[int] = []
    real_targets = editor_module.compute_targets

    def counted(model, tok, requests, *rest, **kwargs):
        calls.append(len(requests))
        return real_targets(model, tok, requests, *rest, **kwargs)

    monkeypatch.setattr(editor_module, "compute_targets", counted)
    monkeypatch.setenv("MASSEDIT_CACHE", str(tmp_path / "cache-whole"))
    assert invoke(*args, "--out", tmp_path / "whole").exit_code == 0
    assert calls == [1, 1, 1]

    monkeypatch.setenv("MASSEDIT_CACHE", str(tmp_path / "cache-parts"))  # nothing stored yet
    real_problem = editor_module.Editor._problem
    batches: list[int] = []

    def dies_after_second_targets(self, reqs, prefixes, z, j, layer, moment):
        if j == 0:
            batches.append(1)
        if len(batches) == 2:
            raise KeyboardInterrupt
        return real_problem(self, reqs, prefixes, z, j, layer, moment)

    monkeypatch.setattr(editor_module.Editor, "_problem", dies_after_second_targets)
    calls.clear()
    assert invoke(*args, "--out", tmp_path / "parts").exit_code == 130
    assert calls == [1, 1]  # two batches' targets optimised, and stored
    monkeypatch.setattr(editor_module.Editor, "_problem", real_problem)
    calls.clear()
    result = invoke(*args, "--out", tmp_path / "parts")
    assert result.exit_code == 0, result.output
    assert calls == [1]  # only the third batch's target: the second's came from disk
    assert_same_patch(EditPatch.load(tmp_path / "whole" / "patch"),
                      EditPatch.load(tmp_path / "parts" / "patch"))


def test_a_batch_emmet_cannot_solve_is_refused_before_any_work(workspace, tmp_path):
    edits = write_csv(tmp_path / "same.csv", [
        ("{} plays", "Michael Jordan", "tennis", "basketball", "", ""),
        ("{} works as a", "Michael Jordan", "chef", "player", "", "")])
    out = tmp_path / "run"
    result = invoke("edit", "--model", workspace["base"], "--edits", edits, "--out", out,
                    "--method", "emmet", *workspace["common"], "--set", "mu=0")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "these requests share a key" in text and "mu > 0" in text, result.output
    assert not out.exists()


def test_presets_and_module_entry_point() -> None:
    result = invoke("presets")
    assert result.exit_code == 0
    for name in ("rome", "memit", "emmet", "least_squares", "equality", "spread", "gpt2-xl"):
        assert name in result.output
    out = subprocess.run([sys.executable, "-m", "massedit", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("edit", "apply", "revert", "merge", "presets", "demo"):
        assert command in out
