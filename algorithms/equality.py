"""EMMET's equality-constrained objective; ROME is its n = 1, μ = 0 case.

``min ‖Ŵ K₀ − W K₀‖²  subject to  Ŵ K = W K + R`` (softened by μ when keys are near-dependent).
"""

from __future__ import annotations

from massedit.engine.linalg import equality_factors
from massedit.engine.problem import BatchPlan, Delta, LayerProblem


class EqualityObjective:
    """EMMET/ROME: ΔW = R (Kᵀ C⁻¹ K + μI)⁻¹ Kᵀ C⁻¹ — write the new keys exactly (μ = 0)."""

    name = "equality"
    exact = True  # with μ = 0 the new keys are written exactly (conformance kit checks it)

    def check_batch(self, plan: BatchPlan) -> str | None:
        """With μ = 0 every key is an equality constraint: more keys than the site's input
        width, or two requests with the same key, have no solution. Said before any work
        (docs/design.md §12) rather than after an hour of targets."""
        if plan.hparams.mu > 0:
            return None
        if plan.n_keys > plan.d_in:
            return (f"the equality objective (EMMET) with mu = 0 writes each key exactly, and "
                    f"{plan.n_keys} keys in one batch cannot all be written exactly at an edit "
                    f"site of input width d_in = {plan.d_in} (at most d_in independent "
                    f"constraints); use mu > 0 (e.g. --set mu=1, a soft constraint) or a batch "
                    f"size of at most {plan.d_in}")
        if plan.same_keys:
            groups = "; ".join(", ".join(g) for g in plan.same_keys[:5])
            return (f"the equality objective (EMMET) with mu = 0 cannot write two different "
                    f"values for one key, and these requests share a key (the same text up to "
                    f"the subject's end): {groups}; put them in different batches, use mu > 0, "
                    f"or use least squares (memit)")
        return None

    def solve(self, problem: LayerProblem) -> Delta:
        hp = problem.hparams
        # C enters as λC so that μ is measured against the same scale as in least squares.
        factor = problem.moment.factor(hp.mom2_lambda, hp.moment_ridge)
        u, v = equality_factors(problem.residual, problem.keys, factor, hp.mu)
        return Delta(u, v)
