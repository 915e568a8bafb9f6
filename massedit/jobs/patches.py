"""``massedit apply``, ``revert`` and ``merge``: patches on models, from the command line.

A patch is found in a run directory (``RUN_DIR/patch``) or given as a patch folder directly.
Outputs are new folders written atomically; an existing output is never overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import reduce
from pathlib import Path

from massedit.engine.patch import EditPatch, patched_weight
from massedit.jobs.patch_checks import check_follows, check_patch_fits
from massedit.jobs.runs import ensure_new_output, save_pretrained_atomic

logger = logging.getLogger(__name__)


def patch_dir(path: str | Path) -> Path:
    """The patch folder of a run directory, or ``path`` itself when it is a patch folder."""
    path = Path(path)
    for candidate in (path, path / "patch"):
        if (candidate / "patch.json").is_file():
            return candidate
    raise FileNotFoundError(f"{path} is neither a run directory with a patch nor a patch folder")


def load_patch(path: str | Path) -> EditPatch:
    return EditPatch.load(patch_dir(path))


def _load(model_name: str, dtype: str, device_map: str | None):
    """The model, and its tokenizer exactly as stored (not massedit's editing settings)."""
    from transformers import AutoTokenizer

    from massedit.models.loading import load_model, resolve_model_path

    model, _ = load_model(model_name, dtype=dtype, device_map=device_map)
    return model, AutoTokenizer.from_pretrained(resolve_model_path(model_name))


def apply_patch(run: str | Path, model_name: str, out: str | Path, *, dtype: str = "float32",
                device_map: str | None = None, card_facts: bool = False,
                push_to_hub: str | None = None, private: bool = True) -> Path:
    """Load the base model, write the patch into it and save the result to ``out`` with a model
    card (docs/design.md §14); with ``push_to_hub`` upload that folder too."""
    from massedit.baselines.ike import refuse_in_context_patch
    from massedit.hub import check_repo_id, push_folder
    from massedit.jobs.cards import patch_card

    if push_to_hub:
        check_repo_id(push_to_hub)  # a malformed id fails before any work
    ensure_new_output(out)
    patch = load_patch(run)
    refuse_in_context_patch(patch)  # IKE: nothing to write into weights (docs/design.md §4)
    card = patch_card(patch, kind="model", run=run, card_facts=card_facts)
    model, tok = _load(model_name, dtype, device_map)
    check_patch_fits(patch, model, patch_dir(run))  # sites and shapes, before any write
    patch.apply(model)  # refuses a model other than the patch's base
    path = save_pretrained_atomic(model, tok, out, card=card)
    if push_to_hub:
        push_folder(path, push_to_hub, private=private, commit_message="massedit edited model")
    return path


def check_edited(patch: EditPatch, model) -> None:
    """Refuse to revert a model that is not the patch's result (its sites would be clobbered).

    The comparison allows rounding noise (an edit made on a GPU multiplies factors there), but
    not a missing or different edit: the gap must be far below the edit's own size."""
    from massedit.models.adapters import get_module, read_weight

    if not patch.originals:
        raise ValueError("this patch holds no original weights, so it cannot be reverted")
    expected = {site: w.clone() for site, w in patch.originals.items()}
    for sd in patch.deltas:
        expected[sd.site] = patched_weight(expected[sd.site], sd.delta)
    for site, want in expected.items():
        layout = next(sd.layout for sd in patch.deltas if sd.site == site)
        current = read_weight(get_module(model, site), layout).detach().float().cpu()
        edit_size = float((want.float() - patch.originals[site].float()).norm())
        gap = float((current - want.float()).norm())
        if gap > 0.01 * edit_size + 1e-6 * float(want.float().norm()):
            raise ValueError(f"weight {site!r} is not what this patch wrote: the model is not "
                             "the result of this patch (another model, or edited since)")


def revert_patch(run: str | Path, model_name: str, out: str | Path, *, dtype: str = "float32",
                 device_map: str | None = None) -> Path:
    """Load an edited model, restore the patch's original weights bit for bit, save to ``out``."""
    ensure_new_output(out)
    patch = load_patch(run)
    model, tok = _load(model_name, dtype, device_map)
    check_patch_fits(patch, model, patch_dir(run))
    check_edited(patch, model)
    patch.revert(model)
    return save_pretrained_atomic(model, tok, out)


def merge_patches(runs: Sequence[str | Path], out: str | Path) -> Path:
    """One patch that applies ``runs`` in order (each made on the model the previous one left)."""
    if len(runs) < 2:
        raise ValueError(f"merge needs at least two patches, got {len(runs)}"
                         + (f" ({runs[0]})" if runs else ""))
    ensure_new_output(out)
    patches = [load_patch(r) for r in runs]
    for i in range(1, len(patches)):  # each made on the model the ones before it left
        check_follows(reduce(EditPatch.merge, patches[:i]), patches[i],
                      " + ".join(str(patch_dir(r)) for r in runs[:i]), patch_dir(runs[i]))
    merged = reduce(EditPatch.merge, patches)
    return merged.save(out)
