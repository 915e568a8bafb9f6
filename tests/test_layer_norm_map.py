"""Post-LN blocks (BART, Marian: the block outputs ``LN(r + o)``): a stream residual becomes the
change of the site's output that makes it (docs/design.md §5, ``engine.layer_norm_map``), and
subject edits of tiny BART/Marian encoders land on their targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from massedit import Editor, EditRequest, StatsSpec
from massedit.engine.keys import Read, subject_states
from massedit.engine.post_norm import reachable_change, stream_to_site
from massedit.models.adapters import get_adapter, get_module
from massedit.testing.tiny_seq2seq import tiny_seq2seq_model
from tests.test_post_norm import EXACT, REQUESTS, exact_editor, fix_targets

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _layer_norm(d: int, seed: int = 1) -> nn.LayerNorm:
    gen = torch.Generator().manual_seed(seed)
    norm = nn.LayerNorm(d, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.copy_(1 + torch.rand(d, generator=gen, dtype=torch.float64) - 0.5)
        norm.bias.copy_(0.3 * torch.randn(d, generator=gen, dtype=torch.float64))
    return norm


def _moved(norm, u, delta):
    with torch.no_grad():
        return norm(u + delta) - norm(u)


def test_a_reachable_change_is_written_exactly_and_keeps_the_inputs_mean_and_spread():
    gen = torch.Generator().manual_seed(2)
    norm = _layer_norm(24)
    u = 0.5 + 2.0 * torch.randn(5, 24, generator=gen, dtype=torch.float64)  # (n, d)
    other = torch.randn(5, 24, generator=gen, dtype=torch.float64)  # far from u, but of u's
    other = (other - other.mean(-1, keepdim=True)) / other.std(-1, keepdim=True) * u.std(
        -1, keepdim=True)  # spread: at another spread ε makes the outputs' sphere another one
    residual = 0.7 * (_moved(norm, u, other - u))  # (n, d) what the norm can output, scaled
    delta = stream_to_site(norm, u, residual, scale=0.7)
    assert _rel(0.7 * _moved(norm, u, delta), residual) < 1e-8
    assert torch.allclose((u + delta).mean(-1), u.mean(-1), atol=1e-10)
    assert torch.allclose((u + delta).var(-1), u.var(-1), rtol=1e-10)


def test_an_unreachable_residual_lands_on_the_nearest_output_the_norm_can_make():
    """Nearer than any other output of the norm: random inputs, and small moves of the answer
    along the set of outputs (the norm applied to slightly changed inputs)."""
    gen = torch.Generator().manual_seed(3)
    norm = _layer_norm(16)
    u = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    residual = 2.0 * torch.randn(3, 16, generator=gen, dtype=torch.float64)
    wanted = norm(u).detach() + residual
    delta = stream_to_site(norm, u, residual)
    best = (norm(u + delta).detach() - wanted).norm(dim=-1)  # (n,)
    assert float(best.max()) > 0.1  # the test's residuals are indeed out of reach
    for trial in range(200):
        scale = 1.0 if trial < 100 else 1e-3
        other = u + delta + scale * torch.randn(3, 16, generator=gen, dtype=torch.float64)
        assert bool(((norm(other).detach() - wanted).norm(dim=-1) >= best - 1e-9).all())


def test_a_norm_that_is_not_a_layer_norm_is_refused():
    class Shifted(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x) + x.mean(-1, keepdim=True)

    norm = Shifted(8).double()
    u = torch.randn(2, 8, dtype=torch.float64) + 1.0
    with pytest.raises(ValueError, match="does not compute"):
        stream_to_site(norm, u, torch.randn(2, 8, dtype=torch.float64))


@pytest.mark.parametrize("model_type", ["bart", "marian"])
def test_the_adapter_names_the_post_ln_norm_and_its_input_is_the_stream_plus_the_site(model_type):
    model, tok = tiny_seq2seq_model(model_type)
    adapter, layer = get_adapter(model), 1
    name = adapter.mlp_out_norm_name(layer)
    assert isinstance(get_module(model, name), nn.LayerNorm)
    # The norm's input minus the site's output is what the block had before its MLP: a change
    # of the site's output is a change of the norm's input.
    (u, o, r) = subject_states(
        model, tok, REQUESTS[:2], [""],
        [Read(name, inputs=True, average=False),
         Read(adapter.site_name(layer), inputs=False, average=False),
         Read(f"{adapter.block_name(layer)}.fc1", inputs=True, average=False)],
        stop_at=adapter.block_name(layer))
    assert _rel(u, r + o) < 1e-6


def _reachable_targets(model, tok, reqs, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets the edit can reach: the block output the norm would give for a random input."""
    adapter = get_adapter(model)
    name = adapter.mlp_out_norm_name(layer)
    u, h = subject_states(model, tok, reqs, [""],
                          [Read(name, inputs=True, average=False),
                           Read(adapter.block_name(layer), inputs=False, average=False)],
                          stop_at=adapter.block_name(layer))  # (n, d), (n, d)
    other = torch.randn(u.shape, generator=torch.Generator().manual_seed(6))
    other = (other - other.mean(-1, keepdim=True)) / other.std(-1, keepdim=True) * u.std(
        -1, keepdim=True)  # u's spread: reachable exactly (see the first test)
    return h + _moved(get_module(model, name), u, other - u), h


@pytest.mark.parametrize("model_type", ["bart", "marian"])
@pytest.mark.parametrize(("method", "n", "settings"), EXACT, ids=[m for m, *_ in EXACT])
def test_exact_edit_moves_the_encoder_block_output_to_the_target(model_type, method, n, settings,
                                                                 monkeypatch, tiny_corpus,
                                                                 stats_dir):
    model, tok = tiny_seq2seq_model(model_type)
    layer, reqs = 1, REQUESTS[:n]
    z, h = _reachable_targets(model, tok, reqs, layer)
    fix_targets(monkeypatch, reqs, z, h)
    patch = exact_editor(model, tok, method, layer, settings, tiny_corpus, stats_dir).edit(reqs)
    block = get_adapter(model).block_name(layer)
    (after,) = subject_states(model, tok, reqs, [""], [Read(block, inputs=False, average=False)],
                              stop_at=block)
    assert _rel(after, z) < 1e-4  # the block output is the target
    assert _rel(after - h, z - h) < 1e-3  # and moved all the way there
    patch.revert(model)


def test_targets_of_a_post_ln_model_are_ones_its_sites_can_make(tiny_corpus, stats_dir):
    """A real subject edit of a tiny BART encoder: the optimised target is reachable by the
    edit layer's MLP, so after the equality edit the block output is the target."""
    model, tok = tiny_seq2seq_model("bart")
    layer, reqs = 1, [EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris")]
    reach = reachable_change(model, tok, get_adapter(model), [layer], reqs)
    assert reach is not None and reach.width == reach.norm_in.shape[-1]
    editor = Editor(model, tok, method="rome", layers=(layer,), v_num_grad_steps=8,
                    context_lengths=(), max_update_ratio=1e9, progress=False,
                    stats=StatsSpec(corpus=str(tiny_corpus), cache_dir=str(stats_dir)),
                    stats_tokens_per_width=30)
    target = editor._targets(reqs, editor.prefixes(), get_adapter(model).block_name(layer))
    assert _rel(target.z, target.h) > 1e-3  # the target moved
    patch = editor.edit(reqs)
    block = get_adapter(model).block_name(layer)
    (after,) = subject_states(model, tok, reqs, [""], [Read(block, inputs=False, average=False)],
                              stop_at=block)
    assert _rel(after, target.z) < 1e-4
    patch.revert(model)
