"""AlphaEdit's null-space-projected objective (Fang et al., ICLR 2025).

The update is confined to the null space of the preserved keys: with ``C = E[k₀ k₀ᵀ]`` the
second moment of the edit site's inputs over a corpus, let ``B`` (d_in, r) hold the eigenvectors
of ``C`` whose eigenvalues are below ``null_space_threshold × tr(C)/d_in``, and ``P = B Bᵀ``.
AlphaEdit writes ``ΔW = Δ P``, so ``ΔW k₀ ≈ 0`` for every corpus key, and chooses ``Δ`` to

    min ‖ΔW K − R‖² + ‖ΔW K_p‖² + α ‖ΔW‖²

where ``K_p`` are the keys written by earlier sequential batches, kept unchanged so that later
batches do not overwrite earlier edits. Only ``K_p K_pᵀ`` enters (``problem.prior_gram()``), so
the editor carries that (d_in, d_in) product, not every key it ever wrote. The minimiser lives
in the r-dimensional null space, so it is solved there (never inverting a d_in × d_in matrix):

    ΔW = R Kᵀ B (Bᵀ (K Kᵀ + K_p K_pᵀ) B + α I)⁻¹ Bᵀ

which equals the paper's ``R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹`` on the null space.
``α = null_space_l2 × tr(C)/d_in``: both thresholds are relative to C's mean eigenvalue, so they
mean the same at any key scale.
"""

from __future__ import annotations

import logging

import torch

from massedit.editing.registry import register_objective
from massedit.engine.linalg import cho_solve, cholesky_with_ridge
from massedit.engine.problem import Delta, LayerProblem, SecondMoment

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.1
DEFAULT_L2 = 1.0


def null_space_basis(moment: SecondMoment, threshold: float) -> torch.Tensor:
    """Orthonormal basis ``B`` (d_in, r) fp64 of C's eigenvectors with eigenvalue below
    ``threshold`` times C's mean eigenvalue (the directions the corpus keys barely use)."""
    c = moment.mean  # (d_in, d_in) fp64
    evals, evecs = torch.linalg.eigh(0.5 * (c + c.T))  # ascending
    return evecs[:, evals < threshold * evals.mean()]


@register_objective
class NullSpaceObjective:
    """AlphaEdit: ΔW = R Kᵀ P (K Kᵀ P + K_p K_pᵀ P + αI)⁻¹, P onto C's null space."""

    name = "null_space"
    # Declared to the conformance kit (massedit.testing.conformance): corpus keys in C's range
    # are left exactly unchanged, and keys of earlier batches are protected.
    preserves_corpus_keys = True
    uses_prior_keys = True

    def __init__(self) -> None:
        # id(moment) -> (moment, threshold, basis): one eigendecomposition per layer per editor,
        # reused by every sequential batch. The moment is kept so its id cannot be recycled.
        self._bases: dict[int, tuple[SecondMoment, float, torch.Tensor]] = {}

    def basis(self, moment: SecondMoment, threshold: float) -> torch.Tensor:
        cached = self._bases.get(id(moment))
        if cached is None or cached[0] is not moment or cached[1] != threshold:
            cached = (moment, threshold, null_space_basis(moment, threshold))
            self._bases[id(moment)] = cached
        return cached[2]

    def solve(self, problem: LayerProblem) -> Delta:
        hp = problem.hparams
        # getattr: the objective also runs under other methods' hparams (--objective null_space).
        threshold = float(getattr(hp, "null_space_threshold", DEFAULT_THRESHOLD))
        l2 = float(getattr(hp, "null_space_l2", DEFAULT_L2))
        device = problem.keys.device
        b = self.basis(problem.moment, threshold).to(device)  # (d_in, r)
        k = problem.keys.to(torch.float64)  # (d_in, n)
        bk = b.T @ k  # (r, n): the keys' null-space components
        gram = bk @ bk.T  # (r, r) = Bᵀ K Kᵀ B
        prior = problem.prior_gram()  # Kₚ Kₚᵀ (d_in, d_in) fp64 of earlier batches, or None
        if prior is not None:
            gram = gram + b.T @ prior.to(device) @ b  # + Bᵀ Kₚ Kₚᵀ B
        alpha = l2 * float(problem.moment.mean.diagonal().mean())
        eye = torch.eye(b.shape[1], dtype=torch.float64, device=device)
        y = cho_solve(cholesky_with_ridge(gram + alpha * eye), bk)  # (r, n)
        v = b @ y  # (d_in, n): ΔW = R Vᵀ
        if b.shape[1] == 0:
            logger.warning("layer %d: C has no eigenvalue below %.3g × its mean, so the null "
                           "space is empty and the update is zero; raise null_space_threshold",
                           problem.layer, threshold)
        info = {"null_space_dim": int(b.shape[1])}
        return Delta(problem.residual.to(torch.float64), v, info=info)
