"""What every command module shares: the Typer app, common options, the console and the way
known failures become an exit status.

Exit status: 0 done; 1 bad input (every problem listed), a refused output folder or a failed
edit; 2 bad usage (unknown option); 3 stopped by ``--max-batches`` (re-run the same command to
continue).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

logger = logging.getLogger("massedit.cli")

app = typer.Typer(
    help="Write facts into a language model's weights (ROME, MEMIT, EMMET) and check the result.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)

ModelOpt = Annotated[str, typer.Option(
    "--model", help="Hub id, local folder, or smollm2-135m (the embedded default).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, bfloat16, float16 or auto.")]
AllowPickleOpt = Annotated[bool, typer.Option(
    "--allow-pickle", help="Also load pickled (.bin) weights, which can run code when loaded: "
    "only for files you trust (the same as MASSEDIT_ALLOW_PICKLE=1).")]
DeviceMapOpt = Annotated[str | None, typer.Option(
    "--device-map", help="Where the model goes: cuda, cpu, auto (several GPUs).")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE",
    help="Hyper-parameter override (repeatable), e.g. layers=[4,5].")]
# Model cards and the hub (docs/design.md §14).
CardFactsOpt = Annotated[bool, typer.Option(
    "--card-facts", help="Put the facts' text in the model card (left out by default: edit "
    "files can be private).")]
PushOpt = Annotated[str | None, typer.Option(
    "--push-to-hub", metavar="USER/NAME", help="Upload the result to this hub repository "
    "(private unless --public).")]
PublicOpt = Annotated[bool, typer.Option(
    "--public", help="With --push-to-hub: make a new repository public.")]


def allow_pickled_weights(allow: bool) -> None:
    """``--allow-pickle``: this command's ``load_model`` calls read pickled weights too.
    Set as the environment variable ``load_model`` already reads (docs/design.md §12), so every
    job a command runs sees it without each one passing it on; never unset by the flag."""
    if allow:
        from massedit.models.loading import ALLOW_PICKLE_ENV

        os.environ[ALLOW_PICKLE_ENV] = "1"


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


@app.callback()
def configure_logging(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings only.")] = False,
) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    # Without force: a host that already configured logging (pytest, a notebook) keeps its own.
    handler = RichHandler(console=console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("massedit").setLevel(level)


@contextmanager
def reported() -> Iterator[None]:
    """Known failures become a message and an exit status instead of a traceback."""
    from rich.markup import escape

    from massedit.editing.editor import EditError
    from massedit.jobs.edit_files import EditFileError
    from massedit.jobs.runs import RunDirError

    err = console(stderr=True)
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


def key_values(items: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r}: write key=value", param_hint=option)
        out[key.strip()] = value.strip()
    return out
