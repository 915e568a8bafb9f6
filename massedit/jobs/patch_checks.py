"""Checks a patch read from disk must pass before it touches a model or joins another patch.

A patch folder is data a user may have copied, edited by hand or mixed up with another run's
(docs/design.md §12): every problem is reported naming the folder and what is wrong, before
anything is written. ``EditPatch.apply`` still checks the base weights' digests; these checks
come first, so a site that is no module, or a delta of another shape, is named as such rather
than as "another base model".
"""

from __future__ import annotations

from pathlib import Path

import torch

from massedit.engine.patch import EditPatch, patched_weight
from massedit.models.adapters import read_weight
from massedit.models.placement import offloaded_modules


class PatchError(ValueError):
    """A patch folder does not fit the model, or patches do not follow one another."""


def check_patch_fits(patch: EditPatch, model, source: str | Path) -> None:
    """Every site the patch names is a module of ``model`` with a weight, and every delta and
    original weight has that weight's shape (Linear layout ``(d_out, d_in)``)."""
    problems = []
    shapes: dict[str, tuple[int, ...]] = {}
    for sd in patch.deltas:
        if sd.site not in shapes:
            try:
                module = model.get_submodule(sd.site)
                shapes[sd.site] = tuple(read_weight(module, sd.layout).shape)
            except AttributeError:
                problems.append(f"site {sd.site!r} is not a module of this "
                                f"{type(model).__name__} (or has no weight)")
                shapes[sd.site] = ()
                continue
        want, got = shapes[sd.site], _delta_shape(sd.delta)
        if want and got != want:
            problems.append(f"the delta for {sd.site!r} is {got} but the weight there is "
                            f"{want} (layout {sd.layout!r})")
    for site, original in patch.originals.items():
        want = shapes.get(site)
        if want and tuple(original.shape) != want:
            problems.append(f"the original weight of {site!r} is {tuple(original.shape)} but "
                            f"the weight there is {want}")
    offloaded = offloaded_modules(model, [site for site, shape in shapes.items() if shape])
    if offloaded:  # a write into a meta weight would be dropped (docs/design.md §12)
        problems.append(f"site(s) {', '.join(offloaded)} are offloaded (weights on the meta "
                        "device); keep them on a device in the --device-map")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PatchError(f"{source}: the patch does not fit the model (was patch.json edited "
                         f"by hand, or is it another model's patch?); nothing was changed:\n"
                         f"{lines}")


def _delta_shape(delta) -> tuple[int, ...]:
    """``ΔW``'s shape ``(d_out, d_in)`` from its stored tensors (factors ``U Vᵀ`` or dense)."""
    if delta.dense is not None:
        return tuple(delta.dense.shape)
    return (int(delta.u.shape[0]), int(delta.v.shape[0]))


def _result(patch: EditPatch, site: str) -> torch.Tensor:
    """The weight ``patch`` leaves at ``site``: its original with its deltas there in order."""
    weight = patch.originals[site]
    for sd in patch.deltas:
        if sd.site == site:
            weight = patched_weight(weight, sd.delta)
    return weight


def check_follows(first: EditPatch, second: EditPatch, first_source: str | Path,
                  second_source: str | Path) -> None:
    """``second`` was made on the model ``first`` left: at every site both edit, the weight
    ``second`` started from (its original) is ``first``'s result. Rounding noise is allowed
    (a patch made on a GPU multiplies its factors there), a missing or different edit is not:
    the gap must be far below ``first``'s edit there."""
    shared = [site for site in second.originals if site in first.originals]
    for site in shared:
        before, after = first.originals[site].float(), _result(first, site).float()
        start = second.originals[site].float()
        if start.shape != after.shape:
            raise PatchError(f"{second_source} does not follow {first_source}: the weight of "
                             f"{site!r} has shape {tuple(start.shape)} in one and "
                             f"{tuple(after.shape)} in the other")
        edit_size = float((after - before).norm())
        gap = float((start - after).norm())
        if gap > 0.01 * edit_size + 1e-6 * float(after.norm()):
            same_base = bool(torch.equal(start, before))
            why = ("both were made on the same base model" if same_base else
                   "its starting weight is neither")
            raise PatchError(
                f"{second_source} does not follow {first_source}: at {site!r} it was not made "
                f"on the model {first_source} left ({why}); merge joins patches made one after "
                "the other, in that order")
    missing = [s for s in second.base_digests if s in first.base_digests and s not in shared]
    if missing:
        raise PatchError(f"cannot check that {second_source} follows {first_source}: one of "
                         f"them holds no original weights for {', '.join(missing)}")
