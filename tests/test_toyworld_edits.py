"""Issue 2's toy-world acceptance: each method flips edited facts (≥ 90% of edited prompts and of
their other phrasings) and leaves ≥ 90% of other subjects' facts unchanged.

The model is the wide toy GPT-2 (:data:`massedit.testing.toyworld.WIDE_GPT2_SPEC`, trained once
and cached); its facts are written at layer 0. λ is re-tuned for its C (docs/design.md §5: λ does
not
transfer between models) and its MLP weights are small (‖W‖ ≈ 4), so the update-size safety
limit is relative to a much larger scale than in real models.
"""

from __future__ import annotations

import pytest

from massedit import Editor, StatsSpec
from massedit.evals.scoring import greedy_continuation
from massedit.testing.toyworld import (
    WIDE_GPT2_EDIT_LAYERS,
    WIDE_GPT2_SPEC,
    toy_accuracy,
    toy_world_model,
)

N_EDITS = 10
SETTINGS = {
    # ROME needs more steps: its one layer must carry each fact alone.
    "rome": dict(v_num_grad_steps=80),
    "memit": dict(mom2_lambda=10.0, v_num_grad_steps=60),
    "emmet": dict(v_num_grad_steps=60),
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model, tok, world = toy_world_model("gpt2", spec=WIDE_GPT2_SPEC)
    corpus = tmp_path_factory.mktemp("toy") / "corpus.txt"
    corpus.write_text(world.corpus_text())
    requests = world.requests(N_EDITS, seed=1)
    edited = {r.subject for r in requests}
    others = [f for f in world.facts if f["subject"] not in edited][:200]
    unrelated = [t.format(f["subject"]) for f in others for t in f["templates"]]
    before = [c.split()[0] if c.split() else ""
              for c in greedy_continuation(model, tok, unrelated, max_new_tokens=1)]
    return model, tok, requests, corpus, unrelated, before


def _measure(model, tok, requests, unrelated, before) -> tuple[float, float, float]:
    efficacy = toy_accuracy(model, tok, [r.text for r in requests],
                            [r.target_new for r in requests])
    para_prompts = [p for r in requests for p in r.paraphrases]
    para_new = [r.target_new for r in requests for _ in r.paraphrases]
    generalisation = toy_accuracy(model, tok, para_prompts, para_new)
    locality = toy_accuracy(model, tok, unrelated, before)
    return efficacy, generalisation, locality


@pytest.mark.parametrize("method", ["rome", "memit", "emmet"])
def test_method_flips_toy_facts_and_keeps_others(method, toy, stats_dir):
    model, tok, requests, corpus, unrelated, before = toy
    editor = Editor(model, tok, method=method, progress=False, layers=WIDE_GPT2_EDIT_LAYERS,
                    stats=StatsSpec(corpus=str(corpus), cache_dir=str(stats_dir)),
                    max_update_ratio=1e4, **SETTINGS[method])
    if method == "rome":
        # ROME is a one-fact editor: each fact is written alone, measured, and reverted.
        results = []
        for request in requests:
            patch = editor.edit([request])
            try:
                results.append(_measure(model, tok, [request], unrelated, before))
            finally:
                patch.revert(model)
        efficacy, generalisation, locality = (sum(x) / len(x) for x in zip(*results, strict=True))
    else:
        patch = editor.edit(requests)
        try:
            efficacy, generalisation, locality = _measure(model, tok, requests, unrelated, before)
        finally:
            patch.revert(model)
    assert toy_accuracy(model, tok, unrelated, before) == 1.0  # reverted exactly
    # The shares are float32 means: 9 of 10 is 0.89999998, which must count as 90%.
    floor = 0.9 - 1e-6
    assert efficacy >= floor, f"{method}: edited prompts flipped {efficacy:.0%}"
    assert generalisation >= floor, f"{method}: other phrasings flipped {generalisation:.0%}"
    assert locality >= floor, f"{method}: other subjects' facts kept {locality:.0%}"
