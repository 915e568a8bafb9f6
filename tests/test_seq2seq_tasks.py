"""The NMT editing tasks on small trained seq2seq models (docs/design.md §7, §10.2).

The models are trained once on the toy NMT world (one to three minutes each on one thread) and
cached under ``$MASSEDIT_CACHE`` like the toy-world models.
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


# Per architecture, the planted error a pair edit fixes most reliably, and the share of its check
# inputs (%) the edit must fix. Over models of training seeds 0, 1, 2 (benchmarks/toy_thresholds.py
# nmt_all_tasks): marian poison 100 on each; bart poison 70-100 (memorisation 0-100,
# hallucination and word 0 on some); t5 hallucination 100 on each (its one check input;
# memorisation 10-100, word 0-10). Bars: one check input below the worst; t5's, with a single
# input, held on all three.
TASKS = {"marian": "poison", "bart": "poison", "t5": "hallucination"}
FIXED = {"marian": 90, "bart": 60, "t5": 100}


def planted_error_rates(arch: str, train_seed: int | None = None) -> dict[str, float]:
    """Efficacy (%) of each task's check inputs on the unedited model, and held-out BLEU."""
    model, tok, world = nmt_world_model(arch, train_seed=train_seed)
    rates = {name: efficacy(model, tok, task.checks).rate for name, task in world.tasks.items()}
    return {**rates, "bleu": bleu(model, tok, world.heldout).score}


def pair_edit_scores(arch: str, train_seed: int | None = None,
                     task: str | None = None) -> dict[str, float]:
    """The pair edit of the arch's task (or ``task``) at the best site: efficacy (%) before,
    after and after revert, BLEU on held-out pairs before and its drop after."""
    model, tok, world = nmt_world_model(arch, train_seed=train_seed)
    task = world.tasks[task or TASKS[arch]]
    before = efficacy(model, tok, task.checks).rate
    dev, test = world.heldout[:50], world.heldout[50:]  # the sweep ranks by BLEU on dev only
    bleu_before = bleu(model, tok, test).score
    settings = PairSettings(value="stream", edit_dropout=0.1, dropout_rescale="inverse")
    editor = PairEditor(model, tok, corpus=world.train[:1000], settings=settings)
    patch, rows = edit_at_best_site(editor, [task.pair], task.checks, bleu_pairs=dev)
    assert len(rows) == 5 and patch.metadata["sweep"]
    assert all(r.bleu is not None for r in rows)
    assert patch.deltas[0].delta.info["edit_dropout"]["p"] == 0.1
    after, bleu_after = efficacy(model, tok, task.checks).rate, bleu(model, tok, test).score
    patch.revert(model)
    return {"before": before, "after": after, "reverted": efficacy(model, tok, task.checks).rate,
            "bleu_before": bleu_before, "bleu_drop": bleu_before - bleu_after}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(TASKS))
def test_toy_models_learned_the_planted_errors(arch):
    """Recall of the planted errors: each model fails the check inputs of at least three of the
    four tasks (T5 learns the sentence-initial poison marker only partly: no absolute
    positions) while translating clean held-out text well."""
    # Over training seeds 0, 1, 2 (benchmarks/toy_thresholds.py nmt_learned): every model makes
    # every planted error (check inputs 0% right) except T5's poison (60-100%); BLEU marian and
    # bart 100, t5 92-98.
    scores = planted_error_rates(arch)
    rates = {name: rate for name, rate in scores.items() if name != "bleu"}
    assert sum(rate <= 20 for rate in rates.values()) >= 3, rates
    assert scores["bleu"] >= 85


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(TASKS))
def test_pair_edit_fixes_a_planted_error(arch):
    scores = pair_edit_scores(arch)
    assert scores["before"] <= 20  # the model learned the planted error
    assert scores["bleu_before"] >= 85  # and it translates clean text well
    assert scores["after"] >= FIXED[arch]
    # BLEU on held-out pairs drops by at most 0.46 over the three models (often rises).
    assert scores["bleu_drop"] <= 2.0
    assert scores["reverted"] <= 20


SUBJECT_PROMPTS = ("ka dofa eno milo ruma", "ka dofa tri fuso peto vela",
                   "ka dofa sila sul ka mesi")
OTHER_SUBJECT = "ka talu tri fuso peto vela"


def subject_edit_translations(workdir, train_seed: int | None = None) -> dict[str, list[str]]:
    """ROME at encoder layer 1 rewrites the subject "dofa" (dog) as "the cat" on the toy Marian
    model: translations of three prompts with that subject and one without, before, after and
    after revert."""
    model, tok, world = nmt_world_model("marian", train_seed=train_seed)
    corpus = workdir / "sources.txt"
    # One source per document: statistics over sentence-long sources ending in </s>, as the model
    # was trained (one long document chunked to the model's length gave keys it never saw).
    corpus.write_text("\n\n".join(src for src, _ in world.train[:1500]))
    # Layer 1: the encoder mixes in the rest of the sentence layer by layer, and at layer 2 the
    # edit of one sentence's "dofa" missed the other sentences on one of three trained models.
    editor = Editor(model, tok, method="rome", progress=False, layers=(1,), context_lengths=(),
                    v_num_grad_steps=25,
                    stats=StatsSpec(corpus=str(corpus), cache_dir=str(workdir / "stats")))
    prompts = [*SUBJECT_PROMPTS, OTHER_SUBJECT]
    before = translate(model, tok, prompts)
    patch = editor.edit([EditRequest("ka {} eno milo ruma", "dofa", "the cat", "the dog")])
    after = translate(model, tok, prompts)
    patch.revert(model)
    return {"before": before, "after": after, "reverted": translate(model, tok, prompts)}


def subject_edit_checks(out: dict[str, list[str]]) -> dict[str, bool]:
    """What the test requires of :func:`subject_edit_translations`, check by check."""
    return {
        "knows the dog": all(t.startswith("the dog ") for t in out["before"][:3]),
        "edited prompt": out["after"][0] == "the cat runs two miles",
        "other phrasings follow": all(t.startswith("the cat ") for t in out["after"][1:3]),
        "other subject kept": out["after"][3] == "the man walks three feet fast",
        "reverted": out["reverted"][0] == "the dog runs two miles",
    }


@pytest.mark.slow
def test_subject_edit_flips_a_word_of_a_toy_translation_model(tmp_path):
    # Every check holds on the models of training seeds 0, 1, 2 (benchmarks/toy_thresholds.py
    # nmt_subject_edit).
    out = subject_edit_translations(tmp_path)
    failed = [name for name, ok in subject_edit_checks(out).items() if not ok]
    assert not failed, (failed, out)
