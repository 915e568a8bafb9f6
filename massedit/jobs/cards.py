"""Model cards for what a command writes: a run's patch with its before/after summary and, only
when asked (``--card-facts``), its facts (docs/design.md §14)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from massedit.engine.patch import EditPatch
from massedit.export.card import CardInfo, Kind

FACT_FIELDS = ("case_id", "subject", "prompt", "target_new", "target_true")


def run_results(path: str | Path) -> dict[str, Any]:
    """``results.json`` of the run that holds ``path`` (a run folder or its ``patch``), or {}."""
    path = Path(path)
    for folder in (path, path.parent):
        if (folder / "results.json").is_file() and (folder / "patch").is_dir():
            return json.loads((folder / "results.json").read_text(encoding="utf-8"))
    return {}


def facts_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: row.get(k) for k in FACT_FIELDS} for row in rows]


def patch_card(patch: EditPatch, *, kind: Kind, run: str | Path | None = None,
               card_facts: bool = False, summary=None, rows=None) -> CardInfo:
    """The card of ``patch``; the summary and facts come from the arguments, else from the
    run folder ``run`` (its ``results.json``), when there is one."""
    results = run_results(run) if run is not None and (summary is None or rows is None) else {}
    summary = summary if summary is not None else results.get("summary")
    rows = rows if rows is not None else results.get("rows")
    facts = None
    if card_facts:
        if rows is None:
            raise ValueError("--card-facts: this patch has no run results to take the facts "
                             "from (a patch folder outside its run directory)")
        facts = facts_of(rows)
    return CardInfo.from_patch(patch.metadata, sites=patch.sites, summary=summary,
                               facts=facts, kind=kind)
