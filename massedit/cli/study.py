"""``massedit eval`` and ``massedit compare``: evaluation and comparison studies (docs/design.md
§9)."""

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

DatasetOpt = Annotated[str, typer.Option(
    "--dataset", help="counterfact or zsre (from $MASSEDIT_DATA, the cache, or downloaded "
    "from the public source on first use), counterfact_sample (200 records shipped with "
    "massedit), counterfact_easyedit ($MASSEDIT_DATA only), or the path of a .json/.jsonl file "
    "in one of their schemas.")]
FluencyOpt = Annotated[bool, typer.Option(
    help="Sample generations for fluency (ROME's n-gram entropy) where cases have generation "
    "prompts.")]
GenPromptsOpt = Annotated[int | None, typer.Option(
    "--generation-prompts", min=0, help="Generation prompts per case (default: all, as ROME).")]
MaxNewOpt = Annotated[int, typer.Option(
    "--max-new-tokens", min=1, help="Tokens sampled per generation prompt (ROME: 100).")]
ScoreBatchOpt = Annotated[int, typer.Option(
    "--score-batch", min=1, help="Prompts per forward pass when scoring.")]


def _csv_list(text: str | None, option: str, cast=str) -> tuple:
    """``"a,b"`` -> ``("a", "b")`` (cast each), with a usage error naming the option."""
    if not text:
        return ()
    try:
        return tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: write a comma-separated list",
                                 param_hint=option) from None


def _settings(fluency: bool, generation_prompts: int | None, max_new_tokens: int,
              score_batch: int, seed: int = 0):
    from massedit.evals.evaluation import EvalSettings

    return EvalSettings(batch_size=score_batch, fluency=fluency,
                        generation_prompts=generation_prompts, max_new_tokens=max_new_tokens,
                        seed=seed)


@app.command("eval")
def eval_(
    dataset: DatasetOpt,
    model: ModelOpt = DEFAULT_MODEL,
    patch: Annotated[Path | None, typer.Option(
        "--patch", metavar="RUN_DIR",
        help="Run directory or patch folder to evaluate on top of the model.")] = None,
    n: Annotated[str, typer.Option("--n", help="The first N cases, or 'all'.")] = "all",
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="DIR", help="New folder for cases.jsonl, summary.json/.csv and "
        "config.json (default: print the table only).")] = None,
    references: Annotated[Path | None, typer.Option(
        help="JSON {case_id: [texts]} for TF-IDF consistency of the generations.")] = None,
    fluency: FluencyOpt = True,
    generation_prompts: GenPromptsOpt = None,
    max_new_tokens: MaxNewOpt = 100,
    score_batch: ScoreBatchOpt = 32,
    seed: Annotated[int, typer.Option(help="Seed of the sampled generations.")] = 0,
    dtype: DtypeOpt = "float32",
    allow_pickle: AllowPickleOpt = False,
    device_map: DeviceMapOpt = None,
) -> None:
    """Score a model (and a patch on it) on CounterFact or zsRE.

    Writes unedited (pre) and patched (post) results per case, the summary and the
    configuration."""
    allow_pickled_weights(allow_pickle)
    from massedit.evals.eval_job import EvalOptions, parse_n, run_eval

    with reported():
        opts = EvalOptions(
            model=model, dataset=dataset, n=parse_n(n), patch=patch, out=out,
            references=references, dtype=dtype, device_map=device_map,
            settings=_settings(fluency, generation_prompts, max_new_tokens, score_batch, seed),
        )
        run_eval(opts, console())


@app.command()
def compare(
    out: Annotated[Path, typer.Option("--out", metavar="DIR",
                                      help="Study folder to create (or continue).")],
    dataset: DatasetOpt = "counterfact",
    model: ModelOpt = DEFAULT_MODEL,
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = "rome,memit,emmet",
    objectives: Annotated[str | None, typer.Option(
        help="Comma-separated objectives to combine with every method (default: its own).")
    ] = None,
    distributions: Annotated[str | None, typer.Option(
        help="Comma-separated distributions to combine with every method (default: its own).")
    ] = None,
    n: Annotated[str, typer.Option("--n", help="The first N cases, or 'all'.")] = "10",
    batch_sizes: Annotated[str, typer.Option(
        help="Comma-separated batch sizes (edits written at once).")] = "1,10,100",
    sequential: Annotated[bool, typer.Option(
        help="Write the batches one on top of another and evaluate the final model.")] = False,
    seeds: Annotated[str, typer.Option(
        help="Comma-separated seeds (context prefixes and sampled generations).")] = "0",
    stats_corpus: Annotated[str | None, typer.Option(
        help="Text file (.txt/.jsonl) or hub dataset name[:config] for key statistics.")] = None,
    stats_tokens: Annotated[int | None, typer.Option(
        min=1, help="Token budget for key statistics.")] = None,
    set_: SetOpt = None,
    fluency: FluencyOpt = True,
    generation_prompts: GenPromptsOpt = None,
    max_new_tokens: MaxNewOpt = 100,
    score_batch: ScoreBatchOpt = 32,
    dtype: DtypeOpt = "float32",
    allow_pickle: AllowPickleOpt = False,
    device_map: DeviceMapOpt = None,
    target_store: Annotated[bool, typer.Option(
        help="Read and keep targets in the disk store of the massedit cache, so a re-run or "
        "another study on this model never recomputes one (costs stay charged as computed).")
    ] = True,
) -> None:
    """Compare editing methods across batch sizes: table, plots, Markdown report.

    Runs every method × objective × distribution × batch size × seed; re-running skips finished
    combinations."""
    allow_pickled_weights(allow_pickle)
    from massedit.evals.eval_job import parse_n
    from massedit.evals.study import StudyOptions, run_study
    from massedit.evals.study_report import render_study

    with reported():
        opts = StudyOptions(
            model=model, dataset=dataset, out=out,
            methods=_csv_list(methods, "--methods"),
            objectives=_csv_list(objectives, "--objectives"),
            distributions=_csv_list(distributions, "--distributions"),
            batch_sizes=_csv_list(batch_sizes, "--batch-sizes", int),
            sequential=sequential, seeds=_csv_list(seeds, "--seeds", int), n=parse_n(n),
            stats_corpus=stats_corpus, stats_tokens=stats_tokens,
            overrides=key_values(set_, "--set"),
            settings=_settings(fluency, generation_prompts, max_new_tokens, score_batch),
            dtype=dtype, device_map=device_map, target_store=target_store,
        )
        out = console()
        result = run_study(opts, out)
        render_study(out, result.table)
        out.print(f"report in {result.out / 'report.md'}")
    failed = [r for r in result.table if r["status"] == "error"]
    if failed:
        console(stderr=True).print(f"{len(failed)} combination(s) failed; see the table's "
                                    "error column. Re-running retries them.")
        raise typer.Exit(1)
