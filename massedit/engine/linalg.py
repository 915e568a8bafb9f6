"""fp64 linear algebra for the closed-form updates: pure functions of tensors.

Every solve goes through a Cholesky factor; no explicit inverse is ever formed. A singular second
moment (dead units exist in real models) gets a growing ridge until it factors. Products over the
n keys are accumulated over column chunks, so no fp64 copy of the (d, n) keys or residuals is
ever made (docs/design.md §5, §11).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

# fp64 working memory of one column chunk (docs/design.md §11): 64 MiB.
CHUNK_BYTES = 64 << 20


class SingularProblemError(ValueError):
    """A layer's system has no stable solution; the message says why and what to change."""


def column_chunk(rows: int, budget_bytes: int = CHUNK_BYTES) -> int:
    """How many columns of a (rows, n) matrix fit in ``budget_bytes`` as fp64."""
    return max(1, budget_bytes // (8 * max(rows, 1)))


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


def gram_products(
    keys: torch.Tensor, residual: torch.Tensor | None = None, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``K Kᵀ`` (d_in, d_in) and ``R Kᵀ`` (d_out, d_in) in fp64, summed over column chunks.

    keys (d_in, n), residual (d_out, n) or None; ``chunk`` columns at a time (default: what
    fits in :data:`CHUNK_BYTES`), so the only n-sized tensors are the inputs themselves.
    """
    d_in, n = keys.shape
    rows = d_in + (0 if residual is None else residual.shape[0])
    chunk = chunk or column_chunk(rows)
    kk = torch.zeros(d_in, d_in, dtype=torch.float64, device=keys.device)
    rk = None
    if residual is not None:
        rk = torch.zeros(residual.shape[0], d_in, dtype=torch.float64, device=keys.device)
    for lo in range(0, n, chunk):
        k = keys[:, lo : lo + chunk].to(torch.float64)  # (d_in, c)
        kk.addmm_(k, k.T)
        if rk is not None:
            rk.addmm_(residual[:, lo : lo + chunk].to(torch.float64), k.T)
    return 0.5 * (kk + kk.T), rk  # exactly symmetric, whatever the summation order


def least_squares_factor(
    key_gram: torch.Tensor, moment: torch.Tensor, lam: float
) -> torch.Tensor:
    """Cholesky factor of MEMIT's ``λC + K Kᵀ`` (d_in, d_in), from the accumulated ``K Kᵀ``."""
    return cholesky_with_ridge(lam * moment.to(torch.float64) + key_gram)


def least_squares_dense(factor: torch.Tensor, residual_keys: torch.Tensor) -> torch.Tensor:
    """MEMIT's ``ΔW = R Kᵀ (λC + K Kᵀ)⁻¹`` (d_out, d_in) from ``R Kᵀ`` (d_out, d_in) and the
    factor of the symmetric system: the transpose of ``A⁻¹ (R Kᵀ)ᵀ``. Cost O(d_out · d_in²),
    independent of n."""
    return cho_solve(factor, residual_keys.T).T


def least_squares_factors(
    residual: torch.Tensor, keys: torch.Tensor, moment: torch.Tensor, lam: float,
    key_gram: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MEMIT: ``ΔW = R Kᵀ (λC + K Kᵀ)⁻¹`` as factors ``U Vᵀ`` (cheaper than dense for small n).

    residual (d_out, n), keys (d_in, n), moment C (d_in, d_in), key_gram ``K Kᵀ`` if already
    accumulated -> U (d_out, n), V (d_in, n)
    """
    if key_gram is None:
        key_gram, _ = gram_products(keys)
    v = cho_solve(least_squares_factor(key_gram, moment, lam), keys)  # (d_in, n) = A⁻¹ K
    return residual.to(torch.float64), v


_SINGULAR_PIVOT = 1e-10  # relative pivot below which the EMMET Gram counts as singular


def equality_factors(
    residual: torch.Tensor, keys: torch.Tensor, moment_factor: torch.Tensor, mu: float,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMMET (ROME at n = 1, μ = 0): ``ΔW = R (Kᵀ C⁻¹ K + μ I)⁻¹ Kᵀ C⁻¹`` as ``U Vᵀ``.

    residual (d_out, n), keys (d_in, n), moment_factor = chol(C) (d_in, d_in)
    -> U (d_out, n), V (d_in, n) with V = C⁻¹ K and U = R (Kᵀ C⁻¹ K + μI)⁻¹.
    At n = 1 this is ``(v* − W k)(C⁻¹k)ᵀ / (kᵀ C⁻¹ k)`` with the same key in both places.
    V and the n × n Gram matrix are built over column chunks (no fp64 copy of K). Raises
    :class:`SingularProblemError` when the Gram matrix is singular (more keys than the site's
    input width, or dependent keys, with μ = 0).
    """
    d_in, n = keys.shape
    chunk = chunk or column_chunk(d_in)
    v = torch.empty(d_in, n, dtype=torch.float64, device=keys.device)  # C⁻¹ K
    for lo in range(0, n, chunk):
        v[:, lo : lo + chunk] = cho_solve(moment_factor, keys[:, lo : lo + chunk])
    gram = torch.empty(n, n, dtype=torch.float64, device=keys.device)  # Kᵀ C⁻¹ K
    for lo in range(0, n, chunk):
        gram[lo : lo + chunk] = keys[:, lo : lo + chunk].to(torch.float64).T @ v
    gram = 0.5 * (gram + gram.T)
    gram.diagonal().add_(mu)
    factor, info = torch.linalg.cholesky_ex(gram)
    # Keys come from fp32 passes: two copies of one key differ by rounding, so an exactly
    # singular Gram can factor with a pivot at rounding level. A pivot below 1e-10 of the
    # largest diagonal (condition ~1e10) is treated as singular too.
    pivots = factor.diagonal().square()  # (n,) Schur complements of the Gram
    if int(info) != 0 or bool(pivots.min() <= _SINGULAR_PIVOT * gram.diagonal().max()):
        raise SingularProblemError(
            f"the {n} keys' Gram matrix Kᵀ C⁻¹ K + μI (μ = {mu:g}) is singular: "
            + (f"{n} equality constraints cannot all hold at a site of input width {d_in}"
               if n > d_in else "some keys are (nearly) linearly dependent")
            + "; use mu > 0 (a soft constraint) or smaller batches")
    u = cho_solve(factor, residual.T).T  # (d_out, n) = R M⁻¹, M symmetric
    return u, v
