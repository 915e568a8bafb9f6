"""MEMIT's objective: ``min ‖Ŵ K₀ − W K₀‖² + ‖Ŵ K − (W K + R)‖²``, closed form."""

from massedit.engine.linalg import least_squares_factors
from massedit.engine.problem import Delta, LayerProblem


class LeastSquaresObjective:
    """MEMIT: ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ — keep corpus keys, write the new ones in least squares."""

    name = "least_squares"
    normal_equations = True  # ΔW (λC + K Kᵀ) = R Kᵀ (conformance kit checks it)

    def solve(self, problem: LayerProblem) -> Delta:
        # ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ = U Vᵀ with U = R (d_out, n), V = (λC + K Kᵀ)⁻¹ K (d_in, n)
        hp = problem.hparams
        moment = problem.moment.regularised(hp.moment_ridge)
        u, v = least_squares_factors(problem.residual, problem.keys, moment, hp.mom2_lambda)
        return Delta(u, v)
