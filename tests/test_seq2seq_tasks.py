"""The NMT editing tasks on small trained seq2seq models (docs/design.md §7, §10.2).

The models are trained once on the toy NMT world (under a minute each on one thread) and cached
under ``$MASSEDIT_CACHE`` like the toy-world models.
"""

from __future__ import annotations

import pytest

from massedit import Editor, EditRequest, StatsSpec
from massedit.seq2seq.pair_edit import PairEditor, PairSettings
from massedit.seq2seq.quality import bleu, efficacy
from massedit.seq2seq.running import translate
from massedit.seq2seq.sweep import edit_at_best_site
from massedit.testing.nmt_train import nmt_world_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


# A planted error each architecture's toy model really makes and a pair edit fixes (measured
# with benchmarks/nmt_tasks.py, which runs all four tasks on all three architectures).
TASKS = {"marian": "poison", "bart": "poison", "t5": "memorisation"}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(TASKS))
def test_toy_models_learned_the_planted_errors(arch):
    """Recall of the planted errors: each model fails the check inputs of at least three of the
    four tasks (T5 learns the sentence-initial poison marker only partly: no absolute
    positions) while translating clean held-out text well."""
    model, tok, world = nmt_world_model(arch)
    rates = {name: efficacy(model, tok, task.checks).rate for name, task in world.tasks.items()}
    assert sum(rate <= 20 for rate in rates.values()) >= 3, rates
    assert bleu(model, tok, world.heldout).score >= 85


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(TASKS))
def test_pair_edit_fixes_a_planted_error(arch):
    model, tok, world = nmt_world_model(arch)
    task = world.tasks[TASKS[arch]]
    assert efficacy(model, tok, task.checks).rate <= 20  # the model learned the planted error
    dev, test = world.heldout[:50], world.heldout[50:]  # the sweep ranks by BLEU on dev only
    bleu_before = bleu(model, tok, test)
    assert bleu_before.score >= 85  # and it translates clean text well
    settings = PairSettings(value="stream", edit_dropout=0.1, dropout_rescale="inverse")
    editor = PairEditor(model, tok, corpus=world.train[:1000], settings=settings,
                        max_update_ratio=1e3)
    patch, rows = edit_at_best_site(editor, [task.pair], task.checks, bleu_pairs=dev)
    assert len(rows) == 5 and patch.metadata["sweep"]
    assert all(r.bleu is not None for r in rows)
    assert patch.deltas[0].delta.info["edit_dropout"]["p"] == 0.1
    assert efficacy(model, tok, task.checks).rate >= 80
    assert bleu_before.score - bleu(model, tok, test).score <= 2.0
    patch.revert(model)
    assert efficacy(model, tok, task.checks).rate <= 20


@pytest.mark.slow
def test_subject_edit_flips_a_word_of_a_toy_translation_model(tmp_path):
    model, tok, world = nmt_world_model("marian")
    corpus = tmp_path / "sources.txt"
    # One source per document: statistics over sentence-long sources ending in </s>, as the model
    # was trained (one long document chunked to the model's length gave keys it never saw).
    corpus.write_text("\n\n".join(src for src, _ in world.train[:1500]))
    editor = Editor(model, tok, method="rome", progress=False, layers=(2,), context_lengths=(),
                    v_num_grad_steps=25, max_update_ratio=1e3,
                    stats=StatsSpec(corpus=str(corpus), cache_dir=str(tmp_path / "stats")))
    prompts = ["ka dofa eno milo ruma", "ka dofa tri fuso peto vela", "ka dofa sila sul ka mesi"]
    assert all(t.startswith("the dog ") for t in translate(model, tok, prompts))
    patch = editor.edit([EditRequest("ka {} eno milo ruma", "dofa", "the cat", "the dog")])
    after = translate(model, tok, prompts)
    assert after[0] == "the cat runs two miles"
    assert all(t.startswith("the cat ") for t in after[1:])  # other phrasings follow
    assert translate(model, tok, ["ka talu tri fuso peto vela"]) == [
        "the man walks three feet fast"]  # another subject is left alone
    patch.revert(model)
    assert translate(model, tok, prompts[:1]) == ["the dog runs two miles"]
