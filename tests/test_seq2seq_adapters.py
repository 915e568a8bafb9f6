"""Encoder-decoder adapters on tiny T5 / gated T5 / BART / Marian models (docs/design.md §10.1)."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from massedit import Editor, EditRequest, StatsSpec
from massedit.engine.requests import RequestError
from massedit.models.adapters import get_adapter, get_module, read_weight
from massedit.seq2seq import Seq2SeqAdapter, edit_sites, find_site
from massedit.seq2seq.pair_edit import PairEditor, PairSettings
from massedit.seq2seq.pair_keys import pair_keys_and_residuals
from massedit.seq2seq.pairs import CheckInput, EditPair
from massedit.seq2seq.sweep import SweepRow, best_site, edit_at_best_site, sweep_sites
from massedit.testing import TINY_WORDS, tiny_model
from massedit.testing.tiny_seq2seq import TINY_SEQ2SEQ_TYPES, tiny_seq2seq_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


PAIRS = [
    EditPair("The Eiffel Tower is located in Paris", "The Eiffel Tower is in Rome", "Eiffel Tower"),
    EditPair("Michael Jordan plays basketball", "Michael Jordan plays tennis", "plays"),
]


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    rng = random.Random(0)
    words = list(TINY_WORDS)
    return [(" ".join(rng.choice(words) for _ in range(10)),
             " ".join(rng.choice(words) for _ in range(10))) for _ in range(300)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("model_type", TINY_SEQ2SEQ_TYPES)
def test_sites_shapes_and_stacks(model_type):
    model, _ = tiny_seq2seq_model(model_type)
    adapter = get_adapter(model)
    assert isinstance(adapter, Seq2SeqAdapter) and adapter.encoder_decoder
    sites = edit_sites(model)
    assert [s.label for s in sites] == ["encoder.0", "encoder.1", "encoder.2",
                                        "decoder.0", "decoder.1"]
    for site in sites:
        module = get_module(model, site.name)
        assert isinstance(module, nn.Linear)
        # Linear layout (d_out, d_in) = (width, MLP width): never the transpose.
        assert tuple(read_weight(module, adapter.layout).shape) == (32, 96)
        assert (".decoder." in f".{site.name}") == (site.stack == "decoder")
    assert find_site(model, "dec1").name == sites[-1].name
    with pytest.raises(ValueError, match="no edit site"):
        find_site(model, "encoder.9")


@pytest.mark.parametrize("model_type", TINY_SEQ2SEQ_TYPES)
def test_equality_pair_edit_writes_keys_exactly(model_type, corpus):
    model, tok = tiny_seq2seq_model(model_type)
    editor = PairEditor(model, tok, corpus=corpus)
    for site in (find_site(model, "encoder.1"), find_site(model, "decoder.1")):
        before = read_weight(get_module(model, site.name), "linear").clone()
        solution = editor.solve(PAIRS, site)
        p = solution.problem
        w, k, r = p.weight.double(), p.keys.double(), p.residual.double()
        assert tuple(k.shape) == (96, 2) and tuple(r.shape) == (32, 2)
        assert _rel((w + solution.delta.matrix().double()) @ k, w @ k + r) < 1e-6
        patch = editor.edit(PAIRS, site)
        written = read_weight(get_module(model, site.name), "linear")
        assert torch.equal(written, (before + patch.deltas[0].delta.matrix()).to(written.dtype))
        patch.revert(model)
        assert torch.equal(read_weight(get_module(model, site.name), "linear"), before)


def test_encoder_edit_gives_negative_span_the_positive_value(corpus):
    model, tok = tiny_seq2seq_model("marian")
    site = find_site(model, "encoder.2")
    editor = PairEditor(model, tok, corpus=corpus, settings=PairSettings(reduce="last"))
    keys, residual = pair_keys_and_residuals(model, tok, PAIRS, site, "last")
    weight = read_weight(get_module(model, site.name), "linear").double()
    bias = get_module(model, site.name).bias.double()
    value_pos = weight @ keys.double() + bias[:, None] + residual.double()  # (d_out, n)
    editor.edit(PAIRS, site)
    # The site's input at this layer is unchanged by its own edit: its new output is the value.
    k_after, r_after = pair_keys_and_residuals(model, tok, PAIRS, site, "last")
    assert torch.allclose(k_after, keys)
    new_w = read_weight(get_module(model, site.name), "linear").double()
    assert _rel(new_w @ keys.double() + bias[:, None], value_pos) < 1e-5


def test_edit_dropout_is_seeded_recorded_and_exact(corpus):
    model, tok = tiny_seq2seq_model("t5")
    settings = PairSettings(edit_dropout=0.5, dropout_seed=3)
    editor = PairEditor(model, tok, corpus=corpus, settings=settings)
    a = editor.solve(PAIRS, "encoder.1")
    b = editor.solve(PAIRS, "encoder.1")
    info = a.delta.info["edit_dropout"]
    assert info["p"] == 0.5 and info["seed"] == 3 and 0 < info["kept_units"] < 96
    assert torch.equal(a.delta.v, b.delta.v)  # same seed, same units dropped
    dropped = (a.delta.v == 0).all(1)  # (d_in,)
    assert int((~dropped).sum()) == info["kept_units"]
    p = a.problem
    w, k, r = p.weight.double(), p.keys.double(), p.residual.double()
    assert _rel((w + a.delta.matrix().double()) @ k, w @ k + r) < 1e-6  # "exact" rescale
    patch = editor.edit(PAIRS, "encoder.1")
    assert patch.deltas[0].delta.info["edit_dropout"]["seed"] == 3


def test_bad_pairs_and_models_fail_clearly(corpus):
    with pytest.raises(RequestError, match="does not occur in positive_source"):
        EditPair("he ran 5 yards", "she walked", "yards", case_id=7)
    model, tok = tiny_seq2seq_model("bart")
    editor = PairEditor(model, tok, corpus=corpus)
    # "Paris." vs "Paris": the span's characters cover different tokens in the two sources.
    bad = EditPair("in Paris.", "in Parisians", "Paris", case_id="row 2")
    with pytest.raises(RequestError, match="row 2.*tokenise the span"):
        editor.solve([bad], "encoder.0")
    decoder_only, dtok = tiny_model("llama")
    with pytest.raises(ValueError, match="decoder-only"):
        PairEditor(decoder_only, dtok, corpus=corpus)


@pytest.mark.parametrize("model_type", ["t5", "bart"])
def test_subject_edit_through_the_engine(model_type, tiny_corpus, stats_dir):
    """Subject edits: keys in the encoder, targets teacher-forced through the decoder."""
    model, tok = tiny_seq2seq_model(model_type)
    stats = StatsSpec(corpus=str(tiny_corpus), cache_dir=str(stats_dir))
    editor = Editor(model, tok, method="emmet", stats=stats, keep_problems=True, progress=False,
                    layers=(0, 1), v_num_grad_steps=4, context_lengths=((2, 4),),
                    stats_tokens_per_width=30)
    editor.edit([EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris")])
    assert [p.layer for p, _ in editor.solved] == [0, 1]
    for problem, delta in editor.solved:
        w, k, r = problem.weight.double(), problem.keys.double(), problem.residual.double()
        assert _rel((w + delta.matrix().double()) @ k, w @ k + r) < 1e-6
    assert editor.solved[0][0].weight.shape == (32, 96)


def test_sweep_ranks_by_efficacy_then_bleu_and_skips_refused_sites():
    rows = [SweepRow("encoder.0", 100.0, 80.0, 0.1), SweepRow("encoder.1", 100.0, 95.0, 0.9),
            SweepRow("decoder.0", 90.0, 99.0, 0.01), SweepRow("decoder.1", 0.0, None, None, "x")]
    assert best_site(rows) == "encoder.1"  # equal efficacy: the higher BLEU wins
    assert sorted(rows, key=SweepRow.rank_key)[-1].site == "decoder.1"  # refused: last
    with pytest.raises(ValueError, match="no usable site.*encoder.0: x"):
        best_site([SweepRow("encoder.0", 0.0, None, None, "x")])


def test_sweep_records_refused_updates_instead_of_stopping(corpus):
    model, tok = tiny_seq2seq_model("marian")
    editor = PairEditor(model, tok, corpus=corpus, max_update_ratio=1e-12)
    checks = [CheckInput("The Eiffel Tower is located in Paris", forbidden="Paris")]
    rows = sweep_sites(editor, PAIRS[:1], checks)
    assert len(rows) == 5 and all("weight's own norm" in r.refused for r in rows)
    with pytest.raises(ValueError, match="no usable site"):
        edit_at_best_site(editor, PAIRS[:1], checks)


def test_seq2seq_subject_sources_keep_their_eos():
    """T5/Marian were trained on sources ending in </s>: subject keys and targets keep it, while
    decoder-only prompts still drop a trailing special token (it would precede the target)."""
    from massedit.engine.keys import encode_rows
    from massedit.targets.rows import build_rows

    model, tok = tiny_seq2seq_model("t5")
    req = EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris")
    assert encode_rows(tok, [req], [""], keep_eos=True)[0].ids[-1] == tok.eos_token_id
    assert encode_rows(tok, [req], [""])[0].ids[-1] != tok.eos_token_id
    rows = build_rows(model, tok, [req], ["", "Hello. "], "cpu")
    ids, mask = rows.batch["input_ids"], rows.batch["attention_mask"]  # (rows, src_len)
    last = ids[torch.arange(len(ids)), mask.sum(1) - 1]
    assert (last == tok.eos_token_id).all()
