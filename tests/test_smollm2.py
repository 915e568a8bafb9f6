"""End-to-end edits of the real embedded model, SmolLM2-135M, on dev CounterFact records."""

from __future__ import annotations

import pytest

from massedit import Editor, StatsSpec, load_model
from massedit.evals.metrics import counterfact_scores, summarize_counterfact
from massedit.evals.readers import load_eval_dataset
from tests.conftest import needs_data, shared_data

WIKITEXT = shared_data() / "wikitext-2" / "valid.txt"
# "counterfact" reads the mirror's dev records (the first file of its mirror paths found).
pytestmark = needs_data("wikitext-2/valid.txt", "counterfact/counterfact_dev.json")


@pytest.fixture(scope="module")
def smollm2():
    model, tok = load_model("smollm2-135m")
    return model, tok, {}  # the dict shares targets between methods with the same settings


@pytest.mark.parametrize(("method", "n", "batch_size"),
                         [("rome", 3, 1), ("memit", 10, None), ("emmet", 10, None)])
def test_method_edits_smollm2(smollm2, method, n, batch_size):
    model, tok, shared_targets = smollm2
    cases = load_eval_dataset("counterfact", n=n)
    before = summarize_counterfact(counterfact_scores(model, tok, cases))
    editor = Editor(model, tok, method=method, stats=StatsSpec(corpus=str(WIKITEXT)),
                    progress=False, target_cache=shared_targets)
    assert editor.preset_source == f"{method}/smollm2-135m.yaml"
    patch = editor.edit([c.request for c in cases], batch_size=batch_size)
    try:
        after = summarize_counterfact(counterfact_scores(model, tok, cases))
    finally:
        patch.revert(model)
    assert after["efficacy_success"] >= 90, (method, before, after)
    assert before["neighborhood_success"] - after["neighborhood_success"] <= 10, (before, after)
    # Reverting restored the unedited behaviour exactly.
    again = summarize_counterfact(counterfact_scores(model, tok, cases))
    assert again == before
