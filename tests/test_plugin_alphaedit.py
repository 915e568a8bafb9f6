"""The example plug-in package examples/plugin_alphaedit, installed into the test environment
(``make setup`` runs ``pip install --no-deps -e examples/plugin_alphaedit``): listed, usable from
the API and the command line, conformant, and resumable in sequential editing (issue 8)."""

from __future__ import annotations

import csv
from importlib import metadata
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from massedit import EditError, Editor, EditRequest, StatsSpec
from massedit.cli.main import app
from massedit.editing.registry import get_method, preset_models, registered_by
from massedit.engine.patch import EditPatch
from massedit.jobs.runs import RunDir
from massedit.jobs.sequential import edit_resumably
from massedit.testing import check_method, tiny_model
from massedit.testing.conformance_edits import TINY_SETTINGS

FAST = TINY_SETTINGS  # the kit's settings for random tiny models
# AlphaEdit's settings for the toy world, as its presets hold them for real models: a smaller
# null space. Over toy models of training seeds 0, 1, 2 (benchmarks/toy_thresholds.py kit) it
# then flips 0.9-1.0 of the kit's 10 facts and 0.9-0.95 of their other phrasings and keeps
# 0.86-0.95 of the other facts; at the default threshold (0.1) it keeps only 0.66 on seed 0.
ALPHAEDIT_TOY = {"null_space_threshold": 0.02}
REQUESTS = [
    EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris"),
    EditRequest("{} plays", "Michael Jordan", "football", "basketball"),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditRequest("{} works as a", "Barack Obama", "chef", "politician"),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def test_plugin_is_installed_and_registered_through_entry_points():
    dist = metadata.distribution("massedit-alphaedit")
    groups = {(ep.group, ep.name) for ep in dist.entry_points}
    assert {("massedit.objectives", "null_space"), ("massedit.methods", "alphaedit")} <= groups
    spec = get_method("alphaedit")
    assert (spec.objective, spec.distribution) == ("null_space", "spread")
    assert spec.hparams.__name__ == "AlphaEditHparams"
    assert registered_by("method", "alphaedit") == "massedit-alphaedit"
    assert registered_by("objective", "null_space") == "massedit-alphaedit"
    assert preset_models("alphaedit") == ["default", "smollm2-135m"]
    assert "smollm2-135m" in preset_models("memit")


def test_presets_lists_the_plugin():
    result = CliRunner().invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    assert "alphaedit" in result.output and "null_space" in result.output
    assert "null-space" in result.output  # its description


def _solved_null_space_leak(problem, delta) -> float:
    """|ΔW C| / (|ΔW| |C|) restricted to C's well-used directions (eigenvalue ≥ threshold)."""
    c = problem.moment.mean
    evals, evecs = torch.linalg.eigh(c)
    used = evecs[:, evals >= problem.hparams.null_space_threshold * evals.mean()]
    d = delta.matrix().double()
    return float((d @ used).norm() / d.norm())


def test_sequential_batches_see_prior_keys_and_stay_in_the_null_space(tiny_corpus, stats_dir):
    model, tok = tiny_model("llama")
    stats = StatsSpec(corpus=str(tiny_corpus), cache_dir=str(stats_dir))
    editor = Editor(model, tok, method="alphaedit", stats=stats, progress=False,
                    keep_problems=True, null_space_threshold=0.5, **FAST)
    patch = editor.edit(REQUESTS, batch_size=2)
    assert patch.metadata["objective"] == "null_space"
    assert patch.metadata["hparams"]["null_space_threshold"] == 0.5
    first, second = editor.solved[:2], editor.solved[2:]
    assert all(p.prior_gram() is None for p, _ in first)
    for (p1, _), (p2, d2) in zip(first, second, strict=True):
        # Batch 1's keys reach batch 2 as their product Kₚ Kₚᵀ (d_in, d_in), not raw keys.
        k1 = p1.keys.double()
        assert p2.prior_keys is None and p2.prior_moment.shape == (k1.shape[0], k1.shape[0])
        torch.testing.assert_close(p2.prior_moment, k1 @ k1.T, rtol=1e-12, atol=1e-12)
        assert 0 < d2.info["null_space_dim"] < p1.keys.shape[0]
    for problem, delta in editor.solved:
        assert _solved_null_space_leak(problem, delta) < 1e-5

    # A batch that is stopped leaves the model and the protected keys as they were.
    state = editor.sequential_state()
    d_in = first[0][0].keys.shape[0]
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "prior_moment.1": (d_in, d_in), "prior_moment.2": (d_in, d_in)}  # however many facts
    solve = editor.objective.solve

    def fails_at_the_second_layer(problem):  # after layer 1 has written and kept its keys
        if problem.layer == 2:
            raise EditError("stopped on purpose")
        return solve(problem)

    editor.objective.solve = fails_at_the_second_layer
    with pytest.raises(EditError, match="on purpose"):
        editor.edit(REQUESTS[:1])
    after = editor.sequential_state()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_prior_keys_survive_an_interrupted_run(tmp_path, tiny_corpus, stats_dir):
    def run(out: Path, max_batches: int | None):
        model, tok = tiny_model("gpt2")
        stats = StatsSpec(corpus=str(tiny_corpus), cache_dir=str(stats_dir))
        editor = Editor(model, tok, method="alphaedit", stats=stats, progress=False,
                        null_space_threshold=0.5, **FAST)
        run_dir = RunDir.open(out, "edit", {"test": 1}, "key")
        return edit_resumably(editor, REQUESTS, 2, run_dir, max_batches=max_batches,
                              progress=False)

    whole = run(tmp_path / "whole", None)
    part = run(tmp_path / "parts", 1)
    assert not part.finished and part.requests_done == 2
    saved = list((tmp_path / "parts" / "checkpoints").glob("state-*.safetensors"))
    assert [p.name for p in saved] == ["state-000001.safetensors"]
    resumed = run(tmp_path / "parts", None)  # a new process: a fresh editor and model
    assert resumed.finished and resumed.resumed_from == 2
    for a, b in zip(whole.patch.deltas, resumed.patch.deltas, strict=True):
        assert a.site == b.site
        torch.testing.assert_close(a.delta.matrix(), b.delta.matrix(), rtol=1e-5, atol=1e-7)

    # Without the saved keys the second batch is solved differently: the state matters.
    run(tmp_path / "forgetful", 1)
    (tmp_path / "forgetful" / "checkpoints" / "state-000001.safetensors").unlink()
    forgetful = run(tmp_path / "forgetful", None)
    differs = [float((x.delta.matrix() - y.delta.matrix()).norm() / y.delta.matrix().norm())
               for x, y in zip(forgetful.patch.deltas, whole.patch.deltas, strict=True)]
    assert max(differs[:2]) < 1e-5 < 1e-3 < max(differs[2:])  # batch 1 same, batch 2 not


def test_edit_command_runs_alphaedit(tmp_path, tiny_corpus, stats_dir, monkeypatch):
    monkeypatch.setenv("MASSEDIT_CACHE", str(stats_dir))
    model, tok = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    edits = tmp_path / "facts.csv"
    with edits.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "subject", "target_new", "target_true"])
        writer.writerows([(r.prompt, r.subject, r.target_new, r.target_true)
                          for r in REQUESTS[:2]])
    result = CliRunner().invoke(app, [
        "edit", "--model", str(tmp_path / "base"), "--edits", str(edits), "--method",
        "alphaedit", "--out", str(tmp_path / "run"), "--stats-corpus", str(tiny_corpus),
        "--stats-tokens", "2000", "--set", "v_num_grad_steps=4", "--set", "layers=[1,2]",
        "--set", "max_update_ratio=1e9"])
    assert result.exit_code == 0, result.output
    patch = EditPatch.load(tmp_path / "run" / "patch")
    assert (patch.metadata["method"], patch.metadata["objective"]) == ("alphaedit", "null_space")
    assert "null_space_threshold" in patch.metadata["hparams"]
    assert all(sd.delta.info["null_space_dim"] > 0 for sd in patch.deltas)


def test_alphaedit_passes_the_kit_and_edits_the_toy_world(tmp_path, stats_dir):
    """The example plug-in passes the kit as its author runs it: default thresholds, its own
    toy-world settings."""
    report = check_method("alphaedit", overrides=ALPHAEDIT_TOY, workdir=tmp_path,
                          stats_cache_dir=stats_dir)
    assert report.passed, str(report)
    checks = report.checks()
    assert "objective 'null_space': preserves corpus keys: ΔW C = 0 for rank-deficient C" in checks
    assert "objective 'null_space': uses prior keys: earlier batches' keys move less" in checks


def test_compare_command_runs_memit_and_alphaedit(tmp_path, stats_dir, monkeypatch):
    from tests.test_cli import invoke
    from tests.test_eval_command import SET, STATS_TOKENS, build_toy_workspace

    toy = build_toy_workspace(tmp_path, stats_dir)
    # Only now: the cached toy-world model is found through MASSEDIT_CACHE too.
    monkeypatch.setenv("MASSEDIT_CACHE", str(stats_dir))
    result = invoke("compare", "--model", toy["model"], "--dataset", toy["data"], "--n", "all",
                    "--stats-corpus", toy["corpus"], "--stats-tokens", str(STATS_TOKENS), *SET,
                    "--max-new-tokens", "3", "--out", tmp_path / "study",
                    "--methods", "memit,alphaedit", "--batch-sizes", "4", "--no-fluency")
    assert result.exit_code == 0, result.output
    with (tmp_path / "study" / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [(r["label"], r["status"]) for r in table] == [
        ("unedited", "finished"), ("memit", "finished"), ("alphaedit", "finished")]
    alpha = next(r for r in table if r["label"] == "alphaedit")
    assert float(alpha["efficacy_success"]) > float(table[0]["efficacy_success"])
