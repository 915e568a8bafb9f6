"""MEND's hypernetwork (Mitchell et al. 2022, "Fast Model Editing at Scale"): a gradient
transform that maps the rank-1 factors of a fine-tuning gradient to those of a weight update.

For a linear site ``o = W x`` and a loss L, ``∂L/∂W = Σ_t δ_t x_tᵀ`` over the tokens t of the
edit's rows, with ``x_t`` the site's input ``(d_in,)`` and ``δ_t = ∂L/∂o_t`` ``(d_out,)``. MEND
never forms that ``(d_out, d_in)`` matrix: each pair ``(x_t, δ_t)`` is normalised (running mean
and standard deviation seen in training), concatenated, and passed through a small MLP of
low-rank residual layers with identity initialisation and a per-site scale and shift, which
returns ``(x̃_t, δ̃_t)``; the update is ``ΔW = −η_l · Σ_t δ̃_t x̃_tᵀ`` with a learned step ``η_l``
per site (docs/design.md §4, whole editors). One transform serves all edit sites (they share a
shape); the site's index selects its scale and shift (MEND's ``shared=True`` with ``n_modes``).

Pure torch: nothing here knows a transformer. Differences from the reference code
(eric-mitchell/mend ``algs/mend.py``, ``nn.py``), on purpose:
- the update is a descent step, ``−η Σ δ̃ x̃ᵀ`` with ``η > 0`` at initialisation (the reference
  adds ``+η Σ`` and leaves the sign to training), so the untrained network already lowers the
  edit loss like one step of fine-tuning;
- the low-rank layers' ``V`` starts as ``N(0, 1/dim)`` (the reference: ``N(0, 1)``), so ``V x``
  has unit scale and the outer learning rate can be large enough to train on a CPU;
- running statistics are merged per batch of tokens (Chan et al.'s parallel update, fp64), not
  token by token; the result is the same up to rounding.
"""

from __future__ import annotations

import torch
from torch import nn


class LowRankResidual(nn.Module):
    """``x + relu((U V x + b) ⊙ scale[mode] + shift[mode])``; ``U = 0`` at initialisation, so
    the layer starts as the identity (MEND's ``LRLinear`` with ``init="id"``)."""

    def __init__(self, dim: int, rank: int, n_modes: int) -> None:
        super().__init__()
        rank = min(rank, dim)
        self.u = nn.Parameter(torch.zeros(dim, rank))  # (dim, r)
        self.v = nn.Parameter(torch.randn(rank, dim) / dim ** 0.5)  # (r, dim)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))  # per-site scale
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))  # per-site shift

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:  # x (t, dim)
        pre = (x @ self.v.T) @ self.u.T + self.bias  # (t, dim)
        pre = pre * self.mode_scale[mode] + self.mode_shift[mode]
        return x + pre.clamp(min=0)  # clamp, not relu: MEND keeps the gradient defined at 0


class RunningMoments(nn.Module):
    """Mean and variance of rows seen in training (fp64 buffers: count, mean, sum of squared
    deviations), merged one batch at a time; frozen once training ends."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def observe(self, rows: torch.Tensor) -> None:  # rows (t, dim)
        rows = rows.double()
        n = float(rows.shape[0])
        if n == 0:
            return
        mean_b = rows.mean(0)
        m2_b = ((rows - mean_b) ** 2).sum(0)
        total = self.count + n
        diff = mean_b - self.mean
        self.mean += diff * (n / total)
        self.m2 += m2_b + diff ** 2 * (self.count * n / total)
        self.count.fill_(total)

    def normalise(self, rows: torch.Tensor) -> torch.Tensor:  # (t, dim) fp32
        if float(self.count) < 2:
            raise RuntimeError("MEND's normalisation needs at least 2 rows seen in training")
        std = (self.m2 / (self.count - 1)).sqrt()
        return (rows.float() - self.mean.float()) / (std.float() + 1e-7)


class GradientTransform(nn.Module):
    """The hypernetwork of all edit sites of one shape: ``(x, δ) → (x̃, δ̃)`` and the update.

    ``n_sites`` sites share the MLP; ``edit_lr`` holds the learned step ``η`` of each."""

    def __init__(self, d_in: int, d_out: int, n_sites: int, rank: int, n_hidden: int = 1,
                 edit_lr: float = 1e-4) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.x_moments = RunningMoments(d_in)
        self.delta_moments = RunningMoments(d_out)
        dim = d_in + d_out  # MEND's combine=True: one MLP over [x; δ]
        self.layers = nn.ModuleList(
            LowRankResidual(dim, rank, n_sites) for _ in range(n_hidden + 1))
        self.edit_lr = nn.Parameter(torch.full((n_sites,), float(edit_lr)))

    def observe(self, x: torch.Tensor, delta: torch.Tensor) -> None:
        """Add training rows ``x (t, d_in)``, ``δ (t, d_out)`` to the running statistics."""
        self.x_moments.observe(x)
        self.delta_moments.observe(delta)

    def forward(self, x: torch.Tensor, delta: torch.Tensor,
                site: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x̃ (t, d_in), δ̃ (t, d_out))`` for site index ``site``."""
        h = torch.cat([self.x_moments.normalise(x), self.delta_moments.normalise(delta)], -1)
        for layer in self.layers:
            h = layer(h, site)  # (t, d_in + d_out)
        return h[:, : self.d_in], h[:, self.d_in :]

    def update_factors(self, x: torch.Tensor, delta: torch.Tensor,
                       site: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``ΔW = U Vᵀ`` for the site: ``U = −η δ̃ᵀ (d_out, t)``, ``V = x̃ᵀ (d_in, t)``."""
        x_t, d_t = self(x, delta, site)
        return -self.edit_lr[site] * d_t.T, x_t.T

    def update(self, x: torch.Tensor, delta: torch.Tensor, site: int) -> torch.Tensor:
        """The dense ``ΔW = −η Σ_t δ̃_t x̃_tᵀ (d_out, d_in)``, fp32."""
        u, v = self.update_factors(x, delta, site)
        return u @ v.T
