"""The one way a solved update reaches a model's weights (docs/design.md §3 step 5, §12).

Both editors (subject edits, ``massedit.editing.editor.Editor``; pair edits,
``massedit.seq2seq.pair_edit.PairEditor``) call :func:`write_update`: guard the update (finite,
not exploding: :func:`check_update`), record the site's original weight in the patch, write
``W + ΔW`` and append the ``SiteDelta``. Keeping the guard and the write together means no
editor can write an update the guard has not seen, and every write is revertible.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from massedit.engine.hparams import EditHparams
from massedit.engine.patch import EditPatch, SiteDelta, patched_weight
from massedit.engine.problem import Delta, SecondMoment
from massedit.models.adapters import Layout, get_module, read_weight, write_weight
from massedit.models.placement import offloaded_modules
from massedit.version import library_versions

logger = logging.getLogger(__name__)


class EditError(RuntimeError):
    """An edit was stopped (non-finite values, exploding update); the model is unchanged."""


# What a user can change when the guard stops an update (docs/design.md §12): the preset was not
# made for this model, too many layers share the residual, or λ lets the edit keys pull too hard.
EXPLODING_UPDATE_ADVICE = (
    "to try: `massedit tune --model MODEL --method METHOD` (chooses layers, λ/μ and target "
    "settings for this model), fewer layers (--set layers=[...]), a larger λ (--set "
    "mom2_lambda=...; MEMIT), μ > 0 (EMMET), a smaller clamp_norm_factor, or, if the update "
    "is wanted, a larger max_update_ratio"
)


def check_update(delta: Delta, weight: torch.Tensor, site: str, max_update_ratio: float,
                 moment: SecondMoment | None = None, ridge: float = 0.0) -> float:
    """Raise :class:`EditError` for a non-finite update or an exploding one; return the ratio
    ‖ΔW‖ / ‖W‖ (Frobenius).

    An update explodes when it is larger than ``max_update_ratio`` × ‖W‖ and, when the site's
    key statistics ``moment`` are given, also changes the layer's output on those keys by more
    than ``max_update_ratio`` × that output's own size: ‖ΔW C½‖ / ‖W C½‖, with C the
    objective's second moment (``ridge`` as ``moment_ridge``), the RMS change of ``W k`` over
    the corpus keys relative to the RMS of ``W k``. ‖W‖ alone says little in small models,
    whose weights barely leave their initialisation: a ROME edit of toy-world facts is 14-52×
    ‖W‖ yet moves the layer's output on its corpus by 0.3-0.7× (‖ΔW C½‖ / ‖W C½‖), while a
    blow-up from an ill-conditioned solve is large in both. The second look is computed only
    when the first is exceeded, so real models (updates well below ‖W‖) pay nothing for it.
    """
    d = delta.matrix()  # (d_out, d_in)
    if not torch.isfinite(d).all():
        raise EditError(f"update at {site} has non-finite values; the edit was stopped")
    # As floats: ΔW is on the keys' device, W on its own (another GPU in a split model).
    ratio = float(d.norm()) / max(float(weight.detach().float().norm()), 1e-12)
    if ratio <= max_update_ratio:
        return ratio
    if moment is None:
        raise EditError(
            f"update at {site} is {ratio:.1f}× the weight's own norm (limit {max_update_ratio}); "
            f"the edit was stopped and the model restored; {EXPLODING_UPDATE_ADVICE}"
        )
    on_keys = output_change(d, weight, moment, ridge)
    if on_keys > max_update_ratio:
        raise EditError(
            f"update at {site} is {ratio:.1f}× the weight's own norm and changes the layer's "
            f"output on its statistics' keys by {on_keys:.1f}× that output's size (limit "
            f"{max_update_ratio}); the edit was stopped and the model restored; "
            f"{EXPLODING_UPDATE_ADVICE}"
        )
    logger.info("update at %s is %.1f× ‖W‖ but changes the output on the keys by %.2f×: kept",
                site, ratio, on_keys)
    return ratio


def output_change(d: torch.Tensor, weight: torch.Tensor, moment: SecondMoment,
                  ridge: float = 0.0) -> float:
    """‖ΔW C½‖ / ‖W C½‖ = √(tr(ΔW C ΔWᵀ) / tr(W C Wᵀ)): how much ``d`` (d_out, d_in) changes the
    layer's output over the keys whose second moment is C, relative to the output itself."""
    c = moment.regularised(ridge).to(weight.device)  # (d_in, d_in) fp64
    w = weight.detach().to(torch.float64)
    dw = d.detach().to(weight.device, torch.float64)
    change = ((dw @ c) * dw).sum()
    size = ((w @ c) * w).sum()
    return float((change / size.clamp_min(1e-300)).sqrt())


def check_sites_on_device(model, sites: list[str]) -> None:
    """Refuse, before any work, edit sites whose weights are offloaded (accelerate's CPU or disk
    offload keeps them on ``meta`` between forward passes; a write there would change nothing
    the next pass reads, docs/design.md §12). The message names the modules to keep on a
    device in the ``device_map``."""
    offloaded = offloaded_modules(model, sites)
    if offloaded:
        where = ", ".join(f'"{site}": 0' for site in offloaded)
        raise EditError(
            f"cannot edit: the edit site(s) {', '.join(offloaded)} are offloaded (weights on the "
            "meta device, loaded only during a forward pass), and an edit must write into them; "
            f"keep them on a device, e.g. add {{{where}}} (or \"cpu\" with no GPU) to the "
            "device_map, or give the GPUs more max_memory so that no edit layer is offloaded")


def write_update(model, site: str, layer: int, layout: Layout, delta: Delta, patch: EditPatch,
                 max_update_ratio: float, moment: SecondMoment | None = None,
                 ridge: float = 0.0) -> float:
    """Check ``delta`` at ``site`` (:func:`check_update`, with the site's key statistics
    ``moment`` when given), then write it into ``model`` and record it in ``patch`` (the
    original weight first, so ``patch.revert`` undoes this write too). Returns the update's
    size ‖ΔW‖ / ‖W‖; raises :class:`EditError`, with nothing written, when the guard refuses
    it."""
    check_sites_on_device(model, [site])  # a meta weight would take the write and drop it
    module = get_module(model, site)
    weight = read_weight(module, layout)  # (d_out, d_in), a view of the parameter
    ratio = check_update(delta, weight, site, max_update_ratio, moment, ridge)
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
