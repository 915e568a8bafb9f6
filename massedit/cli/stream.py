"""``massedit stream``: lifelong editing as a study — a stream of facts written batch after
batch, with retention, neighbourhood success, perplexity and weight growth measured along it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massedit.cli.common import (
    AllowPickleOpt,
    DeviceMapOpt,
    DtypeOpt,
    ModelOpt,
    SetOpt,
    allow_pickled_weights,
    app,
    console,
    key_values,
    reported,
)
from massedit.models.loading import DEFAULT_MODEL


@app.command()
def stream(
    out: Annotated[Path, typer.Option("--out", metavar="DIR",
                                      help="Study folder to create (or continue).")],
    dataset: Annotated[str, typer.Option(
        "--dataset", help="counterfact, counterfact_easyedit, zsre or a .json/.jsonl file.")
    ] = "counterfact",
    model: ModelOpt = DEFAULT_MODEL,
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = "memit",
    n: Annotated[int, typer.Option("--n", min=1, help="Facts in the stream.")] = 100,
    batch_size: Annotated[int, typer.Option(min=1, help="Facts written at once.")] = 10,
    every: Annotated[int, typer.Option(min=1, help="Measure after every K batches.")] = 1,
    measure: Annotated[int | None, typer.Option(
        min=1, help="Retention over a fixed random sample of this many facts (default 300).")
    ] = 300,
    heldout_text: Annotated[str | None, typer.Option(
        help="Text file for perplexity (e.g. WikiText-2 test).")] = None,
    heldout_tokens: Annotated[int, typer.Option(min=2, help="Tokens of it to read.")] = 4096,
    stats_corpus: Annotated[str | None, typer.Option(
        help="Text file (.txt/.jsonl) or hub dataset name[:config] for key statistics.")] = None,
    stats_tokens: Annotated[int | None, typer.Option(
        min=1, help="Token budget for key statistics.")] = None,
    set_: SetOpt = None,
    dtype: DtypeOpt = "float32",
    allow_pickle: AllowPickleOpt = False,
    device_map: DeviceMapOpt = None,
) -> None:
    """Write N facts in batches, each on the model the previous left; plot the metrics against
    facts written, one line per method. Re-running continues after the last finished batch."""
    allow_pickled_weights(allow_pickle)
    from massedit.evals.stream import StreamSettings
    from massedit.evals.stream_job import StreamOptions, run_stream_study

    with reported():
        opts = StreamOptions(
            model=model, dataset=dataset, out=out,
            methods=tuple(m.strip() for m in methods.split(",") if m.strip()), n=n,
            settings=StreamSettings(batch_size=batch_size, every=every, measure=measure),
            heldout_text=heldout_text, heldout_tokens=heldout_tokens,
            stats_corpus=stats_corpus, stats_tokens=stats_tokens,
            overrides=key_values(set_, "--set"), dtype=dtype, device_map=device_map,
        )
        run_stream_study(opts)
        console().print(f"report in {out / 'stream.md'}")
