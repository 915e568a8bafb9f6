"""MEMIT's objective: ``min ‖Ŵ K₀ − W K₀‖² + ‖Ŵ K − (W K + R)‖²``, closed form."""

from massedit.engine.linalg import cho_solve, least_squares_dense, least_squares_factor
from massedit.engine.problem import Delta, LayerProblem


class LeastSquaresObjective:
    """MEMIT: ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ — keep corpus keys, write the new ones in least squares."""

    name = "least_squares"
    normal_equations = True  # ΔW (λC + K Kᵀ) = R Kᵀ (conformance kit checks it)

    def solve(self, problem: LayerProblem) -> Delta:
        # Only K Kᵀ (d_in, d_in) and R Kᵀ (d_out, d_in) are needed, accumulated over chunks of
        # keys (docs/design.md §5). Few keys: factors U = R, V = (λC + K Kᵀ)⁻¹ K of rank n are
        # smaller than ΔW and cheaper to solve; many keys: ΔW dense, at a cost that does not
        # grow with n (the same threshold as Delta.compact).
        hp = problem.hparams
        moment = problem.moment.regularised(hp.moment_ridge)
        factor = least_squares_factor(problem.key_gram(), moment, hp.mom2_lambda)
        (d_out, d_in), n = problem.weight.shape, problem.keys.shape[1]
        if n < min(d_out, d_in) / 2:
            return Delta(problem.residual.double(), cho_solve(factor, problem.keys))
        return Delta(dense=least_squares_dense(factor, problem.residual_keys()))
