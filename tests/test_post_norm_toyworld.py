"""Issue 16's post-norm toy world: ROME, MEMIT and EMMET edit a trained toy model whose MLP
output goes through a norm before the residual stream (OLMo 2: ``h + norm(mlp(h))``), so every
write passes through the post-norm map of docs/design.md §5 (``engine.post_norm``).

The model is the toy world's ``olmo2`` recipe (``testing.toytrain.ARCH_SPECS``: 6 layers, width
64, MLP 192, trained in the suite in about a minute on one CPU thread and cached), on a world
with profile lines (``testing.toyworld.ARCH_WORLDS``) so that, as in real models, the facts are
looked up at the subject's last token. Without them the toy recalled its facts at the prompt's
last token and one seed in three kept facts out of MLP 0's reach (massedit/testing/toyworld.py).
The bars are the issue's: each method flips at least 90% of the edited facts and keeps at least
90% of the others, on every training seed measured (0, 1, 2).
"""

from __future__ import annotations

import pytest

from massedit import Editor, StatsSpec
from massedit.models.adapters import get_adapter
from massedit.testing.conformance_edits import TOY_PRESETS, TOY_SETTINGS
from massedit.testing.toyworld import TOY_EDIT_LAYERS, toy_accuracy
from tests.test_toyworld_edits import build_toy

ARCH = "olmo2"
LAYERS = TOY_EDIT_LAYERS[ARCH]  # layer 0 for every method (massedit/testing/toyworld.py)

# Shares over the models of training seeds 0, 1, 2 (efficacy / other phrasings / other facts
# kept), 10 facts, the kit's toy settings (ROME 80 target steps, one fact at a time; MEMIT
# λ = 10; EMMET μ = 0; 60 steps), benchmarks/toy_thresholds.py --only post_norm:
#   rome  0.9-1.0 / 0.85-1.0 / 0.996-0.998
#   memit 0.9-1.0 / 0.9-1.0  / 0.958-0.967
#   emmet 0.9-1.0 / 0.85-1.0 / 0.955-0.962
# Efficacy and locality bars are issue 16's 90%; other phrasings 0.05 (one phrasing) below
# the worst.
BARS = {
    "rome": {"efficacy": 0.9, "generalisation": 0.8, "locality": 0.9},
    "memit": {"efficacy": 0.9, "generalisation": 0.8, "locality": 0.9},
    "emmet": {"efficacy": 0.9, "generalisation": 0.8, "locality": 0.9},
}


def build_post_norm_toy(workdir, train_seed: int | None = None):
    """The olmo2 toy model, its corpus, the kit's 10 requests, 600 other prompts and their
    answers before any edit."""
    return build_toy(workdir, train_seed, arch=ARCH, spec=None)


def _shares(model, tok, requests, unrelated, before) -> tuple[float, float, float]:
    efficacy = toy_accuracy(model, tok, [r.text for r in requests],
                            [r.target_new for r in requests])
    generalisation = toy_accuracy(model, tok, [p for r in requests for p in r.paraphrases],
                                  [r.target_new for r in requests for _ in r.paraphrases])
    return efficacy, generalisation, toy_accuracy(model, tok, unrelated, before)


def post_norm_scores(method: str, toy, stats_dir) -> dict[str, float]:
    """Edit the 10 facts (ROME one at a time), measure, revert; shares 0-1."""
    model, tok, requests, corpus, unrelated, before = toy
    settings = {**TOY_SETTINGS, **TOY_PRESETS.get(method, {}), "layers": LAYERS}
    editor = Editor(model, tok, method=method, progress=False,
                    stats=StatsSpec(corpus=str(corpus), cache_dir=str(stats_dir)), **settings)
    batches = [[r] for r in requests] if method == "rome" else [requests]
    results = []
    for batch in batches:
        patch = editor.edit(batch)
        try:
            results.append(_shares(model, tok, batch, unrelated, before))
        finally:
            patch.revert(model)
    assert toy_accuracy(model, tok, unrelated, before) == 1.0  # reverted exactly
    efficacy, generalisation, locality = (sum(x) / len(x) for x in zip(*results, strict=True))
    return {"efficacy": efficacy, "generalisation": generalisation, "locality": locality}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_post_norm_toy(tmp_path_factory.mktemp("post-norm-toy"))


def test_the_toy_has_a_norm_after_the_mlp_and_knows_its_facts(toy):
    model, tok, requests, _, unrelated, before = toy
    assert get_adapter(model).mlp_out_norm == "post_feedforward_layernorm"
    # Trained to recall (early stop at 99.5%); the edited facts are known before the edit.
    assert toy_accuracy(model, tok, [r.text for r in requests],
                        [r.target_true for r in requests]) == 1.0
    assert toy_accuracy(model, tok, [r.text for r in requests],
                        [r.target_new for r in requests]) == 0.0


@pytest.mark.parametrize("method", ["rome", "memit", "emmet"])
def test_method_edits_the_post_norm_toy(method, toy, stats_dir):
    scores = post_norm_scores(method, toy, stats_dir)
    for metric, share in scores.items():
        assert share >= BARS[method][metric] - 1e-6, f"{method}: {metric} {share:.0%}"
