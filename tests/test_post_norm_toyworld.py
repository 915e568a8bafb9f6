"""Issue 16's post-norm toy world: ROME, MEMIT and EMMET edit a trained toy model whose MLP
output goes through a norm before the residual stream (OLMo 2: ``h + norm(mlp(h))``), so every
write passes through the post-norm map of docs/design.md §5 (``engine.post_norm``).

The model is the toy world's ``olmo2`` recipe (``testing.toytrain.ARCH_SPECS``: 6 layers, width
64, MLP 192, trained in the suite in about 1.5-3 minutes on one busy CPU thread and cached). The
bars are NOT the issue's 90%: measured over the models of training seeds 0, 1 and 2, no method
reaches it on this toy, and each bar sits below the worst seed with the spread quoted beside it
(docs/design.md §10.2). Why (measured, see massedit/testing/toyworld.py): the post-norm toy
recalls its facts at the prompt's last token, reading the subject through attention from layer 1
on, so only layer 0's MLP is placed to change it, and what one MLP behind a norm can add to the
stream is bounded (docs/design.md §5): on seed 0, 2 of the 10 facts keep a target NLL of
2.6-7.7 after 200 steps however the step size, clamp or decay are set. Targets are optimised over
what the MLP can make, which lifted ROME from 0.4-0.8 to 0.6-0.9 of the facts.
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
#   rome  0.6-0.9 / 0.65-0.9 / 0.983-0.995
#   memit 0.8-0.9 / 0.7-0.9  / 0.76-0.94
#   emmet 0.7-0.9 / 0.65-0.9 / 0.74-0.94
# Each bar is one fact (0.1) or a few points below the worst seed.
BARS = {
    "rome": {"efficacy": 0.5, "generalisation": 0.55, "locality": 0.97},
    "memit": {"efficacy": 0.7, "generalisation": 0.6, "locality": 0.7},
    "emmet": {"efficacy": 0.6, "generalisation": 0.55, "locality": 0.68},
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
