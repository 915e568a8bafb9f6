"""``massedit tune``: choose a preset (layers, λ/μ, target settings, clamp) for a new model."""

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
def tune(
    model: ModelOpt = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(help="rome, memit or emmet.")] = "memit",
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="PRESET.yaml", help="Where to write the preset (default: your preset "
        "folder, cache/presets/<method>/<shape>.yaml, which Editor reads first).")] = None,
    dataset: Annotated[str, typer.Option(
        help="CounterFact-like facts to sweep and hold out (name or file).")] = "counterfact",
    offset: Annotated[int, typer.Option(
        min=0, help="Skip this many records (keep an evaluation set out of the tuning).")] = 0,
    n_sweep: Annotated[int, typer.Option(min=1, help="Facts each trial edits.")] = 10,
    n_heldout: Annotated[int, typer.Option(
        min=1, help="Facts that score the chosen preset.")] = 20,
    n_trace: Annotated[int, typer.Option(min=1, help="Facts to trace for the layers.")] = 20,
    known: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Trace facts (known_1000 schema; default known_1000).")] = None,
    spread: Annotated[int | None, typer.Option(
        min=1, help="MEMIT/EMMET layers (default: a sixth of the depth, 1-5).")] = None,
    stats_corpus: Annotated[str | None, typer.Option(
        help="Text file or hub dataset for key statistics.")] = None,
    stats_tokens: Annotated[int | None, typer.Option(
        min=1, help="Token budget for key statistics.")] = None,
    quick: Annotated[bool, typer.Option(
        help="Sweep λ/μ only (no target-step or clamp stages).")] = False,
    dtype: DtypeOpt = "float32",
    allow_pickle: AllowPickleOpt = False,
    device_map: DeviceMapOpt = None,
) -> None:
    """Trace where the model recalls facts, sweep λ/μ, target steps and clamp on a few facts,
    score the choice on held-out facts, and write a preset Editor then uses."""
    allow_pickled_weights(allow_pickle)
    from massedit.jobs.tune import TuneOptions, run_tune

    with reported():
        run_tune(TuneOptions(
            model=model, method=method, out=out, dataset=dataset, offset=offset,
            n_sweep=n_sweep, n_heldout=n_heldout, n_trace=n_trace, known=known,
            n_spread=spread, stats_corpus=stats_corpus, stats_tokens=stats_tokens, quick=quick,
            dtype=dtype, device_map=device_map), console())
