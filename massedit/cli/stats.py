"""``massedit stats``: compute key statistics into the cache the editor reads, list it, or
share it through a hub dataset repository (``stats push|pull --repo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from massedit.cli.common import (
    AllowPickleOpt,
    DeviceMapOpt,
    PublicOpt,
    allow_pickled_weights,
    app,
    console,
    reported,
)
from massedit.models.loading import DEFAULT_MODEL


@app.command()
def stats(
    action: Annotated[str | None, typer.Argument(
        metavar="[push|pull]", help="push: upload the cache's entries to --repo; pull: "
        "download and verify the ones that match (--model, --layers narrow both).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Hub id, local folder, or smollm2-135m (the embedded default, used "
        "when computing without --model).")] = None,
    repo: Annotated[str | None, typer.Option(
        "--repo", metavar="USER/NAME", help="Hub dataset repository for push and pull.")] = None,
    public: PublicOpt = False,
    method: Annotated[str | None, typer.Option(
        help="Collect the sites of this method's preset layers (memit, rome, emmet...).")] = None,
    layers: Annotated[str | None, typer.Option(
        help="Layers whose edit sites to collect, e.g. 4-8 or 2,3,6.")] = None,
    corpus: Annotated[str | None, typer.Option(
        metavar="ID_OR_PATH",
        help="Text file (.txt/.jsonl), hub dataset name[:config] or 'self' "
             "(default: WikiText-103 from the hub).")] = None,
    tokens: Annotated[int | None, typer.Option(
        min=1, help="Token budget (default: the method preset's multiple of the MLP width, "
                    "as the editor uses).")] = None,
    max_length: Annotated[int, typer.Option(min=1, help="Tokens per row.")] = 256,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per forward pass.")] = 8,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Precision of the sums: float32 or float64.")] = "float32",
    cache_dir: Annotated[Path | None, typer.Option(
        help="Cache folder (default: $MASSEDIT_CACHE, else the user cache directory).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        min=0, help="Tokens between checkpoints (default: a tenth of the budget; 0: none).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the 'self' corpus.")] = 0,
    model_dtype: Annotated[str, typer.Option(
        help="dtype the model runs in: float32, bfloat16, float16 or auto.")] = "float32",
    allow_pickle: AllowPickleOpt = False,
    device_map: DeviceMapOpt = None,
    list_: Annotated[bool, typer.Option(
        "--list", help="Show what the cache holds (model, sites, corpus, tokens, size).")] = False,
) -> None:
    """Compute key statistics (second moments of edit-site inputs) into the editor's cache.

    One forward pass collects every site. Under `accelerate launch --multi_gpu --num_processes P
    -m massedit stats ...` or `torchrun --nproc_per_node P -m massedit stats ...` each process
    reads its own shard of the corpus. An interrupted run continues from its last checkpoint when
    the same command is run again. `massedit stats push|pull --repo USER/NAME` shares the cache
    through a hub dataset repository (docs/sharing.md).
    """
    allow_pickled_weights(allow_pickle)
    with reported():
        if action is not None:
            from massedit.jobs.stats_sharing import ShareOptions, run_share

            if not repo:
                raise typer.BadParameter(f"stats {action} needs --repo USER/NAME",
                                         param_hint="--repo")
            run_share(ShareOptions(action=action, repo=repo, model=model, layers=layers,
                                   cache_dir=str(cache_dir) if cache_dir else None,
                                   private=not public), console())
            return
        if list_:
            from massedit.data.locations import cache_root
            from massedit.stats.listing import print_cache

            print_cache(console(), cache_root(str(cache_dir) if cache_dir else None))
            return
        from massedit.jobs.stats import StatsOptions, run_stats

        opts = StatsOptions(
            model=model or DEFAULT_MODEL, method=method, layers=layers, corpus=corpus,
            tokens=tokens,
            max_length=max_length, batch_size=batch_size, dtype=dtype,
            cache_dir=str(cache_dir) if cache_dir else None, checkpoint_every=checkpoint_every,
            seed=seed, model_dtype=model_dtype, device_map=device_map,
        )
        run_stats(opts, console())
