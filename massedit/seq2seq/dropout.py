"""Edit-dropout (docs/design.md §5, §7): after solving, drop components of the update at random.

The components are the update's input units: row ``j`` of the key-side factor ``V`` (d_in, n),
i.e. column ``j`` of ``ΔW`` — MLP unit ``j`` no longer feeds the edit. Each is dropped with
probability ``p`` (a seeded generator, so a patch can say exactly which). What happens to the
survivors is the caller's choice (``rescale``):

- ``"exact"`` (default): re-solve ``U`` so that ``Ŵ K = W K + R`` still holds exactly for the
  edited keys, ``U = R (V_dᵀ K)⁻¹`` — the edit keeps its efficacy on its own keys, while its
  response to every other key is carried by fewer units;
- ``"inverse"``: divide by ``1 − p`` (classic dropout scaling);
- ``"none"``: keep the survivors as they are.
"""

from __future__ import annotations

from typing import Literal

import torch

from massedit.engine.problem import Delta

Rescale = Literal["exact", "inverse", "none"]


def edit_dropout(
    delta: Delta, keys: torch.Tensor, residual: torch.Tensor, p: float, seed: int,
    rescale: Rescale = "exact",
) -> Delta:
    """``delta`` with each input unit dropped with probability ``p``; the record is in ``info``.

    keys (d_in, n), residual (d_out, n): the problem the delta solved (for ``"exact"``).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"edit-dropout probability must be in [0, 1), got {p}")
    if delta.u is None or delta.v is None:
        raise ValueError("edit-dropout needs a factored update (U Vᵀ)")
    if rescale not in ("exact", "inverse", "none"):
        raise ValueError(f"rescale must be 'exact', 'inverse' or 'none', got {rescale!r}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d_in = delta.v.shape[0]
    keep = torch.rand(d_in, generator=gen) >= p  # (d_in,) bool
    v = delta.v.to(torch.float64) * keep.to(delta.v.device, torch.float64)[:, None]  # (d_in, n)
    u = delta.u.to(torch.float64)  # (d_out, n)
    if rescale == "inverse":
        v = v / (1.0 - p)
    elif rescale == "exact":
        gram = v.T @ keys.to(torch.float64)  # (n, n) = V_dᵀ K
        u = torch.linalg.solve(gram.T, residual.to(torch.float64).T).T  # (d_out, n) = R gram⁻¹
    info = {**delta.info, "edit_dropout": {
        "p": p, "seed": seed, "rescale": rescale, "kept_units": int(keep.sum()),
        "units": d_in}}
    return Delta(u, v, info=info)
