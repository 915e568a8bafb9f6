"""A stream residual through a LayerNorm that takes the residual stream plus the MLP's output:
post-LN blocks (BART, Marian: ``LN(r + o)``), docs/design.md §5.

``LN(u) = g ⊙ (u − mean(u)) / √(var(u) + ε) + b`` discards the mean and the spread of its input
``u = r + o``. At ``u``'s own mean and spread the outputs it can make are
``{g ⊙ t + b : Σ t = 0, Σ t² = d · c}`` with ``c = var / (var + ε)``: an ellipsoid in the
hyperplane of centred vectors. The wanted output ``LN(u) + R`` goes to the nearest such point
(Euclidean, in the stream), then back to an input with ``u``'s mean and spread; the change of
``u`` is the change of ``o`` (``r`` does not depend on the site's weight).

In an orthonormal basis ``W`` (d, d−1) of the centred vectors in which ``Wᵀ diag(g²) W`` is
diagonal (eigenvalues ``λ``, one decomposition per norm), ``t = W s`` and the problem
``min ‖g ⊙ (W s − q)‖²`` subject to ``‖s‖² = d c`` is the nearest-point problem on an
axis-aligned ellipsoid that :func:`massedit.engine.ellipsoid.nearest_on_ellipsoid` solves, after
scaling each row.
"""

from __future__ import annotations

import torch
from torch import nn

from massedit.engine.ellipsoid import nearest_on_ellipsoid

# A norm whose output differs from the LayerNorm formula by more than this (relative) is refused.
_FORM_TOL = 1e-3


def is_layer_norm(norm: nn.Module) -> bool:
    """Whether ``norm`` centres its input (a LayerNorm), rather than only scaling it (RMS)."""
    return isinstance(norm, nn.LayerNorm)


def through_layer_norm(norm: nn.LayerNorm, norm_in: torch.Tensor, residual: torch.Tensor,
                       scale: float = 1.0) -> tuple[torch.Tensor, float]:
    """``Δu`` (rows, d) fp64 such that ``scale · (LN(u + Δu) − LN(u))`` is the part of
    ``residual`` (rows, d) the norm can make at ``u = norm_in`` (rows, d), and ‖what is
    left‖²."""
    u = norm_in.double()  # (rows, d)
    d = u.shape[-1]
    gain, bias = _affine(norm, d, u.device)  # (d,), (d,)
    mean = u.mean(-1, keepdim=True)  # (rows, 1)
    var = u.var(-1, unbiased=False, keepdim=True)  # (rows, 1)
    spread = (var + norm.eps).sqrt()  # (rows, 1)
    now = (u - mean) / spread  # (rows, d): centred, Σ now² = d · c
    _check_form(norm, norm_in, gain * now + bias)
    wanted = gain * now + bias + residual.double() / scale  # (rows, d)
    basis, lam = _centred_eigenbasis(gain)  # (d, d−1), (d−1,)
    q = (wanted - bias) / gain  # (rows, d): wanted, in the norm's t coordinates
    b = (gain.pow(2) * q) @ basis  # (rows, d−1): Wᵀ g² q
    radius2 = (d * var / (var + norm.eps))  # (rows, 1): Σ t² at u's spread
    # s_i = b_i / (λ_i + β) with Σ s² = radius²: nearest_on_ellipsoid's problem with axes √λ and
    # points b / √λ · √(m / radius²), m = d − 1 (it normalises by the mean over the m axes).
    m = lam.shape[0]
    rescale = (m / radius2).sqrt()  # (rows, 1)
    axes = lam.sqrt().expand_as(b)  # (rows, m)
    y = nearest_on_ellipsoid(b / axes * rescale, axes)  # (rows, m)
    t = (y / (axes * rescale)) @ basis.T  # (rows, d): centred, Σ t² = radius²
    reached = gain * t + bias
    delta = mean + spread * t - u  # (rows, d): back at u's mean and spread
    if not bool(torch.isfinite(delta).all()):
        raise ValueError("the residual could not be mapped through the LayerNorm after the MLP")
    return delta, float((wanted - reached).pow(2).sum())


def _affine(norm: nn.LayerNorm, d: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    gain = (torch.ones(d, dtype=torch.float64) if norm.weight is None
            else norm.weight.detach().double()).to(device)
    bias = (torch.zeros(d, dtype=torch.float64) if norm.bias is None
            else norm.bias.detach().double()).to(device)
    if not bool((gain != 0).all()):
        raise ValueError(f"the norm after the MLP ({type(norm).__name__}) has a zero gain: that "
                         "coordinate of the stream cannot be changed")
    return gain, bias


def _check_form(norm: nn.LayerNorm, norm_in: torch.Tensor, expected: torch.Tensor) -> None:
    param = next(norm.parameters(), None)
    device = norm_in.device if param is None else param.device
    with torch.no_grad():
        actual = norm(norm_in.to(device)).double().to(expected.device)
    error = float((actual - expected).norm() / actual.norm().clamp_min(1e-30))
    if error > _FORM_TOL:
        raise ValueError(f"the norm after the MLP ({type(norm).__name__}) does not compute "
                         f"g ⊙ (x − mean) / √(var + ε) + b (relative difference {error:.2g})")


def _centred_eigenbasis(gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W`` (d, d−1) orthonormal, spanning the centred vectors, with ``Wᵀ diag(g²) W =
    diag(λ)``; and ``λ`` (d−1,) > 0."""
    d = gain.shape[0]
    centred = torch.eye(d, dtype=torch.float64, device=gain.device) - 1.0 / d  # (d, d)
    q, _ = torch.linalg.qr(centred[:, : d - 1])  # (d, d−1): the first d−1 columns are independent
    lam, vecs = torch.linalg.eigh(q.T @ (gain.pow(2)[:, None] * q))  # (d−1,), (d−1, d−1)
    return q @ vecs, lam
