"""Whole-editor methods (``MethodSpec(editor=...)``, docs/design.md §4): a tiny registered editor
runs through ``Editor``, ``massedit edit``, ``compare``, ``eval --patch`` and the conformance
kit, with the shared validation, presets and ``--set``, and bit-exact patches."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import pytest
import torch

from massedit import EditError, Editor, EditRequest
from massedit.contracts import Delta, EditHparams, MethodSpec, WholeEditContext
from massedit.editing.registry import register_method
from massedit.engine.patch import EditPatch
from massedit.engine.requests import RequestError
from massedit.testing import check_method, tiny_model
from massedit.testing.conformance_edits import TINY_REQUESTS
from tests.test_cli import invoke, write_csv
from tests.test_eval_command import counterfact_records

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class NudgeHparams(EditHparams):
    nudge: float = 1e-3  # the method's own field: size of each entry of ΔW per request
    context_lengths: tuple[tuple[int, int], ...] = ()


CALLS: list[dict] = []


def nudge(model, tok, requests, hparams, context: WholeEditContext) -> None:
    """Adds ``nudge × (number of requests)`` to every entry of each edit site's weight."""
    CALLS.append({"n": len(requests), "layers": list(context.layers), "nudge": hparams.nudge,
                  "prefixes": context.prefixes(), "moments": context.moments()})
    if hparams.nudge < 0:
        raise RuntimeError("negative nudge: fails after the first write")
    for layer in context.layers:
        d_out, d_in = context.weight(layer).shape
        u = torch.full((d_out, 1), hparams.nudge * len(requests))  # (d_out, 1)
        context.write(layer, Delta(u, torch.ones(d_in, 1)))  # ΔW = u 1ᵀ (d_out, d_in)
    context.info["requests"] = len(requests)


register_method(MethodSpec("test_nudge", editor=nudge, hparams=NudgeHparams,
                           description="a tiny whole editor for the tests"))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(model, state) -> list[str]:
    return [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]


def test_editor_dispatches_with_presets_overrides_batches_and_exact_patch(tmp_path):
    model, tok = tiny_model("llama")
    fresh, _ = tiny_model("llama")
    before = _state(model)
    CALLS.clear()
    editor = Editor(model, tok, "test_nudge", progress=False, layers=(1, 2), nudge=0.01)
    assert (editor.objective_name, editor.distribution_name, editor.layers) == (None, None, [1, 2])
    assert editor.hparams.nudge == 0.01 and isinstance(editor.hparams, NudgeHparams)
    patch = editor.edit(list(TINY_REQUESTS), batch_size=3)
    # Two batches (3 + 1 requests), each seeing the model the previous one left.
    assert [(c["n"], c["layers"], c["nudge"]) for c in CALLS] == [(3, [1, 2], 0.01),
                                                                   (1, [1, 2], 0.01)]
    assert CALLS[0]["prefixes"] == [""] and CALLS[0]["moments"] == {}  # no statistics asked for
    assert patch.metadata["method"] == "test_nudge" and patch.metadata["objective"] is None
    assert patch.metadata["editor_info"] == [{"requests": 3}, {"requests": 1}]
    assert "seconds" in patch.metadata
    site = "model.layers.1.mlp.down_proj"
    assert sorted(_changed(model, before)) == sorted(f"{s}.weight" for s in patch.sites)
    expected = (before[f"{site}.weight"] + 0.03) + 0.01  # fp32 writes, in order
    assert torch.equal(model.state_dict()[f"{site}.weight"], expected)
    edited = _state(model)
    loaded = EditPatch.load(patch.save(tmp_path / "patch"))
    loaded.apply(fresh)
    assert _changed(fresh, edited) == []
    patch.revert(model)
    assert _changed(model, before) == []


def test_whole_editor_gets_the_shared_validation_and_refusals():
    model, tok = tiny_model("gpt2")
    before = _state(model)
    CALLS.clear()
    editor = Editor(model, tok, "test_nudge", progress=False, layers=(1,))
    rows = [TINY_REQUESTS[0].to_dict(), {"prompt": "The city is in", "subject": "Paris",
                                         "target_new": "Rome"}]
    with pytest.raises(RequestError, match="request 1: field 'prompt'"):  # as memit says it
        editor.edit(rows)
    assert CALLS == [] and _changed(model, before) == []
    with pytest.raises(ValueError, match="whole editor.*--objective/--distribution"):
        Editor(model, tok, "test_nudge", objective="equality")
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        Editor(model, tok, "test_nudge", nudge_size=1)
    with pytest.raises(ValueError, match="edit layers .* invalid"):
        Editor(model, tok, "test_nudge", layers=(9,))
    # The guard refuses an exploding write and the whole call is reverted.
    with pytest.raises(EditError, match="weight's own norm"):
        Editor(model, tok, "test_nudge", progress=False, layers=(1, 2), nudge=100.0).edit(
            list(TINY_REQUESTS))
    assert _changed(model, before) == []
    # An exception inside the editor after a write (batch 2 fails) leaves the model as it was.
    editor = Editor(model, tok, "test_nudge", progress=False, layers=(1,), nudge=0.01)
    editor.edit(list(TINY_REQUESTS[:1])).revert(model)
    with pytest.raises(RuntimeError, match="negative nudge"):
        Editor(model, tok, "test_nudge", progress=False, layers=(1,), nudge=-1.0).edit(
            list(TINY_REQUESTS))
    assert _changed(model, before) == []


def test_model_type_refusal_names_method_and_type():
    def picky(model, tok, requests, hparams, context):
        raise AssertionError("never called")

    picky.check_model = lambda model: "it needs gated MLPs"
    register_method(MethodSpec("test_picky", editor=picky))
    model, tok = tiny_model("gpt2")
    with pytest.raises(ValueError, match="method 'test_picky' cannot edit model type 'gpt2': "
                                         "it needs gated MLPs"):
        Editor(model, tok, "test_picky")


def test_conformance_kit_checks_a_whole_editor(tmp_path):
    report = check_method("test_nudge", toy_arch=None, workdir=tmp_path)
    assert report.passed
    tiny = [r for r in report.results if r.check.startswith("tiny ")]
    assert len(tiny) >= 2 and all("updates at layers [1, 2]" in r.detail for r in tiny), tiny


@pytest.fixture(scope="module")
def tiny_workspace(tmp_path_factory, tiny_corpus, stats_dir):
    """A tiny GPT-2 folder, its facts as an edit CSV and as CounterFact records."""
    root = tmp_path_factory.mktemp("whole")
    model, tok = tiny_model("gpt2")
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    requests = [EditRequest(r.prompt, r.subject, r.target_new, r.target_true, case_id=i,
                            paraphrases=(r.text,), neighborhood=(TINY_REQUESTS[-1 - i].text,))
                for i, r in enumerate(TINY_REQUESTS)]
    (root / "cases.json").write_text(json.dumps(counterfact_records(requests)))
    facts = [(r.prompt, r.subject, r.target_new, r.target_true) for r in requests]
    write_csv(root / "facts.csv", facts, ["prompt", "subject", "target_new", "target_true"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MASSEDIT_CACHE", str(stats_dir))
        yield {"root": root, "base": root / "base", "facts": root / "facts.csv",
               "cases": root / "cases.json", "corpus": tiny_corpus}


def test_cli_edit_then_eval_patch(tiny_workspace):
    ws = tiny_workspace
    run = ws["root"] / "run"
    result = invoke("edit", "--model", ws["base"], "--edits", ws["facts"], "--out", run,
                    "--method", "test_nudge", "--set", "layers=[1,2]", "--set", "nudge=0.002",
                    "--batch-size", "2", "--stats-corpus", ws["corpus"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "test_nudge" and config["hparams"]["nudge"] == 0.002
    patch = EditPatch.load(run / "patch")
    assert [d.layer for d in patch.deltas] == [1, 2, 1, 2]
    assert float(patch.deltas[0].delta.matrix()[0, 0]) == pytest.approx(0.004)
    out = ws["root"] / "eval"
    result = invoke("eval", "--model", ws["base"], "--patch", run / "patch", "--dataset",
                    ws["cases"], "--n", "all", "--out", out, "--max-new-tokens", "2")
    assert result.exit_code == 0, result.output
    evaluated = json.loads((out / "config.json").read_text())
    assert evaluated["patch"]["method"] == "test_nudge"
    bad = invoke("edit", "--model", ws["base"], "--edits", ws["facts"], "--out",
                 ws["root"] / "bad", "--method", "test_nudge", "--set", "nudgee=1")
    assert bad.exit_code != 0 and "nudgee" in bad.output  # the method's own class checks --set


def test_cli_compare_runs_a_whole_editor_beside_memit(tiny_workspace):
    ws = tiny_workspace
    out = ws["root"] / "study"
    result = invoke("compare", "--model", ws["base"], "--dataset", ws["cases"], "--n", "all",
                    "--methods", "memit,test_nudge", "--batch-sizes", "2",
                    "--set", "layers=[1,2]", "--set", "v_num_grad_steps=3",
                    "--stats-corpus", ws["corpus"], "--stats-tokens", "2000",
                    "--max-new-tokens", "2", "--out", out)
    assert result.exit_code == 0, result.output
    with (out / "results.csv").open() as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"unedited", "memit", "test_nudge"}
    assert all(rows[m]["status"] == "finished" for m in rows), rows
