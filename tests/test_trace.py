"""Causal tracing (massedit.trace): ROME's locating experiment on toy-world and tiny models."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml

from massedit.engine.hparams import EditHparams
from massedit.models.adapters import get_adapter, get_module
from massedit.testing import TINY_MODEL_TYPES, TOY_EDIT_LAYERS, tiny_model, toy_world_model
from massedit.testing.tiny_seq2seq import TINY_SEQ2SEQ_TYPES, tiny_seq2seq_model
from massedit.trace import (
    FactTrace,
    average_traces,
    parse_noise,
    plot_average,
    plot_trace,
    save_trace,
    suggest_layers,
    trace_fact,
)
from massedit.trace.average import CATEGORIES, token_categories
from massedit.trace.restore import is_out_of_memory
from massedit.trace.suggest import best_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_PROMPT = ("The Eiffel Tower is located in the city of", "Eiffel Tower")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return toy_world_model("gpt2")


def trace_toy_facts(model, tok, world) -> list[FactTrace]:
    """Full hidden/mlp traces of six facts the toy model knows (three subjects, two relations)."""
    traces = []
    for fact in world.facts[:6]:
        prompt = fact["templates"][0].format(fact["subject"])
        traces.append(trace_fact(model, tok, prompt, fact["subject"], kinds=("hidden", "mlp"),
                                 window=1, samples=10, target=fact["object"]))
    return traces


@pytest.fixture(scope="module")
def toy_traces(toy):
    return trace_toy_facts(*toy)


def recovery_scores(traces: list[FactTrace]) -> dict[str, float]:
    """Per fact: clean and corrupted probabilities, the share of the clean probability that
    restoring the subject's last token brings back at the edit layers (and at the next token),
    and the last layer's full recovery; the extremes over the facts."""
    layers = list(TOY_EDIT_LAYERS["gpt2"])  # where edits work: the facts' layers
    rows = []
    for trace in traces:
        span = trace.clean_prob - trace.corrupted_prob
        scores = trace.kinds["hidden"].scores  # (tokens, layers)
        last = trace.subject_range[1] - 1
        recovered = (scores[last, layers] - trace.corrupted_prob) / span  # (layers,)
        # The token after the subject was never corrupted: restoring it changes nothing there.
        unrelated = (scores[last + 1, layers] - trace.corrupted_prob) / span
        rows.append({"predicted": float(trace.answer_predicted), "clean": trace.clean_prob,
                     "corrupted_share": trace.corrupted_prob / trace.clean_prob,
                     "recovered_min": float(recovered.min()),
                     "recovered_mean": float(recovered.mean()),
                     "unrelated_max": float(unrelated.abs().max()),
                     "last_layer_error": abs(float(scores[-1, -1]) - trace.clean_prob)})
    worst = {"predicted": min, "clean": min, "corrupted_share": max, "recovered_min": min,
             "unrelated_max": max, "last_layer_error": max}
    out = {name: pick(r[name] for r in rows) for name, pick in worst.items()}
    out["recovered_mean"] = sum(r["recovered_mean"] for r in rows) / len(rows)
    return out


def test_restoring_the_subjects_last_token_where_facts_live_recovers_the_answer(toy_traces):
    scores = recovery_scores(toy_traces)
    # Over toy models of training seeds 0, 1, 2 (benchmarks/toy_thresholds.py trace): clean
    # p ≥ 0.99, corrupted 0.35-0.45 of it, recovered at layers 1-2 at least 0.34-0.55 per fact
    # and 0.67-0.79 on average, the next token's restoration ≤ 0.012-0.036.
    assert scores["predicted"] == 1.0 and scores["clean"] > 0.8  # facts the model knows
    assert scores["corrupted_share"] < 0.5  # the noise does hide the subject
    assert scores["recovered_min"] > 0.25  # each fact: a large share comes back
    assert scores["unrelated_max"] < 0.05
    # At the last layer only the last token's state reaches the output: full recovery.
    assert scores["last_layer_error"] < 1e-4
    assert scores["recovered_mean"] > 0.5  # on average, most of the clean probability


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_batched_restorations_equal_one_restoration_per_forward_pass(model_type, caplog):
    """Batched, replayed lower blocks and suffix-only passes (positions before a restoration's
    first token come from the corrupted run's cache) give the plain one-per-pass tables."""
    model, tok = tiny_model(model_type, n_layer=3)
    kwargs = dict(kinds=("hidden", "mlp", "attn"), window=2, samples=3, seed=1)
    with caplog.at_level(logging.DEBUG, logger="massedit.trace.restore"):
        batched = trace_fact(model, tok, *TINY_PROMPT, batch_size=7, **kwargs)
    assert any("from each restoration's first token on" in r.getMessage()
               for r in caplog.records)  # the suffix passes were checked and used
    single = trace_fact(model, tok, *TINY_PROMPT, batch_size=1, reuse_prefix=False, **kwargs)
    assert batched.corrupted_prob == pytest.approx(single.corrupted_prob, abs=1e-6)
    n_tokens = len(batched.tokens)
    for kind in kwargs["kinds"]:
        assert batched.kinds[kind].scores.shape == (n_tokens, 3)
        torch.testing.assert_close(batched.kinds[kind].scores, single.kinds[kind].scores,
                                   atol=1e-6, rtol=1e-5)
    # Restoring every layer's block output at the last token restores the clean output.
    assert batched.kinds["hidden"].scores[-1, -1] == pytest.approx(batched.clean_prob, abs=1e-5)


@pytest.mark.parametrize("model_type", TINY_SEQ2SEQ_TYPES)
def test_encoder_decoder_models_are_traced_in_the_encoder(model_type):
    model, tok = tiny_seq2seq_model(model_type)
    adapter = get_adapter(model)
    first_rows = {}  # stack -> layer 0's input rows seen in corrupted passes

    def record(stack):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[0] > 1:  # corrupted passes (the clean one has a single row)
                first_rows.setdefault(stack, []).append(hidden)
        return hook

    handles = [
        get_module(model, adapter.stack(s).block_name(0)).register_forward_pre_hook(
            record(s), with_kwargs=True)
        for s in ("encoder", "decoder")
    ]
    # A 4-token answer: the decoder reads 4 positions, as many as the subject's end position.
    kwargs = dict(kinds=("hidden", "mlp", "attn"), window=2, samples=3, noise=2.0,
                  target="Paris France is located")
    try:
        batched = trace_fact(model, tok, *TINY_PROMPT, batch_size=5, **kwargs)
    finally:
        for h in handles:
            h.remove()
    single = trace_fact(model, tok, *TINY_PROMPT, batch_size=1, **kwargs)
    depth = adapter.stack("encoder").depth(model.config)
    for kind in kwargs["kinds"]:
        assert batched.kinds[kind].scores.shape == (len(batched.tokens), depth)
        torch.testing.assert_close(batched.kinds[kind].scores, single.kinds[kind].scores,
                                   atol=1e-6, rtol=1e-5)
    # The noise reaches the encoder's inputs (rows differ) and never the decoder's own inputs.
    assert all(not torch.equal(h[0], h[1]) for h in first_rows["encoder"])
    assert all(torch.equal(h, h[:1].expand_as(h)) for h in first_rows["decoder"])


def test_out_of_memory_falls_back_to_smaller_batches(caplog):
    model, tok = tiny_model("gpt2", n_layer=2)
    samples = 2
    reference = trace_fact(model, tok, *TINY_PROMPT, kinds=("hidden",), samples=samples)

    def refuse_big_batches(_module, args):
        if args[0].shape[0] > 3 * samples:  # more than 3 restorations per pass
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = model.transformer.wte.register_forward_pre_hook(refuse_big_batches)
    try:
        with caplog.at_level(logging.WARNING, logger="massedit.trace"):
            small = trace_fact(model, tok, *TINY_PROMPT, kinds=("hidden",), samples=samples,
                               batch_size=16)
    finally:
        handle.remove()
    assert "out of memory" in caplog.text and "retrying with" in caplog.text
    torch.testing.assert_close(small.kinds["hidden"].scores, reference.kinds["hidden"].scores,
                               atol=1e-6, rtol=1e-5)


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory():
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 20 MiB"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_noise_is_seeded_and_scaled():
    model, tok = tiny_model("llama", n_layer=2)
    kw = dict(kinds=("hidden",), samples=2)
    a = trace_fact(model, tok, *TINY_PROMPT, seed=3, **kw)
    b = trace_fact(model, tok, *TINY_PROMPT, seed=3, **kw)
    c = trace_fact(model, tok, *TINY_PROMPT, seed=4, **kw)
    assert torch.equal(a.kinds["hidden"].scores, b.kinds["hidden"].scores)
    assert not torch.equal(a.kinds["hidden"].scores, c.kinds["hidden"].scores)
    absolute = trace_fact(model, tok, *TINY_PROMPT, noise=0.25, **kw)
    assert absolute.noise_scale == 0.25
    assert parse_noise("3sd") == (3.0, True) and parse_noise("0.1") == (0.1, False)
    with pytest.raises(ValueError, match="3sd"):
        parse_noise("lots")


def test_default_answer_is_the_greedy_token_and_a_wrong_target_warns(caplog):
    model, tok = tiny_model("gpt2", n_layer=2)
    greedy = trace_fact(model, tok, *TINY_PROMPT, kinds=("hidden",), samples=2)
    assert greedy.answer_predicted and len(greedy.answer_ids) == 1
    logits = model(**tok(TINY_PROMPT[0], return_tensors="pt")).logits[0, -1]
    assert greedy.answer_ids[0] == int(logits.argmax())
    wrong = "Rome" if greedy.answer != "Rome" else "Paris"
    with caplog.at_level(logging.WARNING, logger="massedit.trace"):
        forced = trace_fact(model, tok, *TINY_PROMPT, target=f"{wrong} France",
                            kinds=("hidden",), samples=2)
    assert not forced.answer_predicted and len(forced.answer_ids) == 2
    assert "does not predict" in caplog.text


def test_subject_must_be_in_the_prompt():
    model, tok = tiny_model("gpt2", n_layer=2)
    with pytest.raises(ValueError, match="subject 'Big Ben'"):
        trace_fact(model, tok, "The Eiffel Tower is in", "Big Ben")
    with pytest.raises(ValueError, match="unknown trace kind"):
        trace_fact(model, tok, *TINY_PROMPT, kinds=("mlp", "residual"))


def test_subject_positions_follow_offsets_and_placeholders():
    model, tok = tiny_model("llama", n_layer=2)  # the tokenizer adds a BOS
    trace = trace_fact(model, tok, "The {} is located in", "Eiffel Tower", kinds=("hidden",),
                       samples=1)
    assert trace.tokens[0] == "<bos>" and trace.subject_range == (2, 4)
    assert [t for t in trace.token_labels() if t.endswith("*")] == ["Eiffel*", "Tower*"]


def test_table_files_and_heatmap(toy_traces, tmp_path):
    trace = toy_traces[0]
    json_path, csv_path = save_trace(trace, tmp_path)
    again = FactTrace.from_dict(json.loads(json_path.read_text()))
    assert again.answer == trace.answer and again.subject_range == trace.subject_range
    torch.testing.assert_close(again.kinds["mlp"].scores, trace.kinds["mlp"].scores)
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("kind,window,layer,position,token,is_subject,prob")
    assert len(lines) - 1 == 2 * len(trace.tokens) * trace.n_layers
    png = plot_trace(trace, tmp_path / "heatmap.png", model_name="toy")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_token_categories_follow_rome_figure_two():
    cats = token_categories((1, 4), 8)  # "A [B C D] e f g h"
    assert cats == {
        "first subject token": [1], "middle subject tokens": [2],
        "last subject token": [3], "first subsequent token": [4],
        "further tokens": [5, 6], "last token": [7],
    }
    assert token_categories((0, 2), 3)["middle subject tokens"] == []
    assert token_categories((0, 2), 2)["first subsequent token"] == []


def test_average_over_facts_and_its_plot(toy_traces, tmp_path):
    avg = average_traces(toy_traces)
    assert avg.n_facts == 6
    mlp = avg.kinds["mlp"]
    assert mlp.prob.shape == (len(CATEGORIES), toy_traces[0].n_layers)
    # Two-token subjects have no middle tokens; "X lives in" has no token between the first
    # subsequent one and the last; "The home of X is" is not among the first phrasings.
    assert mlp.counts == (6, 0, 6, 6, 0, 6)
    last_subject = CATEGORIES.index("last subject token")
    expected = torch.stack([
        t.kinds["hidden"].scores[t.subject_range[1] - 1] - t.corrupted_prob for t in toy_traces
    ]).mean(0)
    torch.testing.assert_close(avg.kinds["hidden"].effect[last_subject], expected)
    png = plot_average(avg, tmp_path / "average.png", model_name="toy")
    assert png.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no traces"):
        average_traces([])


def suggest_toy_layers(model, tok, world):
    facts = [
        {"prompt": f["templates"][0].format(f["subject"]), "subject": f["subject"],
         "attribute": f["object"]}
        for f in world.facts[:4]
    ]
    return suggest_layers(model, tok, facts, n_spread=3, samples=5)


def test_suggest_layers_picks_the_mlp_with_the_largest_effect(toy):
    suggestion = suggest_toy_layers(*toy)
    effects = torch.tensor(suggestion.effects)
    assert suggestion.n_facts == 4 and len(effects) == 6
    assert suggestion.rome_layer == int(effects.argmax())
    # Over training seeds 0, 1, 2 (benchmarks/toy_thresholds.py trace): MLP 0, effect 0.56-0.61.
    assert effects[suggestion.rome_layer] > 0.3  # restoring that MLP brings much of p back
    assert suggestion.memit_layers == best_run(suggestion.effects, 3)
    assert suggestion.rome_layer in suggestion.memit_layers
    # The snippet is a valid preset: it loads as hyper-parameters with the suggested layers.
    for method, layers in (("rome", (suggestion.rome_layer,)),
                           ("memit", suggestion.memit_layers)):
        data = yaml.safe_load(suggestion.preset_yaml(method, "toy"))
        assert EditHparams().replace(**data).layers == layers


def test_best_run_is_the_window_with_the_largest_sum():
    assert best_run([0.0, 0.1, 0.5, 0.4, 0.0, 0.3], 2) == (2, 3)
    assert best_run([0.2, 0.1], 5) == (0, 1)
