"""Batched target optimisation equals request-by-request optimisation (docs/design.md §5)."""

from __future__ import annotations

import logging

import pytest
import torch

from massedit.engine.hparams import EditHparams
from massedit.models.adapters import get_adapter, get_module
from massedit.targets.optimise import compute_targets
from massedit.testing import TINY_MODEL_TYPES, tiny_model
from tests.test_engine_algebra import REQUESTS

PREFIXES = ["", "one two three . ", "The old man is very good . "]


def test_batched_targets_equal_one_at_a_time():
    model, tok = tiny_model("llama")
    hp = EditHparams(layers=(2,), v_num_grad_steps=8, early_stop_loss=0.0)
    block = "model.layers.2"
    batched = compute_targets(model, tok, REQUESTS, PREFIXES, block, hp, progress=False)
    for i, req in enumerate(REQUESTS):
        alone = compute_targets(model, tok, [req], PREFIXES, block, hp, progress=False)
        assert torch.allclose(batched.z[i], alone.z[0], rtol=1e-5, atol=1e-5)
        assert torch.allclose(batched.h[i], alone.h[0], rtol=1e-5, atol=1e-6)
        assert int(batched.steps[i]) == int(alone.steps[0]) == hp.v_num_grad_steps - 1
    # The optimisation did something: the targets moved and the NLL of target_new fell.
    assert float((batched.z - batched.h).norm()) > 0


def test_editor_caches_targets_per_request_across_batches(monkeypatch):
    """A request optimised in one batch is not optimised again in another: the editor takes it
    from the cache and computes only the new ones, and the result equals computing it alone."""
    import massedit.editing.editor as editor_module
    from massedit import Editor

    model, tok = tiny_model("gpt2")
    calls: list[int] = []
    real = editor_module.compute_targets

    def counted(model, tok, requests, *args, **kwargs):
        calls.append(len(requests))
        return real(model, tok, requests, *args, **kwargs)

    monkeypatch.setattr(editor_module, "compute_targets", counted)
    cache: dict = {}
    hp = EditHparams(layers=(1,), v_num_grad_steps=6, early_stop_loss=0.0)
    editor = Editor(model, tok, "rome", hparams=hp, progress=False, target_cache=cache)
    prefixes = PREFIXES
    pair = editor._targets(REQUESTS[:2], prefixes, "transformer.h.1")
    assert calls == [2] and len(cache) == 2
    mixed = editor._targets([REQUESTS[1], REQUESTS[2]], prefixes, "transformer.h.1")
    assert calls == [2, 1] and len(cache) == 3  # only the new request was optimised
    assert torch.equal(mixed.z[0], pair.z[1])
    alone = real(model, tok, [REQUESTS[1]], prefixes, "transformer.h.1", hp, progress=False)
    assert torch.allclose(pair.z[1], alone.z[0], rtol=1e-5, atol=1e-5)
    assert all(entry.seconds > 0 for entry in cache.values())


def test_early_stopping_is_per_request():
    model, tok = tiny_model("gpt2")
    hp = EditHparams(layers=(1,), v_num_grad_steps=5, v_weight_decay=0.0, kl_factor=0.0)
    start = compute_targets(model, tok, REQUESTS, PREFIXES, "transformer.h.1",
                            hp.replace(v_num_grad_steps=1), progress=False).nll  # (3,) at δ = 0
    # A threshold between the requests' starting losses: the easiest stops at once, alone.
    easiest = int(start.argmin())
    threshold = float(start.min() + (start.sort().values[1] - start.min()) / 2)
    res = compute_targets(model, tok, REQUESTS, PREFIXES, "transformer.h.1",
                          hp.replace(early_stop_loss=threshold), progress=False)
    assert int(res.steps[easiest]) == 0
    assert torch.equal(res.z[easiest], res.h[easiest])  # its δ stayed zero
    others = [i for i in range(len(REQUESTS)) if i != easiest]
    assert all(int(res.steps[i]) > 0 for i in others)
    assert all(not torch.equal(res.z[i], res.h[i]) for i in others)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_replaying_lower_blocks_changes_nothing(model_type):
    """Blocks below the target layer run once; later steps reuse their output exactly."""
    model, tok = tiny_model(model_type)
    adapter = get_adapter(model)
    hp = EditHparams(layers=(2,), v_num_grad_steps=4, early_stop_loss=0.0)
    block = adapter.block_name(2)
    fast = compute_targets(model, tok, REQUESTS, PREFIXES, block, hp, progress=False)
    slow = compute_targets(model, tok, REQUESTS, PREFIXES, block, hp, progress=False,
                           replay=False)
    assert torch.allclose(fast.z, slow.z, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fast.z, fast.h)
    # The real blocks are back in place afterwards.
    assert type(get_module(model, adapter.block_name(0))).__name__ != "_Replay"


def _suffix_sizes(caplog) -> list[tuple[int, int]]:
    return [tuple(r.args) for r in caplog.records if "positions per row run" in r.getMessage()]


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_running_only_the_suffix_above_the_edit_block_changes_nothing(model_type, caplog):
    """Above block L only positions from the subject token on can see δ (docs/design.md §11): "
    "running
    just those, with the earlier positions' keys and values cached, gives the full rows' targets."""
    model, tok = tiny_model(model_type)
    hp = EditHparams(layers=(2,), v_num_grad_steps=4, early_stop_loss=0.0)
    block = get_adapter(model).block_name(2)
    with caplog.at_level(logging.DEBUG, logger="massedit.targets.passes"):
        fast = compute_targets(model, tok, REQUESTS, PREFIXES, block, hp, progress=False)
    full = compute_targets(model, tok, REQUESTS, PREFIXES, block, hp, progress=False,
                           suffix=False)
    sizes = _suffix_sizes(caplog)  # every adapter's cache fits the shortcut (transformers 5)
    assert sizes and all(suffix < whole for suffix, whole in sizes)
    assert torch.allclose(fast.z, full.z, rtol=1e-5, atol=1e-6)
    assert torch.allclose(fast.nll, full.nll, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fast.z, fast.h)


def test_a_suffix_pass_that_disagrees_with_full_rows_is_not_used(monkeypatch, caplog):
    """The shortcut is checked against the first full pass; if it does not reproduce it (here:
    suffix tokens given the wrong rotary positions), the optimisation runs full rows."""
    import massedit.targets.passes as target_pass

    real = target_pass.plan_suffix

    def shifted(*args, **kwargs):
        plan = real(*args, **kwargs)
        plan.batch["position_ids"] = plan.batch["position_ids"] + 3
        return plan

    monkeypatch.setattr(target_pass, "plan_suffix", shifted)
    model, tok = tiny_model("llama")
    hp = EditHparams(layers=(2,), v_num_grad_steps=4, early_stop_loss=0.0)
    with caplog.at_level(logging.DEBUG, logger="massedit.targets.passes"):
        checked = compute_targets(model, tok, REQUESTS, PREFIXES, "model.layers.2", hp,
                                  progress=False)
    assert not _suffix_sizes(caplog)
    assert any("suffix pass differs" in r.getMessage() for r in caplog.records)
    full = compute_targets(model, tok, REQUESTS, PREFIXES, "model.layers.2", hp,
                           progress=False, suffix=False)
    assert torch.allclose(checked.z, full.z, rtol=1e-6, atol=1e-7)


def test_requests_that_stop_leave_the_batch_and_the_others_are_unchanged(monkeypatch):
    """On the suffix path a stopped request's rows are not run again; the requests still
    optimising get exactly what full rows (where every row runs to the end) give them."""
    import massedit.targets.passes as target_pass

    rows_run: list[int] = []
    real = target_pass.suffix_hidden

    def counted(model, plan):
        rows_run.append(int(plan.batch["input_ids"].shape[0]))
        return real(model, plan)

    monkeypatch.setattr(target_pass, "suffix_hidden", counted)
    model, tok = tiny_model("llama")
    block = "model.layers.2"
    hp = EditHparams(layers=(2,), v_num_grad_steps=6)
    start = compute_targets(model, tok, REQUESTS, PREFIXES, block,
                            hp.replace(v_num_grad_steps=1), progress=False).nll  # (3,) at δ = 0
    threshold = float(start.min() + (start.sort().values[1] - start.min()) / 2)
    rows_run.clear()
    fast = compute_targets(model, tok, REQUESTS, PREFIXES, block,
                           hp.replace(early_stop_loss=threshold), progress=False)
    full = compute_targets(model, tok, REQUESTS, PREFIXES, block,
                           hp.replace(early_stop_loss=threshold), progress=False, suffix=False)
    per_request = len(PREFIXES) + 1
    # First the check pass (all rows), then steps without the request that stopped at once.
    assert rows_run[0] == len(REQUESTS) * per_request
    assert rows_run[1] == (len(REQUESTS) - 1) * per_request
    assert all(n <= rows_run[1] for n in rows_run[1:])
    assert torch.equal(fast.steps, full.steps)
    assert torch.allclose(fast.z, full.z, rtol=1e-5, atol=1e-6)
    assert torch.allclose(fast.nll, full.nll, rtol=1e-5, atol=1e-6)


def test_trainable_weights_get_no_gradients_and_stay_trainable():
    """A model passed in trainable (not through load_model): only δ is differentiated, so no
    weight gradient is computed, and the weights are trainable again afterwards."""
    model, tok = tiny_model("gpt2")
    model.requires_grad_(True)
    hp = EditHparams(layers=(1,), v_num_grad_steps=3, early_stop_loss=0.0)
    res = compute_targets(model, tok, REQUESTS, PREFIXES, "transformer.h.1", hp, progress=False)
    assert not torch.equal(res.z, res.h)
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_groups_of_one_request_give_the_same_targets_as_one_group():
    """Groups are optimised one after the other (memory of one group at a time); how requests
    are grouped changes nothing."""
    model, tok = tiny_model("qwen2")
    hp = EditHparams(layers=(2,), v_num_grad_steps=5)
    one_group = compute_targets(model, tok, REQUESTS, PREFIXES, "model.layers.2", hp,
                                progress=False)
    groups_of_one = compute_targets(model, tok, REQUESTS, PREFIXES, "model.layers.2",
                                    hp.replace(batch_rows=1), progress=False)
    assert torch.allclose(one_group.z, groups_of_one.z, rtol=1e-5, atol=1e-6)
    assert torch.equal(one_group.steps, groups_of_one.steps)
