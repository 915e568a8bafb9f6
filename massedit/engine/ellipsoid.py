"""The nearest point of an axis-aligned ellipsoid (the secular equation shared by the norm maps
of docs/design.md §5)."""

from __future__ import annotations

import torch


def nearest_on_ellipsoid(points: torch.Tensor, axes: torch.Tensor,
                         steps: int = 200) -> torch.Tensor:
    """Per row, the point of ``{y : mean((y / axes)²) = 1}`` nearest to ``points`` (n, d),
    all fp64.

    The nearest point is ``y = p ⊙ a² / (a² + λ)`` where ``λ > −min a²`` solves
    ``f(λ) = mean(p² a² / (a² + λ)²) − 1 = 0``; f decreases there, so Newton steps kept inside a
    shrinking bracket (bisection when a step leaves it) find the one root."""
    a2 = axes.pow(2)  # (n, d)
    p2 = points.pow(2)  # (n, d)
    lo = -a2.min(-1).values  # (n,): f → +∞ as λ → lo (unless p is 0 on the shortest axis)
    # f(hi) ≤ mean(p²) · max a² / hi² − 1 ≤ 0.
    hi = (p2.mean(-1) * a2.max(-1).values).sqrt().clamp_min(1e-300)  # (n,)
    lam = torch.zeros_like(lo)  # λ = 0: the point is already on the ellipsoid
    for _ in range(steps):
        den = a2 + lam[:, None]  # (n, d)
        ratio = p2 * a2 / den.pow(2)
        f = ratio.mean(-1) - 1  # (n,)
        if bool((f.abs() < 1e-14).all()):
            break
        slope = -2 * (ratio / den).mean(-1)  # (n,) f'(λ) < 0
        lo = torch.where(f > 0, lam, lo)
        hi = torch.where(f > 0, hi, lam)
        step = lam - f / slope
        inside = (step > lo) & (step < hi) & torch.isfinite(step)
        lam = torch.where(inside, step, (lo + hi) / 2)
    return points * a2 / (a2 + lam[:, None])
