"""Edits that follow where the MLP's output goes: a norm after the MLP (Gemma 2/3, OLMo 2) or a
scale (Granite), docs/design.md §5; and what the adapters say about every tiny decoder type."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm

import massedit.editing.editor as editor_module
import massedit.engine.post_norm as post_norm
from massedit import Editor, EditRequest, StatsSpec
from massedit.engine.hooks import capture, edit_output
from massedit.engine.keys import Read, subject_states
from massedit.engine.post_norm import nearest_on_ellipsoid, stream_change, stream_to_site
from massedit.models.adapters import get_adapter, get_module
from massedit.targets.optimise import TargetResult
from massedit.targets.passes import head_logits
from massedit.testing import TINY_MODEL_TYPES, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

REQUESTS = [
    EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris"),
    EditRequest("{} plays", "Michael Jordan", "football", "basketball"),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
]
POST_MLP = ("gemma2", "gemma3_text", "olmo2", "granite")  # MLP output not added as it is


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _mlp_path(model, layer: int):
    adapter = get_adapter(model)
    name = adapter.mlp_out_norm_name(layer)
    return (None if name is None else get_module(model, name)), adapter.mlp_out_scale(model.config)


# --- the adapters against the models' own forward passes --------------------------------------


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_adapter_says_what_the_stream_receives_from_the_site(model_type):
    """Changing the site's output by Δ moves the block's output by exactly what the adapter's
    description (norm, scale) predicts: the registry matches each decoder layer's code."""
    model, tok = tiny_model(model_type)
    adapter, layer = get_adapter(model), 1
    site, block = adapter.site_name(layer), adapter.block_name(layer)
    ids = tok(["The Eiffel Tower is located in"], return_tensors="pt")["input_ids"]
    change = torch.randn(1, ids.shape[1], adapter.width(model.config),
                         generator=torch.Generator().manual_seed(0))  # (1, seq, d)
    with torch.no_grad(), capture(model, [site, block]) as clean:
        model(ids)
    clean = dict(clean)
    with torch.no_grad(), edit_output(model, site, lambda out: out + change), \
            capture(model, [block]) as moved:
        model(ids)
    norm, scale = _mlp_path(model, layer)
    predicted = stream_change(norm, clean[site], change, scale)
    assert _rel(moved[block] - clean[block], predicted) < 1e-5
    if model_type in POST_MLP:  # and the plain description would be wrong for these
        assert _rel(moved[block] - clean[block], change) > 0.05


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_head_logits_equal_the_models_own(model_type):
    """Where massedit computes logits itself (targets, tracing) it honours Gemma 2's soft-cap
    and Granite's logits_scaling."""
    model, tok = tiny_model(model_type)
    ids = tok(["The Eiffel Tower is located in"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        own = model(ids).logits[0]  # (seq, vocab)
        hidden = model.base_model(ids).last_hidden_state[0]  # (seq, d)
        ours = head_logits(model, hidden)
    torch.testing.assert_close(ours, own, atol=1e-6, rtol=1e-5)


# --- the map from stream residuals to site residuals -------------------------------------------


def _norms(d: int) -> list[nn.Module]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for cls in (Gemma2RMSNorm, Olmo2RMSNorm):  # gain 1 + w and gain w
        norm = cls(d, eps=1e-6)
        with torch.no_grad():
            norm.weight.add_(torch.rand(d, generator=gen) - 0.5)
        out.append(norm)
    return out


def _same_length(o: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random vectors (n, d) with the rms of each row of ``o``."""
    x = torch.randn(o.shape, generator=gen, dtype=o.dtype)
    return x * o.pow(2).mean(-1, keepdim=True).sqrt() / x.pow(2).mean(-1, keepdim=True).sqrt()


@pytest.mark.parametrize("norm_index", [0, 1])
def test_a_reachable_stream_change_is_written_exactly(norm_index):
    gen = torch.Generator().manual_seed(2)
    norm = _norms(24)[norm_index]
    o = 0.05 * torch.randn(5, 24, generator=gen, dtype=torch.float64)  # eps matters at this size
    wanted = _same_length(o, gen) - o  # a large rotation of o
    residual = stream_change(norm, o, wanted, scale=0.5)
    delta = stream_to_site(norm, o, residual, scale=0.5)
    assert _rel(delta, wanted) < 1e-6
    assert _rel(stream_change(norm, o, delta, scale=0.5), residual) < 1e-6


@pytest.mark.parametrize("norm_index", [0, 1])
def test_small_residuals_go_through_the_pseudo_inverse_of_the_norm(norm_index):
    """To first order the map is J⁺ R, J = ∂N/∂o (the component along o's normal dropped)."""
    gen = torch.Generator().manual_seed(3)
    norm = _norms(16)[norm_index]
    o = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    residual = 1e-6 * torch.randn(3, 16, generator=gen, dtype=torch.float64)
    delta = stream_to_site(norm, o, residual)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda x: norm(x), o[i])  # (d, d)
        # One singular value is ~eps/rms² (the length of o): the pseudo-inverse drops it.
        linear = torch.linalg.pinv(jac, rtol=1e-4) @ residual[i]
        assert _rel(delta[i], linear) < 1e-4


def test_the_unreachable_part_is_the_normal_of_what_the_norm_can_output():
    """An arbitrary residual lands on the nearest output the norm can make: what is left is
    along the normal there, and the written change keeps the length of o (the norm ignores it)."""
    gen = torch.Generator().manual_seed(4)
    norm = _norms(20)[0]
    o = torch.randn(4, 20, generator=gen, dtype=torch.float64)
    residual = torch.randn(4, 20, generator=gen, dtype=torch.float64)
    delta = stream_to_site(norm, o, residual)
    rms = o.pow(2).mean(-1, keepdim=True).sqrt()
    assert _rel((o + delta).pow(2).mean(-1, keepdim=True).sqrt(), rms) < 1e-9
    reached = norm(o + delta)
    left = norm(o) + residual - reached  # (n, d)
    gains = norm(rms.expand(o.shape))  # the axes a of the ellipsoid at o's length
    normal = reached / gains**2
    cosine = (left * normal).sum(-1) / (left.norm(dim=-1) * normal.norm(dim=-1))
    assert torch.allclose(cosine.abs(), torch.ones(4, dtype=torch.float64), atol=1e-8)


def test_nearest_point_on_an_ellipsoid_beats_random_points_on_it():
    gen = torch.Generator().manual_seed(5)
    axes = torch.rand(1, 6, generator=gen, dtype=torch.float64) + 0.2
    point = 2 * torch.randn(1, 6, generator=gen, dtype=torch.float64)
    best = nearest_on_ellipsoid(point, axes)
    assert float((best / axes).pow(2).mean()) == pytest.approx(1.0, abs=1e-12)
    others = torch.randn(4000, 6, generator=gen, dtype=torch.float64)
    others = axes * others / others.pow(2).mean(-1, keepdim=True).sqrt()
    assert float((best - point).norm()) <= float((others - point).norm(dim=-1).min()) + 1e-12


def test_many_requests_are_mapped_rows_at_a_time(monkeypatch):
    gen = torch.Generator().manual_seed(7)
    norm = _norms(8)[1]
    o = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    residual = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    residual[2] = 0  # a request already at its target: nothing to write
    whole = stream_to_site(norm, o, residual)
    assert float(whole[2].abs().max()) < 1e-12
    monkeypatch.setattr(post_norm, "_ROWS", 2)
    torch.testing.assert_close(stream_to_site(norm, o, residual), whole, rtol=0, atol=1e-12)


def test_no_norm_means_only_the_scale():
    residual = torch.randn(3, 8)
    assert torch.equal(stream_to_site(None, torch.randn(3, 8), residual, scale=0.5),
                       residual.double().div(0.5).float())


def test_a_norm_that_is_not_an_rms_norm_is_refused():
    class Shifted(Olmo2RMSNorm):  # adds the mean back: not g ⊙ x / rms(x) (nor a LayerNorm)
        def forward(self, x):
            return super().forward(x) + x.mean(-1, keepdim=True)

    norm = Shifted(12)
    with pytest.raises(ValueError, match="not of the form"):
        stream_to_site(norm, torch.randn(2, 12), torch.randn(2, 12))


# --- the acceptance: equality edits move the block output to z --------------------------------


def _reachable_targets(model, tok, reqs, layer: int) -> torch.Tensor:
    """Targets ``z`` (n, d) the edit can reach: h plus what a random site output of o's length
    would give the stream (no prefixes, so the key is the plain prompt's)."""
    adapter = get_adapter(model)
    o, h = subject_states(model, tok, reqs, [""],
                          [Read(adapter.site_name(layer), inputs=False, average=False),
                           Read(adapter.block_name(layer), inputs=False, average=False)],
                          stop_at=adapter.block_name(layer))  # (n, d), (n, d)
    norm, scale = _mlp_path(model, layer)
    new_o = _same_length(o, torch.Generator().manual_seed(6))
    return h + stream_change(norm, o, new_o - o, scale), h


def _block_outputs(model, tok, reqs, layer: int) -> torch.Tensor:
    block = get_adapter(model).block_name(layer)
    (h,) = subject_states(model, tok, reqs, [""], [Read(block, inputs=False, average=False)],
                          stop_at=block)
    return h  # (n, d)


def fix_targets(monkeypatch, reqs, z: torch.Tensor, h: torch.Tensor) -> None:
    """Make the Editor's targets for ``reqs`` the given ``z`` and ``h`` (n, d) (no optimisation)."""

    def fixed_targets(_model, _tok, requests, *_args, on_group_done=None, **_kwargs):
        rows = [reqs.index(r) for r in requests]
        result = TargetResult(z=z[rows], h=h[rows], nll=torch.zeros(len(rows)),
                              steps=torch.zeros(len(rows), dtype=torch.long))
        if on_group_done is not None:  # the Editor keeps targets as each group is done
            on_group_done(list(range(len(requests))), result)
        return result

    monkeypatch.setattr(editor_module, "compute_targets", fixed_targets)


def exact_editor(model, tok, method: str, layer: int, settings: dict, corpus, stats_dir) -> Editor:
    """An Editor of one layer with no context prefixes and no update guard (EXACT's settings)."""
    return Editor(model, tok, method=method, layers=(layer,), mu=0.0, context_lengths=(),
                  stats=StatsSpec(corpus=str(corpus), cache_dir=str(stats_dir)),
                  stats_tokens_per_width=30, max_update_ratio=1e9, progress=False, **settings)


# Methods that write their keys exactly at one layer: ROME and EMMET (μ = 0) by construction,
# MEMIT and AlphaEdit in their limits (λ → 0; every direction free, α → 0).
EXACT = [
    ("rome", 1, {}),
    ("emmet", 3, {}),
    ("memit", 3, {"distribution": "single", "mom2_lambda": 1e-9}),
    ("alphaedit", 3, {"distribution": "single", "null_space_threshold": 1e9,
                      "null_space_l2": 1e-12}),
]


@pytest.mark.parametrize("model_type", POST_MLP)
@pytest.mark.parametrize(("method", "n", "settings"), EXACT, ids=[m for m, *_ in EXACT])
def test_exact_edit_moves_the_block_output_to_the_target(model_type, method, n, settings,
                                                         monkeypatch, tiny_corpus, stats_dir):
    model, tok = tiny_model(model_type)
    layer, reqs = 2, REQUESTS[:n]
    z, h = _reachable_targets(model, tok, reqs, layer)
    fix_targets(monkeypatch, reqs, z, h)
    patch = exact_editor(model, tok, method, layer, settings, tiny_corpus, stats_dir).edit(reqs)
    after = _block_outputs(model, tok, reqs, layer)
    assert _rel(after, z) < 1e-4  # the block output is the target ...
    assert _rel(after - h, z - h) < 1e-3  # ... and moved all the way (not merely near z)
    patch.revert(model)
    assert torch.equal(_block_outputs(model, tok, reqs, layer), h)
