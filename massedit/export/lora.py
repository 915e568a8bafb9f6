"""One edit site's updates as LoRA factors ``B A`` (docs/design.md §14).

A closed-form edit is low rank per site: each written ``Delta`` is ``U Vᵀ`` with rank at most its
batch's number of facts, or a dense ``ΔW`` of that rank. LoRA adds ``B (A x)`` with ``B`` =
``(d_out, r)`` and ``A`` = ``(r, d_in)``, so with the scale ``lora_alpha / r = 1`` the factors of
all the site's deltas, side by side, are an exact adapter. Only where they are not available or
not small (dense deltas, many sequential batches at one site) is the summed ``ΔW`` factored by an
SVD, dropping only singular values below what the stored fp32 ``ΔW`` can resolve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


class ExportError(ValueError):
    """A patch that cannot be written in the asked format (the message says why)."""


class AdapterTooLargeError(ExportError):
    """LoRA factors would take as much room as the dense update: the adapter saves nothing."""


@dataclass(frozen=True)
class SiteLora:
    """LoRA factors of one site: ``ΔW = b @ a`` (Linear layout), both fp32 on the CPU."""

    site: str
    a: torch.Tensor  # (r, d_in)
    b: torch.Tensor  # (d_out, r)
    via_svd: bool  # True when the factors come from an SVD of the summed ΔW

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def saves_space(self) -> bool:
        """``r (d_in + d_out) < d_in d_out``: the factors are smaller than the dense ``ΔW``."""
        d_out, d_in = self.b.shape[0], self.a.shape[1]
        return self.rank * (d_in + d_out) < d_in * d_out


def _balanced(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` = ``(Vᵀ / s, U s)`` with ``s = √(‖v_i‖ / ‖u_i‖)`` per column: the same product,
    with both factors of one size, so that a half-precision adapter loses nothing to range."""
    u, v = u.to(torch.float64), v.to(torch.float64)  # (d_out, r), (d_in, r)
    s = (v.norm(dim=0) / u.norm(dim=0).clamp_min(1e-300)).sqrt().clamp_min(1e-300)  # (r,)
    return (v / s).T.to(torch.float32).contiguous(), (u * s).to(torch.float32).contiguous()


def _svd_factors(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact-rank factors of a dense ``(d_out, d_in)`` update by an fp64 SVD.

    Singular values below ``σ_max · max(d_out, d_in) · eps(fp32)`` are dropped: the stored
    ``ΔW`` is fp32, so they are below its own rounding and dropping them changes nothing it can
    represent."""
    u, s, vh = torch.linalg.svd(dense.to(torch.float64), full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return dense.new_zeros(0, dense.shape[1]), dense.new_zeros(dense.shape[0], 0)
    tol = float(s[0]) * max(dense.shape) * torch.finfo(torch.float32).eps
    r = int((s > tol).sum())
    root = s[:r].sqrt()  # split σ evenly between the factors
    return ((vh[:r] * root[:, None]).to(torch.float32).contiguous(),
            (u[:, :r] * root).to(torch.float32).contiguous())


def site_lora(site: str, deltas: Sequence) -> SiteLora:
    """LoRA factors of the sum of ``deltas`` (``Delta`` objects of one site, in order).

    All-factor deltas are concatenated (``ΔW = Σ U_i V_iᵀ = [U_1 … U_k] [V_1 … V_k]ᵀ``), exactly;
    when any delta is dense, or the concatenated rank reaches ``min(d_out, d_in)``, the summed
    ``ΔW`` is factored by :func:`_svd_factors` instead."""
    if not deltas:
        raise ExportError(f"site {site!r} has no update")
    factored = all(d.dense is None for d in deltas)
    if factored:
        u = torch.cat([d.u.cpu() for d in deltas], dim=1)  # (d_out, Σ r_i)
        v = torch.cat([d.v.cpu() for d in deltas], dim=1)  # (d_in, Σ r_i)
        if u.shape[1] < min(u.shape[0], v.shape[0]):
            a, b = _balanced(u, v)
            return SiteLora(site, a, b, via_svd=False)
    total = sum(d.matrix().cpu().to(torch.float64) for d in deltas)  # (d_out, d_in)
    a, b = _svd_factors(total)
    return SiteLora(site, a, b, via_svd=True)
