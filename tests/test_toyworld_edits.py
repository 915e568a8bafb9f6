"""Each method flips facts of the toy-world model, carries them to the other phrasings and
leaves other subjects alone (DESIGN §10 item 2)."""

from __future__ import annotations

import pytest

from massedit import Editor, StatsSpec
from massedit.testing.toyworld import toy_accuracy, toy_world_model

N_EDITS = 10
# Layers where the toy model recalls facts at the subject's last token (causal probe in
# massedit.testing.toyworld's report); the target layer is the last of them.
LAYERS = {"rome": (2,), "memit": (1, 2), "emmet": (1, 2)}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model, tok, world = toy_world_model("gpt2")
    corpus = tmp_path_factory.mktemp("toy") / "corpus.txt"
    corpus.write_text(world.corpus_text())
    return model, tok, world, corpus


def _check(model, tok, requests, unrelated_prompts, unrelated_before):
    new = [r.target_new for r in requests]
    efficacy = toy_accuracy(model, tok, [r.text for r in requests], new)
    para_prompts = [p for r in requests for p in r.paraphrases]
    para_new = [r.target_new for r in requests for _ in r.paraphrases]
    generalisation = toy_accuracy(model, tok, para_prompts, para_new)
    locality = toy_accuracy(model, tok, unrelated_prompts, unrelated_before)
    return efficacy, generalisation, locality


@pytest.mark.parametrize("method", ["rome", "memit", "emmet"])
def test_method_flips_toy_facts(method, toy, stats_dir):
    model, tok, world, corpus = toy
    requests = world.requests(N_EDITS, seed=1)
    edited_subjects = {r.subject for r in requests}
    others = [f for f in world.facts if f["subject"] not in edited_subjects][:200]
    unrelated = [t.format(f["subject"]) for f in others for t in f["templates"]]
    from massedit.evals.scoring import greedy_continuation

    before = [c.split()[0] if c.split() else "" for c in
              greedy_continuation(model, tok, unrelated, max_new_tokens=1)]
    editor = Editor(model, tok, method=method, layers=LAYERS[method], progress=False,
                    stats=StatsSpec(corpus=str(corpus), cache_dir=str(stats_dir)))
    # ROME writes one fact at a time, as it was designed to; the others take the whole batch.
    patch = editor.edit(requests, batch_size=1 if method == "rome" else None)
    try:
        efficacy, generalisation, locality = _check(model, tok, requests, unrelated, before)
    finally:
        patch.revert(model)
    assert efficacy >= 0.9, f"{method}: edited prompts flipped {efficacy:.0%}"
    assert generalisation >= 0.9, f"{method}: other phrasings flipped {generalisation:.0%}"
    assert locality >= 0.9, f"{method}: other subjects' facts kept {locality:.0%}"
