"""The plug-in's own tests: the massedit conformance kit, and AlphaEdit's formula.

Run with ``pytest examples/plugin_alphaedit/tests`` after ``pip install -e
examples/plugin_alphaedit``.
"""

from __future__ import annotations

import torch
from massedit_alphaedit import AlphaEditHparams, NullSpaceObjective, null_space_basis

from massedit.engine.problem import SecondMoment
from massedit.testing import ToyThresholds, check_method, check_objective
from massedit.testing.conformance import synthetic_problem


def test_objective_passes_the_kit_with_its_declared_promises():
    report = check_objective(NullSpaceObjective, hparams=AlphaEditHparams())
    assert report.passed
    assert any(c.startswith("preserves corpus keys") for c in report.checks())
    assert any(c.startswith("uses prior keys") for c in report.checks())


def test_method_passes_the_kit(tmp_path):
    # The same toy-world floors as massedit's own built-ins (its tests/test_conformance.py):
    # two of the kit's four toy facts resist an edit at layer 0 of the toy model.
    report = check_method("alphaedit", workdir=tmp_path,
                          thresholds=ToyThresholds(efficacy=0.5, paraphrase=0.6, locality=0.8))
    assert report.passed, str(report)


def test_null_space_basis_spans_what_the_corpus_does_not_use():
    g = torch.Generator().manual_seed(0)
    used = torch.linalg.qr(torch.randn(10, 4, generator=g, dtype=torch.float64))[0]  # (10, 4)
    keys = used @ torch.randn(4, 200, generator=g, dtype=torch.float64)  # rank 4
    basis = null_space_basis(SecondMoment(keys @ keys.T, 200), threshold=0.01)
    assert basis.shape == (10, 6)
    torch.testing.assert_close(basis.T @ basis, torch.eye(6, dtype=torch.float64))
    assert float((basis.T @ used).abs().max()) < 1e-8  # orthogonal to the used directions


def test_update_equals_the_papers_closed_form():
    # Fang et al. (2025), eq. (14): ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹, P = B Bᵀ.
    hp = AlphaEditHparams(null_space_threshold=0.5, null_space_l2=0.3)
    problem = synthetic_problem(hp, corpus_rank=8, n_prior=5)
    delta = NullSpaceObjective().solve(problem)
    b = null_space_basis(problem.moment, 0.5)
    p = b @ b.T  # (d_in, d_in)
    k, kp = problem.keys.double(), problem.prior_keys.double()
    alpha = 0.3 * float(problem.moment.mean.diagonal().mean())
    a = kp @ kp.T @ p + k @ k.T @ p + alpha * torch.eye(p.shape[0], dtype=torch.float64)
    paper = torch.linalg.solve(a.T, (problem.residual.double() @ k.T @ p).T).T
    ours = delta.u @ delta.v.T
    assert float((ours - paper).norm() / paper.norm()) < 1e-10
    assert delta.info["null_space_dim"] == b.shape[1] > 0
