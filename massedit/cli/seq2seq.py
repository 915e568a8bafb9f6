"""``massedit sweep``: try a pair edit at every encoder and decoder FF layer of a seq2seq model."""

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
def sweep(
    pairs: Annotated[str, typer.Option("--pairs", metavar="FILE", help=(
        "CSV/TSV/JSONL: negative_source, positive_source, span[, expected_output]."))],
    check: Annotated[str, typer.Option("--check", metavar="FILE", help=(
        "Check inputs: source and expected and/or forbidden phrase."))],
    out: Annotated[Path, typer.Option("--out", help="PNG plot of efficacy per layer.")],
    model: ModelOpt = DEFAULT_MODEL,
    bleu: Annotated[str | None, typer.Option("--bleu", metavar="FILE", help=(
        "Held-out source/reference pairs: BLEU per layer (also the default stats corpus)."))]
    = None,
    stats_corpus: Annotated[str | None, typer.Option(help=(
        "Parallel file (source, reference) or text of sources for key statistics."))] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=(
        "reduce=mean|last, value=site|stream, edit_dropout=P, sweep_tokens_per_width=N, "
        "or an EditHparams field."))] = None,
    dtype: DtypeOpt = "float32",
    allow_pickle: AllowPickleOpt = False,
    device_map: DeviceMapOpt = None,
) -> None:
    """Rank every FF layer of an encoder-decoder model by the efficacy of a pair edit there."""
    allow_pickled_weights(allow_pickle)
    from massedit.cli.common import key_values
    from massedit.seq2seq.sweep_job import run_sweep

    with reported():
        run_sweep(pairs=pairs, check=check, out=out, model=model, bleu=bleu,
                  stats_corpus=stats_corpus, overrides=key_values(set_, "--set"), dtype=dtype,
                  device_map=device_map, console=console())
