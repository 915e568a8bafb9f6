"""The data passed between the editor and the objectives (docs/design.md §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from massedit.engine.hparams import EditHparams
from massedit.engine.linalg import cholesky_with_ridge, gram_products


@dataclass
class SecondMoment:
    """``C = E[k kᵀ]`` at one site, kept as a sum and a count so that shards add exactly."""

    total: torch.Tensor  # (d_in, d_in), fp32 or fp64
    count: int

    @cached_property
    def mean(self) -> torch.Tensor:  # (d_in, d_in) fp64
        return self.total.to(torch.float64) / max(self.count, 1)

    def regularised(self, ridge: float = 0.0) -> torch.Tensor:
        """``C + ridge · (tr C / d) · I`` (d_in, d_in) fp64.

        Dead or nearly dead MLP units give C eigenvalues near zero; a key with any component
        there makes ``C⁻¹k`` explode. A ridge relative to C's mean eigenvalue bounds that.
        """
        if ridge == 0.0:
            return self.mean
        d = self.mean.shape[0]
        scale = ridge * float(self.mean.diagonal().sum()) / d
        return self.mean + scale * torch.eye(d, dtype=self.mean.dtype, device=self.mean.device)

    def factor(self, scale: float = 1.0, ridge: float = 0.0) -> torch.Tensor:
        """Cholesky factor of ``scale · (C + ridge)``, computed once per layer and reused."""
        cache = self.__dict__.setdefault("_factors", {})
        if (scale, ridge) not in cache:
            cache[(scale, ridge)] = cholesky_with_ridge(scale * self.regularised(ridge))
        return cache[(scale, ridge)]


@dataclass
class LayerProblem:
    """One layer's update problem: write ``Ŵ K ≈ W K + R`` while preserving ``W K₀`` (via C).

    ``keys`` and ``residual`` are the only n-sized tensors. Objectives that need products of
    them ask for :meth:`key_gram` / :meth:`residual_keys`: accumulated in fp64 over column
    chunks on first use and kept, so no n-sized fp64 copy is ever formed (docs/design.md §4).
    Keys of earlier sequential batches come as their product ``Kₚ Kₚᵀ`` (``prior_moment``),
    whose size does not grow with the facts written; :meth:`prior_gram` reads either form.
    """

    weight: torch.Tensor  # W (d_out, d_in), Linear layout, the model's dtype
    keys: torch.Tensor  # K (d_in, n) fp32
    residual: torch.Tensor  # R (d_out, n) fp32, this layer's share
    moment: SecondMoment  # C at this site
    hparams: EditHparams
    layer: int = 0
    # Raw keys of earlier sequential batches (d_in, m), where a caller has them (tests, the
    # conformance kit); the Editor passes ``prior_moment`` instead.
    prior_keys: torch.Tensor | None = None
    prior_moment: torch.Tensor | None = None  # Kₚ Kₚᵀ (d_in, d_in) fp64 of earlier batches

    def _products(self, with_residual: bool) -> dict[str, torch.Tensor]:
        cache = self.__dict__.setdefault("_product_cache", {})
        if "kk" not in cache or (with_residual and "rk" not in cache):
            kk, rk = gram_products(self.keys, self.residual if with_residual else None)
            cache["kk"] = kk
            if rk is not None:
                cache["rk"] = rk
        return cache

    def key_gram(self) -> torch.Tensor:
        """``K Kᵀ`` (d_in, d_in) fp64, accumulated over column chunks once."""
        return self._products(False)["kk"]

    def residual_keys(self) -> torch.Tensor:
        """``R Kᵀ`` (d_out, d_in) fp64, accumulated with ``K Kᵀ`` in one pass over the keys."""
        return self._products(True)["rk"]

    def prior_gram(self) -> torch.Tensor | None:
        """``Kₚ Kₚᵀ`` (d_in, d_in) fp64 of the keys earlier sequential batches wrote (both
        forms given: their sum), or None before the first batch."""
        grams = [] if self.prior_moment is None else [self.prior_moment.to(torch.float64)]
        if self.prior_keys is not None:
            grams.append(gram_products(self.prior_keys)[0])
        return sum(grams[1:], grams[0]) if grams else None


@dataclass(frozen=True)
class BatchPlan:
    """What an objective may check before any work (``check_batch``, docs/design.md §4): the
    size of the largest batch, the narrowest edit site's input width, and the requests that
    share a key within one batch (same text up to the subject's end, so the same key at every
    layer and with every prefix)."""

    n_keys: int
    d_in: int
    same_keys: tuple[tuple[str, ...], ...]
    hparams: EditHparams


@dataclass
class Delta:
    """An update ``ΔW`` (d_out, d_in) as factors ``U Vᵀ`` (rank ≤ n) or dense."""

    u: torch.Tensor | None = None  # (d_out, r)
    v: torch.Tensor | None = None  # (d_in, r)
    dense: torch.Tensor | None = None  # (d_out, d_in)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dense is None and (self.u is None or self.v is None):
            raise ValueError("a Delta needs factors u and v, or a dense matrix")

    def matrix(self) -> torch.Tensor:
        """Dense ``ΔW`` in fp32 (d_out, d_in)."""
        if self.dense is not None:
            return self.dense.to(torch.float32)
        return (self.u.to(torch.float64) @ self.v.to(torch.float64).T).to(torch.float32)

    def compact(self) -> Delta:
        """Factors when they are smaller than the dense matrix (docs/design.md §11), else dense."""
        if self.dense is not None:
            return Delta(dense=self.dense.to(torch.float32), info=self.info)
        d_out, r = self.u.shape
        d_in = self.v.shape[0]
        if r < min(d_out, d_in) / 2:
            return Delta(self.u.to(torch.float32), self.v.to(torch.float32), info=self.info)
        return Delta(dense=self.matrix(), info=self.info)
