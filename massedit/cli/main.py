"""The core commands: edit, apply, revert, merge, presets, demo. Thin by design: each parses
options and calls a job in :mod:`massedit.jobs`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massedit.cli.common import (
    AllowPickleOpt,
    CardFactsOpt,
    DeviceMapOpt,
    DtypeOpt,
    ModelOpt,
    PublicOpt,
    PushOpt,
    SetOpt,
    allow_pickled_weights,
    app,
    console,
    key_values,
    reported,
)
from massedit.models.loading import DEFAULT_MODEL


@app.command()
def edit(
    out: Annotated[Path, typer.Option(
        "--out", metavar="RUN_DIR", help="Run directory to create (or resume).")],
    edits: Annotated[str | None, typer.Option(
        "--edits", metavar="FILE",
        help="CSV, TSV, JSON or JSONL file, or a datasets id / folder.")] = None,
    pairs: Annotated[str | None, typer.Option(
        "--pairs", metavar="FILE", help="Encoder-decoder pair edits: negative_source, "
        "positive_source, span[, expected_output] (instead of --edits).")] = None,
    check: Annotated[str | None, typer.Option(
        "--check", metavar="FILE", help="With --pairs: check inputs (source, expected and/or "
        "forbidden) for efficacy and the location sweep.")] = None,
    bleu: Annotated[str | None, typer.Option(
        "--bleu", metavar="FILE", help="With --pairs: held-out source,reference pairs for "
        "BLEU before/after.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(help="rome, memit, emmet or a plug-in.")] = "memit",
    objective: Annotated[str | None, typer.Option(help="Override the method's objective.")] = None,
    distribution: Annotated[str | None, typer.Option(
        help="Override the method's distribution.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Edit B requests at a time, checkpointing each batch.")] = None,
    save_model: Annotated[bool, typer.Option(
        help="Also write the edited model with save_pretrained to RUN_DIR/model.")] = False,
    stats_corpus: Annotated[str | None, typer.Option(
        help="Text file (.txt/.jsonl) or hub dataset name[:config] for key statistics.")] = None,
    stats_tokens: Annotated[int | None, typer.Option(
        min=1, help="Token budget for key statistics.")] = None,
    set_: SetOpt = None,
    map_: Annotated[list[str] | None, typer.Option(
        "--map", metavar="EXPECTED=YOURS",
        help="Column renaming (repeatable), e.g. target_new=new_value.")] = None,
    dry_run: Annotated[bool, typer.Option(
        help="Validate and show the plan; write nothing.")] = False,
    device_map: DeviceMapOpt = None,
    dtype: DtypeOpt = "float32",
    allow_pickle: AllowPickleOpt = False,
    max_batches: Annotated[int | None, typer.Option(
        min=1, help="Stop after N batches this time; the same command continues later.")] = None,
    split: Annotated[str, typer.Option(help="Split of a datasets input.")] = "train",
    card_facts: CardFactsOpt = False,
    push_to_hub: Annotated[str | None, typer.Option(
        "--push-to-hub", metavar="USER/NAME", help="Upload the edited model (--save-model) or "
        "else the patch, with a model card, to this hub repository (private unless "
        "--public).")] = None,
    public: PublicOpt = False,
) -> None:
    """Write the facts of an edit file into a model; report before/after in RUN_DIR."""
    allow_pickled_weights(allow_pickle)
    from massedit.jobs.edit import EditOptions, run_edit
    from massedit.jobs.edit_files import parse_mapping

    if (edits is None) == (pairs is None):
        raise typer.BadParameter("give exactly one of --edits and --pairs",
                                 param_hint="--edits/--pairs")
    if pairs is not None:
        from massedit.seq2seq.pair_job import PairJobOptions, run_pair_edit

        with reported():
            code = run_pair_edit(PairJobOptions(
                pairs=pairs, out=out, model=model, check=check, bleu=bleu,
                objective=objective or "equality", stats_corpus=stats_corpus,
                overrides=key_values(set_, "--set"), dtype=dtype, device_map=device_map), console())
        raise typer.Exit(code)
    with reported():
        opts = EditOptions(
            edits=edits, out=out, model=model, method=method, objective=objective,
            distribution=distribution, batch_size=batch_size, save_model=save_model,
            stats_corpus=stats_corpus, stats_tokens=stats_tokens,
            overrides=key_values(set_, "--set"), mapping=parse_mapping(map_ or []),
            dry_run=dry_run, device_map=device_map, dtype=dtype, max_batches=max_batches,
            split=split, card_facts=card_facts, push_to_hub=push_to_hub, private=not public,
        )
        outcome = run_edit(opts, console())
    raise typer.Exit(outcome.exit_code)


@app.command()
def apply(
    run_dir: Annotated[Path, typer.Argument(help="Run directory or patch folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the edited model.")],
    model: ModelOpt = DEFAULT_MODEL,
    dtype: DtypeOpt = "float32",
    allow_pickle: AllowPickleOpt = False,
    device_map: DeviceMapOpt = None,
    card_facts: CardFactsOpt = False,
    push_to_hub: PushOpt = None,
    public: PublicOpt = False,
) -> None:
    """Write a patch into its base model and save the result (and its model card) with
    save_pretrained."""
    allow_pickled_weights(allow_pickle)
    from massedit.jobs.patches import apply_patch

    with reported():
        path = apply_patch(run_dir, model, out, dtype=dtype, device_map=device_map,
                           card_facts=card_facts, push_to_hub=push_to_hub, private=not public)
    console().print(f"edited model saved to {path}"
                    + (f" and pushed to {push_to_hub}" if push_to_hub else ""))


@app.command()
def revert(
    run_dir: Annotated[Path, typer.Argument(help="Run directory or patch folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the restored model.")],
    model: Annotated[str | None, typer.Option(
        "--model", help="The edited model (default: RUN_DIR/model).")] = None,
    dtype: DtypeOpt = "float32",
    allow_pickle: AllowPickleOpt = False,
    device_map: DeviceMapOpt = None,
) -> None:
    """Restore the original weights of an edited model, bit for bit."""
    allow_pickled_weights(allow_pickle)
    from massedit.jobs.patches import revert_patch

    with reported():
        edited = model or str(run_dir / "model")
        path = revert_patch(run_dir, edited, out, dtype=dtype, device_map=device_map)
    console().print(f"restored model saved to {path}")


@app.command()
def merge(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Run directories or patch folders, in the order they were made.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the merged patch.")],
) -> None:
    """Join patches made one on top of another into one patch."""
    from massedit.jobs.patches import merge_patches

    with reported():
        path = merge_patches(run_dirs, out)
    console().print(f"merged patch saved to {path}")


@app.command()
def presets() -> None:
    """List methods, objectives, distributions and the models with presets."""
    from massedit.jobs.presets import print_presets

    print_presets(console())


@app.command()
def demo(
    model: ModelOpt = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(help="Editing method.")] = "",
    out: Annotated[Path | None, typer.Option(
        "--out", help="Keep the run directory here (default: a temporary one).")] = None,
    set_: SetOpt = None,
) -> None:
    """Edit the embedded default model with examples/facts.csv and show before/after."""
    from massedit.jobs.demo import run_demo

    with reported():
        code = run_demo(console(), model=model, method=method or None, out=out,
                        overrides=key_values(set_, "--set"))
    raise typer.Exit(code)
