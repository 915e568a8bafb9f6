"""EMMET's equality-constrained objective; ROME is its n = 1, μ = 0 case.

``min ‖Ŵ K₀ − W K₀‖²  subject to  Ŵ K = W K + R`` (softened by μ when keys are near-dependent).
"""

from massedit.engine.linalg import equality_factors
from massedit.engine.problem import Delta, LayerProblem


class EqualityObjective:
    """EMMET/ROME: ΔW = R (Kᵀ C⁻¹ K + μI)⁻¹ Kᵀ C⁻¹ — write the new keys exactly (μ = 0)."""

    name = "equality"
    exact = True  # with μ = 0 the new keys are written exactly (conformance kit checks it)

    def solve(self, problem: LayerProblem) -> Delta:
        hp = problem.hparams
        # C enters as λC so that μ is measured against the same scale as in least squares.
        factor = problem.moment.factor(hp.mom2_lambda, hp.moment_ridge)
        u, v = equality_factors(problem.residual, problem.keys, factor, hp.mu)
        return Delta(u, v)
