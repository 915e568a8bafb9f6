"""Target optimisation's time and memory savings change no target (docs/design.md §5, §11)."""

from __future__ import annotations

import torch

from massedit.engine.hparams import EditHparams
from massedit.engine.requests import EditRequest
from massedit.targets.optimise import _run_length, compute_targets, target_groups
from massedit.targets.suffix import _cache_kwarg, _fresh_cache, cache_of
from massedit.testing import tiny_model

PREFIXES = ["", "one two three . "]
# Suffix lengths (subject's last token to the last fed target token) differ a lot between these.
REQUESTS = [
    EditRequest("{} was born in the city of", "Ada Lovelace", "Paris", "London"),
    EditRequest("The capital of {} is", "France", "Rome", "Paris"),
    EditRequest("{} plays the instrument called the", "Miles Davis", "piano", "trumpet"),
    EditRequest("The {} is", "Eiffel Tower", "red", "brown"),
    EditRequest("{} speaks", "Danielle Darrieux", "English", "French"),
]


def test_groups_hold_requests_of_similar_length_and_every_request_once():
    _, tok = tiny_model("llama")
    groups = target_groups(tok, REQUESTS, len(PREFIXES), batch_rows=2 * (len(PREFIXES) + 1))
    assert sorted(i for g in groups for i in g) == list(range(len(REQUESTS)))
    assert all(len(g) <= 2 for g in groups)
    lengths = [_run_length(tok, REQUESTS[i])[0] for g in groups for i in g]
    assert lengths == sorted(lengths)  # short suffixes together, long ones together
    assert lengths[0] < lengths[-1]


def test_grouped_targets_come_back_in_request_order():
    """Groups of two requests, formed by length (not in the order given), give each request
    the target it gets alone, at its own index."""
    model, tok = tiny_model("llama")
    hp = EditHparams(layers=(2,), v_num_grad_steps=4, early_stop_loss=0.0,
                     batch_rows=2 * (len(PREFIXES) + 1))
    groups = target_groups(tok, REQUESTS, len(PREFIXES), hp.batch_rows)
    assert [i for g in groups for i in g] != list(range(len(REQUESTS)))  # the order changed
    grouped = compute_targets(model, tok, REQUESTS, PREFIXES, "model.layers.2", hp,
                              progress=False)
    for i, req in enumerate(REQUESTS):
        alone = compute_targets(model, tok, [req], PREFIXES, "model.layers.2", hp,
                                progress=False)
        assert torch.allclose(grouped.z[i], alone.z[0], rtol=1e-5, atol=1e-5)
        assert torch.allclose(grouped.h[i], alone.h[0], rtol=1e-5, atol=1e-6)


def test_each_group_is_reported_as_soon_as_it_is_done():
    """``on_group_done`` hands over every group's requests (indices into the call's list) with
    their targets, which are the ones the call returns for them."""
    model, tok = tiny_model("llama")
    hp = EditHparams(layers=(2,), v_num_grad_steps=3, early_stop_loss=0.0,
                     batch_rows=2 * (len(PREFIXES) + 1))
    reported: list[tuple[list[int], torch.Tensor]] = []
    result = compute_targets(model, tok, REQUESTS, PREFIXES, "model.layers.2", hp,
                             progress=False,
                             on_group_done=lambda idx, part: reported.append((idx, part.z)))
    assert [idx for idx, _ in reported] == target_groups(tok, REQUESTS, len(PREFIXES),
                                                         hp.batch_rows)
    for idx, z in reported:
        assert torch.equal(z, result.z[idx])


def test_full_rows_are_never_differentiated_on_the_suffix_path(monkeypatch):
    """The first (full-row) pass is a plain forward pass; every pass that builds a graph runs
    suffix rows only, so no full row's activations are kept for backward."""
    import massedit.targets.passes as target_pass

    seen: list[tuple[str, bool, int]] = []
    real_full, real_suffix = target_pass._logits_and_cache, target_pass.suffix_hidden

    def full(model, batch, picks):
        seen.append(("full", torch.is_grad_enabled(), batch["input_ids"].shape[1]))
        return real_full(model, batch, picks)

    def suffix(model, plan):
        seen.append(("suffix", torch.is_grad_enabled(), plan.suffix_len))
        return real_suffix(model, plan)

    monkeypatch.setattr(target_pass, "_logits_and_cache", full)
    monkeypatch.setattr(target_pass, "suffix_hidden", suffix)
    model, tok = tiny_model("llama")
    hp = EditHparams(layers=(2,), v_num_grad_steps=3, early_stop_loss=0.0)
    compute_targets(model, tok, REQUESTS[:2], PREFIXES, "model.layers.2", hp, progress=False)
    assert seen[0][:2] == ("full", False)
    assert [kind for kind, _, _ in seen[1:]] == ["suffix"] * hp.v_num_grad_steps
    # Graphs for the updates; the last pass only scores the final δ.
    assert [grad for _, grad, _ in seen[1:]] == [True, True, False]
    assert all(length < seen[0][2] for _, _, length in seen[1:])


def test_a_suffix_pass_leaves_the_plans_cache_as_it_was():
    """Suffix passes append to a shallow copy of the prefix cache (its layers rebind their
    tensors on update), so the plan's keys and values stay those of the prefixes."""
    model, tok = tiny_model("llama")
    batch = tok(["one two three four"], return_tensors="pt")
    cache = cache_of(model(**batch, use_cache=True))
    before = [(layer.keys, layer.keys.clone()) for layer in cache.layers]
    copy = _fresh_cache(cache)
    model(input_ids=batch["input_ids"][:, -1:], use_cache=True, **{_cache_kwarg(model): copy})
    assert all(layer.keys.shape[-2] == before[0][1].shape[-2] + 1 for layer in copy.layers)
    for layer, (same, values) in zip(cache.layers, before, strict=True):
        assert layer.keys is same and torch.equal(layer.keys, values)


def test_suffix_passes_keep_grouped_keys_unrepeated_for_backward(monkeypatch):
    """With grouped-query attention (here 4 query heads, 2 key/value heads) a differentiated
    suffix pass keeps keys and values per key/value head, not repeated to every query head,
    and its targets equal full rows' (where transformers repeats them)."""
    import massedit.targets.passes as target_pass

    model, tok = tiny_model("qwen2")
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    assert kv_heads < heads
    widths: set[int] = set()
    real = target_pass.suffix_hidden

    def recording(model, plan):
        rows, positions = plan.batch["attention_mask"].shape  # keys/values: prefix + suffix

        def pack(t):
            if t.dim() == 4 and t.shape[0] == rows and t.shape[2] == positions:
                widths.add(t.shape[1])  # (rows, heads, positions, head_dim) saved keys/values
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return real(model, plan)

    monkeypatch.setattr(target_pass, "suffix_hidden", recording)
    hp = EditHparams(layers=(2,), v_num_grad_steps=3, early_stop_loss=0.0)
    fast = compute_targets(model, tok, REQUESTS, PREFIXES, "model.layers.2", hp, progress=False)
    assert kv_heads in widths and heads not in widths
    full = compute_targets(model, tok, REQUESTS, PREFIXES, "model.layers.2", hp, progress=False,
                           suffix=False)
    assert torch.allclose(fast.z, full.z, rtol=1e-5, atol=1e-6)


def test_target_rows_sets_the_group_size_and_changes_no_target():
    """``target_rows`` bounds the rows of a target group (its memory) apart from the forward
    batches of keys (``batch_rows``); the targets are those of any other grouping."""
    model, tok = tiny_model("llama")
    per_fact = len(PREFIXES) + 1
    hp = EditHparams(layers=(2,), v_num_grad_steps=3, early_stop_loss=0.0, batch_rows=64)
    sizes: list[int] = []
    wide = compute_targets(model, tok, REQUESTS, PREFIXES, "model.layers.2", hp, progress=False,
                           on_group_done=lambda idx, part: sizes.append(len(idx)))
    assert sizes == [len(REQUESTS)]
    sizes.clear()
    narrow = compute_targets(model, tok, REQUESTS, PREFIXES, "model.layers.2",
                             hp.replace(target_rows=per_fact), progress=False,
                             on_group_done=lambda idx, part: sizes.append(len(idx)))
    assert sizes == [1] * len(REQUESTS)
    assert torch.allclose(narrow.z, wide.z, rtol=1e-5, atol=1e-6)
