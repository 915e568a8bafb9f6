"""fp64 linear algebra for the closed-form updates: pure functions of tensors.

Every solve goes through a Cholesky factor (or ``torch.linalg.solve`` for small systems); no
explicit inverse is ever formed. A singular second moment (dead units exist in real models) gets
a growing ridge until it factors.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def cholesky_with_ridge(a: torch.Tensor, *, max_tries: int = 8) -> torch.Tensor:
    """Lower Cholesky factor of symmetric ``a`` (d, d), adding ``eps·mean(diag)·I`` if needed."""
    a = a.to(torch.float64)
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return factor
    scale = a.diagonal().abs().mean().clamp_min(1e-30)
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    for i in range(max_tries):
        ridge = scale * 10.0 ** (-10 + i)
        factor, info = torch.linalg.cholesky_ex(a + ridge * eye)
        if int(info) == 0:
            logger.info("matrix was singular: added a ridge of %.3g to factor it", float(ridge))
            return factor
    raise ValueError(
        "matrix is not positive definite even with a ridge; the statistics look broken"
    )


def cho_solve(factor: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``A x = b`` given ``A``'s lower Cholesky factor; ``b`` is (d, n)."""
    return torch.cholesky_solve(b.to(torch.float64), factor)


def least_squares_factors(
    residual: torch.Tensor, keys: torch.Tensor, moment: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MEMIT: ``ΔW = R Kᵀ (λC + K Kᵀ)⁻¹`` as factors ``U Vᵀ``.

    residual (d_out, n), keys (d_in, n), moment C (d_in, d_in) -> U (d_out, n), V (d_in, n)
    """
    k = keys.to(torch.float64)
    a = lam * moment.to(torch.float64) + k @ k.T  # (d_in, d_in)
    v = cho_solve(cholesky_with_ridge(a), k)  # (d_in, n) = A⁻¹ K, A symmetric
    return residual.to(torch.float64), v


def equality_factors(
    residual: torch.Tensor, keys: torch.Tensor, moment_factor: torch.Tensor, mu: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMMET (ROME at n = 1, μ = 0): ``ΔW = R (Kᵀ C⁻¹ K + μ I)⁻¹ Kᵀ C⁻¹`` as ``U Vᵀ``.

    residual (d_out, n), keys (d_in, n), moment_factor = chol(C) (d_in, d_in)
    -> U (d_out, n), V (d_in, n) with V = C⁻¹ K and U = R (Kᵀ C⁻¹ K + μI)⁻¹.
    At n = 1 this is ``(v* − W k)(C⁻¹k)ᵀ / (kᵀ C⁻¹ k)`` with the same key in both places.
    """
    k = keys.to(torch.float64)
    v = cho_solve(moment_factor, k)  # (d_in, n)
    gram = k.T @ v  # (n, n) = Kᵀ C⁻¹ K, symmetric positive definite for independent keys
    gram = 0.5 * (gram + gram.T) + mu * torch.eye(
        gram.shape[0], dtype=gram.dtype, device=gram.device
    )
    u = torch.linalg.solve(gram, residual.to(torch.float64).T).T  # (d_out, n) = R M⁻¹
    return u, v
