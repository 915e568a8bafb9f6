"""The ``massedit`` command line. Thin by design: each command parses options and calls a module.

Exit status: 0 done; 1 bad input (every problem listed), a refused output folder or a failed
edit; 2 bad usage (unknown option); 3 stopped by ``--max-batches`` (re-run the same command to
continue).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from massedit.loading import DEFAULT_MODEL

logger = logging.getLogger("massedit.cli")

app = typer.Typer(
    help="Write facts into a language model's weights (ROME, MEMIT, EMMET) and check the result.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)

ModelOpt = Annotated[str, typer.Option(
    "--model", help="Hub id, local folder, or smollm2-135m (the embedded default).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, bfloat16, float16 or auto.")]
DeviceMapOpt = Annotated[str | None, typer.Option(
    "--device-map", help="Where the model goes: cuda, cpu, auto (several GPUs).")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE",
    help="Hyper-parameter override (repeatable), e.g. layers=[4,5].")]


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings only.")] = False,
) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    # Without force: a host that already configured logging (pytest, a notebook) keeps its own.
    handler = RichHandler(console=_console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("massedit").setLevel(level)


@contextmanager
def _reported() -> Iterator[None]:
    """Known failures become a message and an exit status instead of a traceback."""
    from rich.markup import escape

    from massedit.edit_files import EditFileError
    from massedit.editor import EditError
    from massedit.runs import RunDirError

    err = _console(stderr=True)
    try:
        yield
    except EditFileError as exc:
        err.print(f"[red]{escape(exc.source)}[/red]: {len(exc.problems)} problem(s); nothing "
                  "was edited or written", highlight=False)
        for problem in exc.problems:
            err.print(f"  - {problem}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    # ValueError: unknown method, bad --set, a model the patch was not made for...
    except (RunDirError, OSError, EditError, ValueError) as exc:
        logger.debug("failure", exc_info=True)
        err.print(f"[red]error[/red]: {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted: run the same command again to continue after the last finished "
                  "batch")
        raise typer.Exit(130) from None


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r}: write key=value", param_hint=option)
        out[key.strip()] = value.strip()
    return out


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
    max_batches: Annotated[int | None, typer.Option(
        min=1, help="Stop after N batches this time; the same command continues later.")] = None,
    split: Annotated[str, typer.Option(help="Split of a datasets input.")] = "train",
) -> None:
    """Write the facts of an edit file into a model; report before/after in RUN_DIR."""
    from massedit.edit_files import parse_mapping
    from massedit.edit_job import EditOptions, run_edit

    if (edits is None) == (pairs is None):
        raise typer.BadParameter("give exactly one of --edits and --pairs",
                                 param_hint="--edits/--pairs")
    if pairs is not None:
        from massedit.seq2seq.pair_job import PairJobOptions, run_pair_edit

        with _reported():
            code = run_pair_edit(PairJobOptions(
                pairs=pairs, out=out, model=model, check=check, bleu=bleu,
                objective=objective or "equality", stats_corpus=stats_corpus,
                overrides=_pairs(set_, "--set"), dtype=dtype, device_map=device_map), _console())
        raise typer.Exit(code)
    with _reported():
        opts = EditOptions(
            edits=edits, out=out, model=model, method=method, objective=objective,
            distribution=distribution, batch_size=batch_size, save_model=save_model,
            stats_corpus=stats_corpus, stats_tokens=stats_tokens,
            overrides=_pairs(set_, "--set"), mapping=parse_mapping(map_ or []),
            dry_run=dry_run, device_map=device_map, dtype=dtype, max_batches=max_batches,
            split=split,
        )
        outcome = run_edit(opts, _console())
    raise typer.Exit(outcome.exit_code)


@app.command()
def apply(
    run_dir: Annotated[Path, typer.Argument(help="Run directory or patch folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the edited model.")],
    model: ModelOpt = DEFAULT_MODEL,
    dtype: DtypeOpt = "float32",
    device_map: DeviceMapOpt = None,
) -> None:
    """Write a patch into its base model and save the result with save_pretrained."""
    from massedit.patch_commands import apply_patch

    with _reported():
        path = apply_patch(run_dir, model, out, dtype=dtype, device_map=device_map)
    _console().print(f"edited model saved to {path}")


@app.command()
def revert(
    run_dir: Annotated[Path, typer.Argument(help="Run directory or patch folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the restored model.")],
    model: Annotated[str | None, typer.Option(
        "--model", help="The edited model (default: RUN_DIR/model).")] = None,
    dtype: DtypeOpt = "float32",
    device_map: DeviceMapOpt = None,
) -> None:
    """Restore the original weights of an edited model, bit for bit."""
    from massedit.patch_commands import revert_patch

    with _reported():
        edited = model or str(run_dir / "model")
        path = revert_patch(run_dir, edited, out, dtype=dtype, device_map=device_map)
    _console().print(f"restored model saved to {path}")


@app.command()
def merge(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Run directories or patch folders, in the order they were made.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the merged patch.")],
) -> None:
    """Join patches made one on top of another into one patch."""
    from massedit.patch_commands import merge_patches

    with _reported():
        path = merge_patches(run_dirs, out)
    _console().print(f"merged patch saved to {path}")


@app.command()
def presets() -> None:
    """List methods, objectives, distributions and the models with presets."""
    from massedit.preset_listing import print_presets

    print_presets(_console())


@app.command()
def demo(
    model: ModelOpt = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(help="Editing method.")] = "",
    out: Annotated[Path | None, typer.Option(
        "--out", help="Keep the run directory here (default: a temporary one).")] = None,
    set_: SetOpt = None,
) -> None:
    """Edit the embedded default model with examples/facts.csv and show before/after."""
    from massedit.demo import run_demo

    with _reported():
        code = run_demo(_console(), model=model, method=method or None, out=out,
                        overrides=_pairs(set_, "--set"))
    raise typer.Exit(code)


# Commands kept in their own modules register themselves on ``app`` when imported.
from massedit import (  # noqa: E402,F401
    cli_seq2seq,
    cli_stats,
    cli_study,
    cli_trace,
)

if __name__ == "__main__":  # pragma: no cover
    app()
