"""The one way a solved update reaches a model's weights (docs/design.md §3 step 5, §12).

Both editors (subject edits, ``massedit.editing.editor.Editor``; pair edits,
``massedit.seq2seq.pair_edit.PairEditor``) call :func:`write_update`: guard the update (finite,
``‖ΔW‖ / ‖W‖ ≤ max_update_ratio``), record the site's original weight in the patch, write
``W + ΔW`` and append the ``SiteDelta``. Keeping the guard and the write together means no
editor can write an update the guard has not seen, and every write is revertible.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from massedit.engine.hparams import EditHparams
from massedit.engine.patch import EditPatch, SiteDelta, patched_weight
from massedit.engine.problem import Delta
from massedit.models.adapters import Layout, get_module, read_weight, write_weight
from massedit.version import library_versions

logger = logging.getLogger(__name__)


class EditError(RuntimeError):
    """An edit was stopped (non-finite values, exploding update); the model is unchanged."""


def check_update(delta: Delta, weight: torch.Tensor, site: str, max_update_ratio: float) -> float:
    """Raise :class:`EditError` for a non-finite update or one larger than ``max_update_ratio``
    × ‖W‖ (Frobenius); return the ratio ‖ΔW‖ / ‖W‖."""
    d = delta.matrix()  # (d_out, d_in)
    if not torch.isfinite(d).all():
        raise EditError(f"update at {site} has non-finite values; the edit was stopped")
    ratio = float(d.norm() / weight.detach().float().norm().clamp_min(1e-12))
    if ratio > max_update_ratio:
        raise EditError(
            f"update at {site} is {ratio:.1f}× the weight's own norm (limit {max_update_ratio}); "
            "the edit was stopped and the model restored"
        )
    return ratio


def write_update(model, site: str, layer: int, layout: Layout, delta: Delta, patch: EditPatch,
                 max_update_ratio: float) -> float:
    """Check ``delta`` at ``site``, then write it into ``model`` and record it in ``patch``
    (the original weight first, so ``patch.revert`` undoes this write too). Returns the
    update's size ‖ΔW‖ / ‖W‖; raises :class:`EditError`, with nothing written, when the guard
    refuses it."""
    module = get_module(model, site)
    weight = read_weight(module, layout)  # (d_out, d_in), a view of the parameter
    ratio = check_update(delta, weight, site, max_update_ratio)
    patch.record_original(site, weight)
    write_weight(module, layout, patched_weight(weight, delta))
    patch.deltas.append(SiteDelta(site, layer, layout, delta))
    return ratio


def edit_metadata(model, hparams: EditHparams, **fields: Any) -> dict[str, Any]:
    """The metadata every patch carries (model, hyper-parameters, library versions) plus the
    editor's own ``fields``."""
    return {
        **fields,
        "model_type": model.config.model_type,
        "model": getattr(model.config, "_name_or_path", ""),
        "hparams": hparams.to_dict(),
        "versions": library_versions(),
    }
