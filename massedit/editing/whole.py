"""Whole-editor methods inside the :class:`~massedit.editing.editor.Editor` (docs/design.md §4).

A method registered as ``MethodSpec(name, editor=callable)`` is dispatched here instead of the
objective × distribution walk: the Editor still resolves its preset and overrides, validates the
requests (``Editor.check_batches``, the one validation every method shares), splits batches,
reverts everything on an exception and stamps the patch's metadata; per batch it hands the
requests to the method's callable with a :class:`~massedit.engine.whole.WholeEditContext`,
through which the method writes its updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from massedit.contracts import MethodSpec
from massedit.engine.patch import EditPatch
from massedit.engine.requests import EditRequest
from massedit.engine.whole import WholeEditContext


class WholeMethod:
    """The dispatch of one whole-editor method: which layers it edits and how a batch runs."""

    def __init__(self, spec: MethodSpec, model, *, objective: str | None = None,
                 distribution: str | None = None) -> None:
        if objective or distribution:
            raise ValueError(
                f"method {spec.name!r} is a whole editor (its own algorithm, not an objective × "
                f"distribution): --objective/--distribution do not apply to it")
        self.name = spec.name
        self.editor = spec.editor
        self.uses_statistics = bool(getattr(spec.editor, "uses_statistics", False))
        check = getattr(spec.editor, "check_model", None)
        reason = check(model) if check is not None else None
        if reason:  # before any work (docs/design.md §12)
            raise ValueError(f"method {spec.name!r} cannot edit model type "
                             f"{model.config.model_type!r}: {reason}")

    def layers(self, preset_layers: Sequence[int]) -> list[int]:
        """A whole editor edits the layers its preset (or ``--set layers=``) names."""
        return list(preset_layers)

    def edit_batch(self, editor: Any, requests: list[EditRequest], patch: EditPatch) -> None:
        """Run the method on one batch of ``editor``'s (already validated) requests, its
        writes going into ``patch``."""
        hp = editor.hparams
        context = WholeEditContext(
            model=editor.model, adapter=editor.adapter, layers=editor.layers, patch=patch,
            moments=editor.moments, prefixes=editor.prefixes,
            max_update_ratio=hp.max_update_ratio, moment_ridge=hp.moment_ridge,
            progress=editor.progress)
        self.editor(editor.model, editor.tok, requests, hp, context)
        if context.info:
            patch.metadata.setdefault("editor_info", []).append(context.info)
