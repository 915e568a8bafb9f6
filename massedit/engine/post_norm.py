"""From a change of the residual stream to the change of the edit site's output that makes it
(docs/design.md §5, "Edits through a norm after the MLP").

Targets and residuals live in the residual stream (block ``L``'s output), but the edited weight
writes the MLP's output ``o``. Most models add ``o`` to the stream unchanged; Granite adds
``m · o``; Gemma 2/3 and OLMo 2 add ``N(o) = a ⊙ o / rms(o)`` (an RMS norm after the MLP);
post-LN blocks (BART, Marian) output ``LN(r + o)`` (:mod:`massedit.engine.layer_norm_map`). Every
norm is read at its own input ``u`` (``o``, or ``r + o``), whose change is the site's. This
module turns the stream residual ``R`` of each request into the site-space residual ``Δo``:

- ``R / m`` for a scale;
- for a norm, ``N(o) + R`` is first moved to the nearest point the norm can output at ``o``'s
  length (an ellipsoid: the norm discards the length of ``o``, so the component of ``R`` along
  the ellipsoid's normal cannot be made), then mapped back exactly. ``R`` that the norm can make
  is written exactly; to first order this is the pseudo-inverse ``J⁺ R`` of the norm's Jacobian.

>>> delta_o = site_residual(model, tok, adapter, layer, requests, residual)   # (n, d_out)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from massedit.engine.ellipsoid import nearest_on_ellipsoid
from massedit.engine.keys import Read, subject_states
from massedit.engine.layer_norm_map import is_layer_norm, through_layer_norm
from massedit.engine.requests import EditRequest
from massedit.models.adapters import ModelAdapter, get_module

logger = logging.getLogger(__name__)

# A norm whose output differs from a ⊙ o / rms(o) by more than this (relative) is not an RMS norm.
_RMS_FORM_TOL = 1e-3
_ROWS = 1024  # requests mapped at once


def site_residual(
    model,
    tok,
    adapter: ModelAdapter,
    layer: int,
    requests: Sequence[EditRequest],
    residual: torch.Tensor,
    batch_rows: int = 64,
) -> torch.Tensor:
    """The change of layer ``layer``'s site output at each request's subject token that moves
    the block's output by ``residual`` (n, d) fp32, on the current model: ``residual`` itself
    where the MLP's output is added unchanged (no pass is run), else what
    :func:`stream_to_site` gives, at the norm's input on each plain prompt."""
    scale = adapter.mlp_out_scale(model.config)
    norm_name = adapter.mlp_out_norm_name(layer)
    if norm_name is None:
        return residual if scale == 1.0 else residual / scale
    # The norm's input on the plain prompt, where the residual's block output h was read.
    (norm_in,) = subject_states(model, tok, requests, [""],
                                [Read(norm_name, inputs=True, average=False)],
                                stop_at=adapter.block_name(layer), batch_rows=batch_rows)  # (n, d)
    return stream_to_site(get_module(model, norm_name), norm_in.to(residual), residual, scale)


@dataclass
class ReachableChange:
    """What the edit layers' MLPs can do to the stream together: ``δ ↦ Σ_l m · (N_l(u_l + δ_l)
    − N_l(u_l))`` (n, d) for changes ``δ_l`` of each site's output, where ``u_l`` is the input
    of the norm after it (the site's output ``o_l``, or ``r_l + o_l`` in a post-LN block) at
    each request's subject token (first order: each layer's change reaches the stream as if the
    others had not moved). Targets are optimised over the ``δ_l`` through this map where a norm
    follows the MLP, so every target is one the sites can write (docs/design.md §5)."""

    norms: tuple[nn.Module, ...]
    norm_in: torch.Tensor  # (n, k, d) fp32: the norms' inputs u, k edit layers, plain prompts
    scale: float = 1.0

    @property
    def width(self) -> int:
        """Length of one request's free vector: the k sites' outputs end to end."""
        return self.norm_in.shape[1] * self.norm_in.shape[2]

    def select(self, index: Sequence[int]) -> ReachableChange:
        rows = torch.as_tensor(list(index), dtype=torch.long, device=self.norm_in.device)
        return ReachableChange(self.norms, self.norm_in[rows], self.scale)

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        """The stream change (n, d) for ``delta`` (n, k·d), on ``delta``'s device,
        differentiable in ``delta``."""
        per_site = delta.view(*self.norm_in.shape)  # (n, k, d)
        moved = delta.new_zeros(self.norm_in.shape[0], self.norm_in.shape[2])  # (n, d)
        for j, norm in enumerate(self.norms):
            param = next(norm.parameters(), None)
            at = delta.device if param is None else param.device
            o = self.norm_in[:, j].to(at)  # (n, d)
            change = norm(o + per_site[:, j].to(at)).float() - norm(o).float()  # (n, d)
            moved = moved + change.to(delta.device)
        return self.scale * moved


def reachable_change(model, tok, adapter: ModelAdapter, layers: Sequence[int],
                     requests: Sequence[EditRequest],
                     batch_rows: int = 64) -> ReachableChange | None:
    """The :class:`ReachableChange` of the sites of ``layers`` for ``requests``, or None where
    the MLP's output reaches the stream without a norm (any change is then reachable)."""
    norm_names = [adapter.mlp_out_norm_name(layer) for layer in layers]
    if any(name is None for name in norm_names):
        return None
    outs = subject_states(model, tok, requests, [""],
                          [Read(name, inputs=True, average=False) for name in norm_names],
                          stop_at=adapter.block_name(layers[-1]),
                          batch_rows=batch_rows)  # k × (n, d)
    return ReachableChange(tuple(get_module(model, name) for name in norm_names),
                           torch.stack([o.float() for o in outs], dim=1),
                           adapter.mlp_out_scale(model.config))


def stream_to_site(norm: nn.Module | None, site_out: torch.Tensor, residual: torch.Tensor,
                   scale: float = 1.0) -> torch.Tensor:
    """``Δo`` (n, d) such that ``scale · (N(o + Δo) − N(o))`` is the reachable part of
    ``residual`` (n, d), with ``o = site_out`` (n, d), the norm's input, and ``N = norm``
    (None: the identity; a LayerNorm: :func:`~massedit.engine.layer_norm_map.through_layer_norm`).

    The reachable outputs at ``o``'s length are the ellipsoid ``{a ⊙ t : mean(t²) = 1}`` with
    ``a = N(rms(o) · 1)`` (the gain, times ``rms/√(rms² + eps)``); the target ``N(o) + R/scale``
    goes to its nearest point ``y`` and ``o + Δo = rms(o) · y / a``."""
    if norm is None:
        return (residual.double() / scale).to(residual.dtype)
    # Rows at a time: the solve keeps a few (rows, d) fp64 temporaries.
    through = through_layer_norm if is_layer_norm(norm) else _through_norm
    parts = [through(norm, site_out[lo : lo + _ROWS], residual[lo : lo + _ROWS], scale)
             for lo in range(0, residual.shape[0], _ROWS)]
    delta = torch.cat([d for d, _ in parts])  # (n, d)
    wanted = max(float(residual.double().norm()) / abs(scale), 1e-30)
    logger.info("norm after the MLP: %.3g of the residual is along its normal (not writable)",
                sum(x for _, x in parts) ** 0.5 / wanted)
    return delta.to(residual.dtype)


def _through_norm(norm: nn.Module, site_out: torch.Tensor, residual: torch.Tensor,
                  scale: float) -> tuple[torch.Tensor, float]:
    """:func:`stream_to_site` for a few rows: ``Δo`` (rows, d) fp64 and ‖what is left‖²."""
    target = residual.double() / scale  # (rows, d)
    o = site_out.double()  # (rows, d)
    rms = o.pow(2).mean(-1, keepdim=True).sqrt()  # (rows, 1)
    if not bool((rms > 0).all()):
        raise ValueError("the MLP's output is zero at a subject token: its norm has no direction")
    gains = _rms_gains(norm, o, rms)  # (rows, d)
    wanted = gains * o / rms + target  # N(o) + R / scale; N(o) is on the ellipsoid
    reached = nearest_on_ellipsoid(wanted, gains)  # (rows, d)
    delta = rms * reached / gains - o  # (rows, d)
    if not bool(torch.isfinite(delta).all()):
        raise ValueError("the residual could not be mapped through the norm after the MLP")
    return delta, float((wanted - reached).pow(2).sum())


def _rms_gains(norm: nn.Module, o: torch.Tensor, rms: torch.Tensor) -> torch.Tensor:
    """``a`` (n, d) with ``N(x) = a ⊙ x / rms(x)`` for every x of o's length, read from the module
    itself (any gain convention, ``1 + w`` or ``w``; eps included), and checked on ``o``."""
    param = next(norm.parameters(), None)
    device = o.device if param is None else param.device
    # fp32 in: RMS norms compute in fp32 and return their input's dtype, whatever the weight's.
    with torch.no_grad():
        probe = rms.float().to(device).expand(o.shape).contiguous()  # (n, d) rows of rms(o)
        gains = norm(probe).double().to(o.device)  # (n, d): a = g · rms / √(rms² + eps)
        actual = norm(o.float().to(device)).double().to(o.device)  # (n, d)
    expected = gains * o / rms
    error = float((actual - expected).norm() / actual.norm().clamp_min(1e-30))
    if error > _RMS_FORM_TOL:
        raise ValueError(
            f"the norm after the MLP ({type(norm).__name__}) is not of the form g ⊙ x / rms(x) "
            f"(relative difference {error:.2g}); massedit can only edit through RMS norms")
    if not bool((gains != 0).all()):
        raise ValueError(f"the norm after the MLP ({type(norm).__name__}) has a zero gain: that "
                         "coordinate of the stream cannot be changed")
    return gains


def stream_change(norm: nn.Module | None, site_out: torch.Tensor, change: torch.Tensor,
                  scale: float = 1.0) -> torch.Tensor:
    """The forward map (tests, diagnostics): what the stream receives, ``scale · (N(o + Δo) −
    N(o))`` (n, d), when the site's output ``o`` (n, d) changes by ``change`` (n, d)."""
    if norm is None:
        return scale * change
    with torch.no_grad():
        return scale * (norm(site_out + change) - norm(site_out))
