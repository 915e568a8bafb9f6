"""``massedit export``: a patch in another format (a PEFT LoRA adapter). Thin: it parses options
and calls :mod:`massedit.jobs.export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massedit.cli.common import CardFactsOpt, PublicOpt, PushOpt, app, console, reported


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory or patch folder.")],
    peft: Annotated[Path, typer.Option(
        "--peft", metavar="OUT", help="Folder for the PEFT LoRA adapter (new).")],
    model: Annotated[str | None, typer.Option(
        "--model", help="Base model (default: the one the run edited).")] = None,
    allow_large: Annotated[bool, typer.Option(
        help="Write the adapter even where LoRA factors are no smaller than the dense "
             "update.")] = False,
    card_facts: CardFactsOpt = False,
    push_to_hub: PushOpt = None,
    public: PublicOpt = False,
) -> None:
    """Write a patch as a PEFT LoRA adapter that PeftModel.from_pretrained(base, OUT) loads."""
    from massedit.jobs.export import ExportOptions, run_export

    with reported():
        done = run_export(ExportOptions(run=run_dir, peft=peft, model=model,
                                        allow_large=allow_large, card_facts=card_facts,
                                        push_to_hub=push_to_hub, private=not public))
    ranks = sorted(set(done.ranks.values()))
    console().print(f"LoRA adapter ({len(done.ranks)} site(s), rank {', '.join(map(str, ranks))})"
                    f" written to {done.path}" + (f" and pushed to {push_to_hub}"
                                                  if push_to_hub else ""))
