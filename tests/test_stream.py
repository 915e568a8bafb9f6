"""Sequential streams (``massedit stream``): points every k batches, retention equal to a direct
recomputation on the final model, resume without re-editing, and the report's curves."""

from __future__ import annotations

import json

import pytest

from massedit import EditPatch, StatsSpec
from massedit.evals.evaluation import EvalSettings, evaluate, summarize, unedited_reference
from massedit.evals.readers import EvalCase
from massedit.evals.stream import StreamSettings, perplexity, retention_sample, run_stream
from massedit.evals.stream_report import write_stream_report
from massedit.testing.toyworld import WIDE_GPT2_EDIT_LAYERS, WIDE_GPT2_SPEC, toy_world_model

N_FACTS = 8


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model, tok, world = toy_world_model("gpt2", spec=WIDE_GPT2_SPEC)
    corpus = tmp_path_factory.mktemp("toy") / "corpus.txt"
    corpus.write_text(world.corpus_text())
    cases = [EvalCase(request=r, rewrite_prompts=(r.text,), paraphrase_prompts=r.paraphrases,
                      neighborhood_prompts=r.neighborhood)
             for r in world.requests(N_FACTS, seed=3)]
    heldout = tok(world.corpus_text()[:4000])["input_ids"]
    editor_kwargs = dict(stats=StatsSpec(corpus=str(corpus)), layers=WIDE_GPT2_EDIT_LAYERS,
                         mom2_lambda=10.0, v_num_grad_steps=60)
    return model, tok, cases, heldout, editor_kwargs


def test_stream_points_retention_and_resume(toy, tmp_path):
    model, tok, cases, heldout, editor_kwargs = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = StreamSettings(batch_size=2, every=2, measure=6, seed=0)
    points = run_stream(model, tok, cases, "memit", tmp_path, settings,
                        editor_kwargs=editor_kwargs, heldout_ids=heldout, progress=False)

    # The unedited point, then one after every 2 batches of 2.
    assert [p["facts_written"] for p in points] == [0, 4, 8]
    sample = retention_sample(N_FACTS, 6, 0)
    assert [p["n_measured"] for p in points] == [0, sum(i < 4 for i in sample), 6]
    assert points[0]["max_weight_growth"] == 0.0
    assert 0 < points[1]["max_weight_growth"] < points[2]["max_weight_growth"]
    # The model is left as it was.
    assert all(model.state_dict()[k].equal(v) for k, v in before.items())

    # Retention at the end equals a direct recomputation on the final patch.
    patch = EditPatch.load(tmp_path / "memit" / "patch")
    eval_settings = EvalSettings(fluency=False)
    chosen = [cases[i] for i in sample]
    reference = unedited_reference(model, tok, chosen, eval_settings)
    direct_ppl_before = perplexity(model, heldout)
    patch.apply(model)
    try:
        direct = summarize(evaluate(model, tok, chosen, eval_settings, reference.locality_tokens))
        direct_ppl = perplexity(model, heldout)
    finally:
        patch.revert(model)
    for metric in ("efficacy_success", "paraphrase_success", "neighborhood_success", "score"):
        assert points[-1][metric] == pytest.approx(direct[metric], abs=1e-9)
    assert points[-1]["perplexity"] == pytest.approx(direct_ppl, rel=1e-6)
    assert points[0]["perplexity"] == pytest.approx(direct_ppl_before, rel=1e-6)
    assert points[-1]["efficacy_success"] >= 75  # the toy's facts are written (8/8 typically)

    # A re-run measures nothing new and edits nothing: the points file is unchanged.
    saved = (tmp_path / "memit" / "points.json").read_text()
    again = run_stream(model, tok, cases, "memit", tmp_path, settings,
                       editor_kwargs=editor_kwargs, heldout_ids=heldout, progress=False)
    assert again == json.loads(saved)
    assert (tmp_path / "memit" / "points.json").read_text() == saved

    # The report holds the curves it was given.
    write_stream_report(tmp_path, {"memit": points}, "toy stream")
    assert (tmp_path / "stream.png").stat().st_size > 0
    text = (tmp_path / "stream.md").read_text()
    assert "| memit | 8 | 6 |" in text


def test_stream_resumes_after_an_interruption(toy, tmp_path, monkeypatch):
    """Killed after the first measured point, a re-run continues from the checkpoint and ends
    with the same points as an uninterrupted stream."""
    from massedit.evals import stream as stream_module

    model, tok, cases, heldout, editor_kwargs = toy
    settings = StreamSettings(batch_size=4, every=1, measure=None)
    full = run_stream(model, tok, cases, "memit", tmp_path / "full", settings,
                      editor_kwargs=editor_kwargs, progress=False)

    real = stream_module.measure_point
    calls = {"n": 0}

    def dies_at_the_second_edited_point(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # 0 facts, 4 facts, then the 8-fact point
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stream_module, "measure_point", dies_at_the_second_edited_point)
    with pytest.raises(KeyboardInterrupt):
        run_stream(model, tok, cases, "memit", tmp_path / "cut", settings,
                   editor_kwargs=editor_kwargs, progress=False)
    monkeypatch.setattr(stream_module, "measure_point", real)
    resumed = run_stream(model, tok, cases, "memit", tmp_path / "cut", settings,
                         editor_kwargs=editor_kwargs, progress=False)
    assert [p["facts_written"] for p in resumed] == [0, 4, 8]
    assert "efficacy_success" not in resumed[0]  # nothing written, nothing to retain
    for a, b in zip(full[1:], resumed[1:], strict=True):
        for metric in ("efficacy_success", "neighborhood_success", "max_weight_growth"):
            assert a[metric] == pytest.approx(b[metric], abs=1e-6), metric
