"""The test kit itself: word tokenizer, tiny models of every family, the toy world."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import massedit.testing.toyworld as toyworld
from massedit.models.adapters import get_adapter, get_module, read_weight
from massedit.testing import (
    TINY_MODEL_TYPES,
    ToyWorld,
    TrainSpec,
    WorldSpec,
    build_word_tokenizer,
    tiny_gpt2_pair,
    tiny_model,
    toy_accuracy,
    toy_world_model,
    train_toy_model,
)
from massedit.testing.model_cache import TRAIN_THREADS, training_fingerprint

WORDS = ["The", "Eiffel", "Tower", "is", "in", "Paris", "Rome"]


# --- tokenizer ---------------------------------------------------------------------------------


def test_word_tokenizer_offsets_and_spaces():
    tok = build_word_tokenizer(WORDS)
    text = "The Eiffel Tower is in Paris."
    enc = tok(text, return_offsets_mapping=True)
    pieces = [text[a:b] for a, b in enc["offset_mapping"]]
    assert pieces == ["The", "Eiffel", "Tower", "is", "in", "Paris", "."]
    assert tok.unk_token_id not in enc["input_ids"]  # punctuation is in the vocabulary
    # A leading space does not change the token: targets are scored as " " + target.
    assert tok(" Paris", add_special_tokens=False)["input_ids"] == tok("Paris")["input_ids"]
    assert tok("Berlin")["input_ids"] == [tok.unk_token_id]
    assert len({tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id}) == 4


def test_word_tokenizer_bos_and_round_trip(tmp_path):
    plain = build_word_tokenizer(WORDS)
    with_bos = build_word_tokenizer(WORDS, add_bos=True, padding_side="left")
    text = "The Eiffel Tower is in Rome"
    assert plain(text)["input_ids"][0] != plain.bos_token_id
    enc = with_bos(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    assert enc["input_ids"][0] == with_bos.bos_token_id
    assert enc["input_ids"][1:] == plain(text)["input_ids"]
    assert enc["special_tokens_mask"] == [1] + [0] * 6
    assert enc["offset_mapping"][0] == (0, 0) and enc["offset_mapping"][-1] == (23, 27)

    with_bos.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    again = loaded(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    assert again["input_ids"] == enc["input_ids"]  # <bos> once, not twice
    assert again["offset_mapping"] == enc["offset_mapping"]
    assert again["special_tokens_mask"] == enc["special_tokens_mask"]
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token, loaded.unk_token) == (
        "<pad>", "<bos>", "<eos>", "<unk>",
    )
    batch = loaded(["Rome", "The Tower is in Rome"], padding=True)
    assert loaded.padding_side == "left"
    assert batch["input_ids"][0][0] == loaded.pad_token_id


# --- tiny models -------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_tiny_model_builds_and_runs(model_type):
    model, tok = tiny_model(model_type)
    assert model.config.model_type == model_type
    assert not model.training and model.dtype == torch.float32
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id

    adapter = get_adapter(model)
    d_in, d_out = adapter.mlp_width(model.config), adapter.width(model.config)
    assert d_in != d_out  # a transposed weight can never pass a shape check by accident
    for layer in range(adapter.depth(model.config)):
        site = get_module(model, adapter.site_name(layer))
        assert tuple(read_weight(site, adapter.layout).shape) == (d_out, d_in)

    enc = tok(["The Eiffel Tower is located in", "Paris is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (2, enc["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    assert tok.unk_token_id not in enc["input_ids"][0].tolist()

    same, _ = tiny_model(model_type)
    other, _ = tiny_model(model_type, seed=1)
    pairs = list(zip(model.named_parameters(), same.parameters(), strict=True))
    assert all(torch.equal(p, q) for (_, p), q in pairs)  # deterministic from the seed
    assert any(
        not torch.equal(p, r) for p, r in zip(model.parameters(), other.parameters(), strict=True)
    )


def test_gpt2_pair_is_the_same_function_in_two_layouts():
    conv, linear, tok = tiny_gpt2_pair()
    a, b = get_adapter(conv), get_adapter(linear)
    assert (a.layout, b.layout) == ("conv1d", "linear")
    assert linear.config.model_type == "gpt2_linear"
    for layer in range(a.depth(conv.config)):
        site_a = get_module(conv, a.site_name(layer))
        site_b = get_module(linear, b.site_name(layer))
        assert isinstance(site_b, torch.nn.Linear)
        assert torch.equal(read_weight(site_a, a.layout), read_weight(site_b, b.layout))
    enc = tok(["The Eiffel Tower is located in", "Paris is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(linear(**enc).logits, conv(**enc).logits, atol=1e-6, rtol=0)


# --- toy world ---------------------------------------------------------------------------------


def test_toy_world_requests_are_well_formed():
    world = ToyWorld.generate()
    assert world == ToyWorld.generate()  # deterministic
    tok = build_word_tokenizer(world.words())
    assert tok.unk_token_id not in tok(world.corpus_text())["input_ids"]
    subjects = {f["subject"] for f in world.facts}
    assert all(len(s.split()) == 2 for s in subjects)

    requests = world.requests(20, seed=3)
    assert len({r.subject for r in requests}) > 1
    assert requests == world.requests(20, seed=3)
    truth = {(f["subject"], f["relation"]): f["object"] for f in world.facts}
    for r in requests:
        fact = world.facts[r.case_id]
        assert (r.subject, r.target_true) == (fact["subject"], fact["object"])
        assert r.target_new != r.target_true
        assert r.target_new in world.objects[fact["relation"]]
        templates = world.train_templates[fact["relation"]]
        assert r.prompt == templates[0]
        assert sorted(r.paraphrases) == sorted(t.format(r.subject) for t in templates[1:])
        assert r.neighborhood
        for prompt in r.neighborhood:
            assert r.subject not in prompt
            other = next(s for s in subjects if s in prompt)
            assert truth[(other, fact["relation"])] == r.target_true  # CounterFact-style
        # every target is a single token, so greedy accuracy is an exact test
        assert len(tok(" " + r.target_new, add_special_tokens=False)["input_ids"]) == 1


def test_toy_world_cache_is_written_atomically_and_reloaded(tmp_path):
    spec = TrainSpec(steps=3, eval_every=3, batch_size=4)
    model, tok, world = toy_world_model(cache_dir=tmp_path, spec=spec)
    entries = list((tmp_path / "toyworld").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary left over
    assert (entries[0] / "toyworld.json").is_file()
    again, tok2, world2 = toy_world_model(cache_dir=tmp_path, spec=spec)
    assert world2 == world and tok2.get_vocab() == tok.get_vocab()
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
    record = json.loads((entries[0] / "toyworld.json").read_text())
    assert record["fingerprint"] == training_fingerprint()
    assert record["report"]["threads"] == TRAIN_THREADS


def test_toy_training_is_bit_reproducible_whatever_the_callers_threads(monkeypatch):
    """Reductions split by thread give other sums: without the fixed training threads these
    few steps already end in other weights on one and on two threads (and a busy machine used
    to mean fewer threads). The caller's thread count and random state are left as they were."""
    world = ToyWorld.generate()
    spec = TrainSpec(steps=4, eval_every=4, batch_size=8, n_layer=2)
    trained = []
    previous = torch.get_num_threads()
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            torch.manual_seed(threads)  # another random state for each call
            state = torch.random.get_rng_state()
            model, _, report = train_toy_model(world, spec)
            assert torch.get_num_threads() == threads
            assert torch.equal(torch.random.get_rng_state(), state)
            assert report["threads"] == TRAIN_THREADS
            trained.append(model.state_dict())
    finally:
        torch.set_num_threads(previous)
    assert not torch.are_deterministic_algorithms_enabled()  # restored
    differ = [k for k, v in trained[0].items() if not torch.equal(v, trained[1][k])]
    assert not differ, differ
    # What decides the weights besides the recipe (torch version, CPU instruction set, threads)
    # is part of the cache key.
    key = toyworld._spec_hash(WorldSpec(), spec)
    monkeypatch.setattr(toyworld, "training_fingerprint",
                        lambda: {**training_fingerprint(), "torch": "0.0"})
    assert toyworld._spec_hash(WorldSpec(), spec) != key


def test_toy_world_cache_leaves_nothing_half_written(tmp_path, monkeypatch):
    import massedit.atomic as atomic

    monkeypatch.setenv("MASSEDIT_CACHE", str(tmp_path))
    spec = TrainSpec(steps=2, eval_every=2, batch_size=2)

    def interrupted(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", interrupted)  # the cache folder's rename
    with pytest.raises(OSError, match="disk full"):
        toy_world_model(spec=spec)
    assert list((tmp_path / "toyworld").iterdir()) == []  # the temporary folder is gone
    with pytest.raises(ValueError, match="arch"):
        toy_world_model("llama", spec=spec)


def memorisation_scores(arch: str, train_seed: int | None = None) -> dict[str, float]:
    """Recall of every fact in every phrasing, of 300 after a context prefix, and of another
    subject's answers (same relation) as if they were the fact's."""
    model, tok, world = toy_world_model(arch, train_seed=train_seed)
    assert model.config.model_type == arch and not model.training
    prompts, answers = world.prompts()
    assert len(prompts) == len(world.facts) * 3
    prefix = world.corpus_text().split("\n")[0] + " "
    # Prompts come 3 phrasings x 2 relations per subject: shifting by 6 pairs each prompt with
    # another subject's answer of the same relation.
    shifted = answers[6:] + answers[:6]
    return {"recall": toy_accuracy(model, tok, prompts, answers),
            "after_prefix": toy_accuracy(model, tok, [prefix + p for p in prompts[:300]],
                                         answers[:300]),
            "other_answers": toy_accuracy(model, tok, prompts, shifted)}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_toy_world_model_memorises_its_facts(arch):
    # First run trains (one to two minutes on one CPU thread) and caches; later runs load it.
    scores = memorisation_scores(arch)
    # Over training seeds 0, 1, 2 (benchmarks/toy_thresholds.py memorise): recall 0.996-1.0,
    # after a prefix 0.98-1.0, another subject's answers 0.073-0.076 (gpt2 and llama alike).
    assert scores["recall"] >= 0.95
    # Facts are recalled after a context prefix too (keys are averaged over such prefixes).
    assert scores["after_prefix"] >= 0.9
    # Another subject's answers score about chance: the measure is not trivially satisfied.
    assert scores["other_answers"] < 0.3


def test_toy_accuracy_on_a_random_model_is_low():
    world = ToyWorld.generate()
    tok = build_word_tokenizer(world.words())
    model = AutoModelForCausalLM.from_config(
        tiny_model("gpt2", tok)[0].config
    ).eval()
    prompts, answers = world.prompts()
    assert toy_accuracy(model, tok, prompts[:60], answers[:60]) < 0.5
