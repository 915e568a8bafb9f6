"""``massedit export``: a run's patch as a PEFT LoRA adapter, with its model card, optionally
pushed to the hub (docs/design.md §14)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from massedit.export.peft_adapter import PeftExport, export_peft
from massedit.hub import check_repo_id
from massedit.jobs.cards import patch_card
from massedit.jobs.edit import model_reference
from massedit.jobs.patches import load_patch
from massedit.jobs.runs import ensure_new_output

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    run: Path  # run directory or patch folder
    peft: Path  # adapter folder to create
    model: str | None = None  # base model (default: the one the run edited)
    allow_large: bool = False
    card_facts: bool = False
    push_to_hub: str | None = None
    private: bool = True


def base_model_of(run: Path, patch_meta: dict) -> str:
    """The model a run edited: its ``config.json``'s name as given on the command line, else
    the name the patch recorded."""
    for folder in (run, run.parent):
        config = folder / "config.json"
        if config.is_file():
            name = json.loads(config.read_text(encoding="utf-8")).get("model", {}).get("name")
            if name:
                return str(name)
    if patch_meta.get("model"):
        return str(patch_meta["model"])
    raise ValueError(f"{run}: the patch does not say which model it edited; pass --model")


def run_export(opts: ExportOptions) -> PeftExport:
    """Write the adapter (nothing is written when any check fails), then push it if asked."""
    if opts.push_to_hub:
        check_repo_id(opts.push_to_hub)  # a malformed id fails before any work
    ensure_new_output(opts.peft)
    patch = load_patch(opts.run)
    model = opts.model or base_model_of(Path(opts.run), patch.metadata)
    card = patch_card(patch, kind="adapter", run=opts.run,
                      card_facts=opts.card_facts)
    if opts.peft.exists():  # ensure_new_output allowed an empty folder; atomic_dir wants none
        opts.peft.rmdir()
    # Only the model's structure is needed (built on the meta device from its config).
    # The name as the user gave it (a hub id, smollm2-135m), a local folder by its absolute path.
    exported = export_peft(patch, model, opts.peft, allow_large=opts.allow_large, card=card,
                           base_model=model_reference(model))
    if opts.push_to_hub:
        exported.push_to_hub(opts.push_to_hub, private=opts.private)
    return exported
