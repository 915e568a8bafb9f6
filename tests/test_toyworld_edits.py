"""Issue 2's toy-world acceptance: each method flips edited facts (≥ 90% of edited prompts and of
their other phrasings) and leaves ≥ 90% of other subjects' facts unchanged.

The model is the wide toy GPT-2 (:data:`massedit.testing.toyworld.WIDE_GPT2_SPEC`, trained once
and cached); its facts are written at layer 0, with the conformance kit's toy-world settings
(:func:`massedit.testing.conformance_edits.toy_settings`: λ re-tuned for its C, docs/design.md §5,
and more target steps) and the same 10 facts the kit writes.
"""

from __future__ import annotations

import pytest

from massedit import Editor, StatsSpec
from massedit.evals.scoring import greedy_continuation
from massedit.testing.conformance_edits import N_TOY_EDITS, toy_settings
from massedit.testing.toyworld import WIDE_GPT2_SPEC, toy_accuracy, toy_world_model

N_EDITS = N_TOY_EDITS


def build_toy(workdir, train_seed: int | None = None, arch: str = "gpt2",
              spec=WIDE_GPT2_SPEC):
    """A toy model (default: the wide GPT-2), its corpus, 10 requests, 600 other prompts and
    their answers before any edit."""
    model, tok, world = toy_world_model(arch, spec=spec, train_seed=train_seed)
    corpus = workdir / "corpus.txt"
    corpus.write_text(world.corpus_text())
    requests = world.requests(N_EDITS, seed=1)
    edited = {r.subject for r in requests}
    others = [f for f in world.facts if f["subject"] not in edited][:200]
    unrelated = [t.format(f["subject"]) for f in others for t in f["templates"]]
    before = [c.split()[0] if c.split() else ""
              for c in greedy_continuation(model, tok, unrelated, max_new_tokens=1)]
    return model, tok, requests, corpus, unrelated, before


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy(tmp_path_factory.mktemp("toy"))


def _measure(model, tok, requests, unrelated, before) -> tuple[float, float, float]:
    efficacy = toy_accuracy(model, tok, [r.text for r in requests],
                            [r.target_new for r in requests])
    para_prompts = [p for r in requests for p in r.paraphrases]
    para_new = [r.target_new for r in requests for _ in r.paraphrases]
    generalisation = toy_accuracy(model, tok, para_prompts, para_new)
    locality = toy_accuracy(model, tok, unrelated, before)
    return efficacy, generalisation, locality


def method_scores(method: str, toy, stats_dir) -> dict[str, float]:
    """Edit the 10 facts with ``method``, measure, revert; shares (0-1) of edited prompts
    flipped (efficacy), of their other phrasings flipped (generalisation) and of the other
    subjects' answers kept (locality)."""
    model, tok, requests, corpus, unrelated, before = toy
    editor = Editor(model, tok, method=method, progress=False,
                    stats=StatsSpec(corpus=str(corpus), cache_dir=str(stats_dir)),
                    **toy_settings(method))
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
    return {"efficacy": efficacy, "generalisation": generalisation, "locality": locality}


@pytest.mark.parametrize("method", ["rome", "memit", "emmet"])
def test_method_flips_toy_facts_and_keeps_others(method, toy, stats_dir):
    scores = method_scores(method, toy, stats_dir)
    # The bar is issue 2's specification, not a measured one. Over toy models of training seeds
    # 0, 1, 2 (benchmarks/toy_thresholds.py toyworld_edits) every method meets it, some with
    # no fact to spare: efficacy 0.9-1.0 and other phrasings 0.9-1.0 (MEMIT and EMMET 0.9 on
    # seed 1, ROME 0.9 on seed 0), locality ROME 0.99, MEMIT and EMMET 0.91-0.96.
    # The shares are float32 means: 9 of 10 is 0.89999998, which must count as 90%.
    floor = 0.9 - 1e-6
    for metric, share in scores.items():
        assert share >= floor, f"{method}: {metric} {share:.0%}"
