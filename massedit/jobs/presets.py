"""``massedit presets``: what can be edited with what, as tables."""

from __future__ import annotations

from massedit.editing.presets import MODEL_SIGNATURES, available_presets
from massedit.editing.registry import (
    DISTRIBUTIONS,
    METHODS,
    OBJECTIVES,
    load_plugins,
    preset_models,
)


def _summary(obj) -> str:
    doc = (getattr(obj, "description", "") or obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def print_presets(console) -> None:
    from rich.table import Table

    load_plugins()
    presets = available_presets()

    methods = Table(title="methods")
    for name in ("method", "objective", "distribution", "presets for", "description"):
        methods.add_column(name, overflow="fold")
    for name, spec in sorted(METHODS.items()):
        kind = (spec.objective or "-", spec.distribution or "-") if spec.editor is None else (
            "(own editor)", "-")
        models_with_presets = [m for m in preset_models(name) if m != "default"]
        methods.add_row(name, *kind, ", ".join(models_with_presets) or "defaults",
                        spec.description)
    console.print(methods)

    for title, table in (("objectives", OBJECTIVES), ("distributions", DISTRIBUTIONS)):
        listing = Table(title=title)
        listing.add_column("name")
        listing.add_column("description", overflow="fold")
        for name, cls in sorted(table.items()):
            listing.add_row(name, _summary(cls))
        console.print(listing)

    models = Table(title="models with presets (matched by architecture shape)")
    for name in ("model", "model_type", "layers", "width", "methods"):
        models.add_column(name)
    covered = sorted({m for names in presets.values() for m in names if m != "default"})
    for model in covered:
        model_type, depth, width = MODEL_SIGNATURES.get(model, ("?", "?", "?"))
        methods_for = [m for m, names in presets.items() if model in names]
        models.add_row(model, model_type, str(depth), str(width), ", ".join(methods_for))
    console.print(models)
    console.print("Other models get default layers (early-middle MLPs) with a warning; "
                  "any objective combines with any distribution: --objective/--distribution.")
