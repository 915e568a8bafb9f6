"""``massedit trace``: ROME's causal trace of a fact, averaged traces, edit-layer suggestions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massedit.cli.common import (
    AllowPickleOpt,
    DeviceMapOpt,
    DtypeOpt,
    ModelOpt,
    allow_pickled_weights,
    app,
    console,
    reported,
)
from massedit.models.loading import DEFAULT_MODEL


@app.command()
def trace(
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for tables and plots.")],
    model: ModelOpt = DEFAULT_MODEL,
    prompt: Annotated[str | None, typer.Option(
        help="Prompt containing the subject (written out or as {}).")] = None,
    subject: Annotated[str | None, typer.Option(
        help="The subject, whose token embeddings are noised.")] = None,
    target: Annotated[str | None, typer.Option(
        help="Answer to measure (default: the model's greedy next token).")] = None,
    kind: Annotated[str, typer.Option(
        help="States to restore: hidden (block output), mlp, attn, or all.")] = "all",
    window: Annotated[int | None, typer.Option(
        min=1, help="MLP/attn layers restored together (default: a fifth of the depth).")] = None,
    noise: Annotated[str, typer.Option(
        help="Noise scale: a multiple of the subject embeddings' std (3sd) or a number.")] = "3sd",
    samples: Annotated[int, typer.Option(min=1, help="Noise samples per restoration.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    batch_size: Annotated[int, typer.Option(
        min=1, help="Restorations per forward pass (halved automatically on out-of-memory).")] = 32,
    known: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Facts to average over (ROME's known_1000.json schema).")] = None,
    n: Annotated[int, typer.Option(min=1, help="With --known: facts to trace.")] = 50,
    suggest: Annotated[bool, typer.Option(
        help="Suggest edit layers and print preset snippets.")] = False,
    spread: Annotated[int, typer.Option(
        min=1, help="With --suggest: layers in a MEMIT/EMMET spread.")] = 5,
    dtype: DtypeOpt = "float32",
    allow_pickle: AllowPickleOpt = False,
    device_map: DeviceMapOpt = None,
) -> None:
    """Corrupt the subject, restore one state at a time, and see where the fact is recalled."""
    allow_pickled_weights(allow_pickle)
    from massedit.trace.command import TraceOptions, run_trace
    from massedit.trace.result import KINDS

    kinds = KINDS if kind == "all" else tuple(k.strip() for k in kind.split(","))
    with reported():
        opts = TraceOptions(
            out=out, model=model, prompt=prompt, subject=subject, target=target, kinds=kinds,
            window=window, noise=noise, samples=samples, seed=seed, batch_size=batch_size,
            known=known, n=n, suggest=suggest, spread=spread, dtype=dtype, device_map=device_map,
        )
        run_trace(opts, console())
