"""Exact algebra of the closed-form updates on tiny models of every adapter (docs/design.md
§10.1)."""

from __future__ import annotations

import pytest
import torch

from massedit import Editor, EditRequest, StatsSpec
from massedit.editing.registry import get_objective
from massedit.models.adapters import get_adapter, get_module, read_weight
from massedit.testing import TINY_MODEL_TYPES, tiny_gpt2_pair, tiny_model

REQUESTS = [
    EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris"),
    EditRequest("{} plays", "Michael Jordan", "football", "basketball"),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
]
# Random tiny models need large updates; the safety limit is tested elsewhere.
FAST = dict(v_num_grad_steps=4, context_lengths=((2, 4),), stats_tokens_per_width=30,
            max_update_ratio=1e9)


def _editor(model, tok, corpus, stats_dir, method, **kw):
    stats = StatsSpec(corpus=str(corpus), cache_dir=str(stats_dir))
    return Editor(model, tok, method=method, stats=stats, keep_problems=True, progress=False,
                  **{**FAST, **kw})


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_equality_edit_writes_keys_exactly(model_type, tiny_corpus, stats_dir):
    model, tok = tiny_model(model_type)
    editor = _editor(model, tok, tiny_corpus, stats_dir, "emmet", layers=(1, 2))
    editor.edit(REQUESTS)
    assert len(editor.solved) == 2
    for problem, delta in editor.solved:
        w = problem.weight.double()
        k, r = problem.keys.double(), problem.residual.double()
        w_new = w + delta.matrix().double()
        assert _rel(w_new @ k, w @ k + r) < 1e-6
    # The write went through the adapter in the right orientation: the module's weight is Ŵ.
    adapter = get_adapter(model)
    problem, delta = editor.solved[-1]
    written = read_weight(get_module(model, adapter.site_name(problem.layer)), adapter.layout)
    assert torch.equal(written, (problem.weight + delta.matrix()).to(written.dtype))


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_least_squares_solves_normal_equations(model_type, tiny_corpus, stats_dir):
    model, tok = tiny_model(model_type)
    editor = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1, 2), mom2_lambda=3.0)
    editor.edit(REQUESTS)
    for problem, delta in editor.solved:
        k, r = problem.keys.double(), problem.residual.double()
        a = 3.0 * problem.moment.regularised(problem.hparams.moment_ridge) + k @ k.T
        lhs = delta.matrix().double() @ a  # ΔW (λC + K Kᵀ)
        assert _rel(lhs, r @ k.T) < 1e-6


def test_rome_equals_emmet_at_one_request_and_rank_one_formula(tiny_corpus, stats_dir):
    model, tok = tiny_model("llama")
    rome = _editor(model, tok, tiny_corpus, stats_dir, "rome", layers=(2,))
    patch = rome.edit(REQUESTS[:1])
    patch.revert(model)
    emmet = _editor(model, tok, tiny_corpus, stats_dir, "emmet", layers=(2,), mu=0.0)
    emmet.edit(REQUESTS[:1])
    (p_rome, d_rome), (p_emmet, d_emmet) = rome.solved[0], emmet.solved[0]
    assert torch.equal(p_rome.keys, p_emmet.keys)
    assert _rel(d_rome.matrix().double(), d_emmet.matrix().double()) < 1e-8
    # ROME's rank-one form, with the same averaged key in numerator and denominator, against
    # the objective's fp64 factors (patches store them in fp32).
    solved = get_objective("equality").solve(p_rome)
    k = p_rome.keys.double()  # (d_in, 1)
    c = p_rome.moment.regularised(p_rome.hparams.moment_ridge) * p_rome.hparams.mom2_lambda
    cinv_k = torch.linalg.solve(c, k)
    expected = p_rome.residual.double() @ cinv_k.T / (k.T @ cinv_k)
    assert _rel(solved.u @ solved.v.T, expected) < 1e-8


def test_conv1d_edit_equals_linear_edit(tiny_corpus, stats_dir):
    conv_model, linear_model, tok = tiny_gpt2_pair()
    deltas = []
    for model in (conv_model, linear_model):
        editor = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1, 2))
        editor.edit(REQUESTS)
        deltas.append([d.matrix() for _, d in editor.solved])
    for a, b in zip(*deltas, strict=True):
        assert _rel(a.double(), b.double()) < 1e-4
    ids = tok("The Eiffel Tower is located in", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out_conv, out_lin = conv_model(ids).logits, linear_model(ids).logits
    assert torch.allclose(out_conv, out_lin, atol=1e-4)
