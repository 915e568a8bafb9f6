"""Second moments ``C = E[k kᵀ]`` of edit-site keys over a corpus, with a fingerprinted cache.

``get_moments`` is what the editor and ``massedit stats`` both call: it returns each site's
statistics from the cache when a file with the same fingerprint is there and intact, and computes
the others in one forward pass per batch for all of them at once (stopping after the deepest
site). Under ``accelerate launch``/``torchrun`` each process reads its own shard of the corpus and
the sums are added; only the main process writes. Long passes checkpoint their partial sums and
an interrupted run resumes from the last checkpoint. The pieces live in ``stats_cache`` (files,
fingerprints), ``stats_pass`` (the pass), ``stats_checkpoint`` and ``stats_distributed``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict

from massedit.atomic import entry_lock, sweep_temporaries_of
from massedit.data.corpus import DEFAULT_CORPUS, corpus_id, iter_texts
from massedit.data.embedded import WIKITEXT_EXCERPT
from massedit.data.locations import cache_root
from massedit.engine.problem import SecondMoment
from massedit.models.adapters import get_adapter
from massedit.stats.cache import (
    STATS_FORMAT,
    StatsSpec,
    cache_path,
    check_writable,
    fingerprint,
    load_cached,
    model_identity,
    save_moment,
)
from massedit.stats.checkpoint import Checkpointer, remove_obsolete
from massedit.stats.distributed import Dist, detect_dist
from massedit.stats.passes import (
    PassResult,
    accumulate_moments,
    collect_moments,
    model_max_length,
    row_batches,
)
from massedit.stats.sharing import STATS_REPO_ENV, fetch_shared

logger = logging.getLogger(__name__)

__all__ = [
    "STATS_FORMAT", "Dist", "PassResult", "StatsSpec", "accumulate_moments", "cache_path",
    "cache_root", "check_corpus", "collect_moments", "detect_dist", "fingerprint", "get_moments",
    "load_cached", "model_identity", "model_max_length", "resolve_corpus", "row_batches",
    "save_moment",
]


def resolve_corpus(spec: StatsSpec, model, tok) -> str:
    """The corpus to use: the spec's, else WikiText-103 streamed from the hub, else the WikiText
    excerpt shipped with massedit (docs/design.md §6). Text sampled from the model (``"self"``)
    is used only when asked for: making it takes far longer than any statistics pass."""
    if spec.corpus:
        return spec.corpus
    try:
        next(iter(iter_texts(DEFAULT_CORPUS)))
        return DEFAULT_CORPUS
    except Exception as err:
        logger.warning(
            "default corpus %s unreachable (%s): statistics from the WikiText excerpt shipped "
            "with massedit (%r, about 72,000 tokens); pass a corpus for more",
            DEFAULT_CORPUS, err, WIKITEXT_EXCERPT,
        )
        return WIKITEXT_EXCERPT


def check_corpus(corpus: str) -> None:
    """Fail early, with the corpus named, when its first text cannot be read."""
    if corpus == "self":
        return
    try:
        next(iter(iter_texts(corpus)))
    except StopIteration:
        raise ValueError(f"the statistics corpus {corpus!r} is empty") from None
    except Exception as err:  # missing file, bad encoding, bad JSONL, unreachable hub dataset
        raise ValueError(f"cannot read the statistics corpus {corpus!r}: {err}") from None


def _checkpoint_every(spec: StatsSpec, tokens: int) -> int:
    if spec.checkpoint_every is not None:
        return spec.checkpoint_every
    return max(tokens // 10, 1)


def get_moments(
    model, tok, layers: Sequence[int], spec: StatsSpec, tokens: int, progress: bool = True, *,
    require_cache: bool = False,
) -> tuple[dict[int, SecondMoment], dict]:
    """Second moments at the edit sites of ``layers``, from the cache or computed in one pass.

    Returns the moments by layer and a record of what was used (for patch metadata). With
    ``require_cache`` an unwritable cache folder is an error before any work (``massedit
    stats``); otherwise the moments are computed and used without being stored."""
    adapter = get_adapter(model)
    corpus = resolve_corpus(spec, model, tok)
    root = cache_root(spec.cache_dir)
    dist = detect_dist()
    fps = {layer: fingerprint(model, adapter.site_name(layer), spec, corpus, tokens)
           for layer in layers}
    with ExitStack() as held:
        if dist.is_main:
            _lock_missing(held, root, fps)
        dist.barrier()  # every process looks at the cache once the main one holds the locks
        return _cached_or_computed(model, tok, layers, spec, corpus, tokens, fps, root, dist,
                                   progress, require_cache)


def _lock_missing(held: ExitStack, root, fps: dict[int, dict]) -> None:
    """One writer per statistics file (docs/design.md §12): hold the lock of every file this run
    may write (in path order, so two runs wanting overlapping sets cannot deadlock) while it
    looks, computes and writes; another run wanting one of them waits, then finds it cached.
    The run's other processes follow the main one through barriers and need no lock."""
    paths = sorted({cache_path(root, fp) for fp in fps.values()})
    for path in paths:
        if path.exists():
            continue
        try:
            held.enter_context(entry_lock(path, what=f"statistics {path.name}"))
        except OSError as err:  # an unwritable cache: computed, not stored, so nothing to guard
            logger.debug("statistics lock %s not taken: %s", path, err)
            return


def _cached_or_computed(model, tok, layers, spec, corpus, tokens, fps, root, dist: Dist,
                        progress, require_cache) -> tuple[dict[int, SecondMoment], dict]:
    found: dict[int, SecondMoment] = {}
    for layer in layers:
        moment = load_cached(cache_path(root, fps[layer]), fps[layer])
        if moment is not None:
            found[layer] = moment
    missing = [layer for layer in layers if layer not in found]
    pulled = _pull_shared(root, {layer: fps[layer] for layer in missing}, dist)
    for layer in pulled:
        moment = load_cached(cache_path(root, fps[layer]), fps[layer])
        if moment is not None:
            found[layer] = moment
    missing = [layer for layer in layers if layer not in found]
    if dist.broadcast(missing) != missing:
        raise RuntimeError("processes disagree about what the statistics cache holds")
    record = {"corpus": corpus_id(corpus), "tokens_requested": tokens,
              "cached_layers": [layer for layer in layers if layer in found],
              "computed_layers": missing, "processes": dist.world,
              "pulled_layers": [layer for layer in pulled if layer in found]}
    if missing:
        result = _compute(model, tok, missing, spec, corpus, tokens, fps, root, dist, progress,
                          require_cache)
        found.update(result.moments)
        record.update(tokens_per_process=result.rank_tokens, resumed_at=result.resumed_at)
    record.update(tokens_used={str(k): v.count for k, v in sorted(found.items())},
                  spec=asdict(spec))
    return {layer: found[layer] for layer in layers}, record


def _pull_shared(root, fps: dict[int, dict], dist: Dist) -> list[int]:
    """Layers whose statistics the main process pulled from ``$MASSEDIT_STATS_REPO`` into the
    cache (docs/design.md §6, "Shared statistics"); every process then reads them there."""
    if not fps or not os.environ.get(STATS_REPO_ENV):
        return []
    pulled = fetch_shared(root, fps) if dist.is_main else []
    dist.barrier()
    return list(fps) if dist.world > 1 else pulled  # other ranks re-read the cache


def _compute(model, tok, layers, spec, corpus, tokens, fps, root, dist: Dist, progress,
             require_cache) -> PassResult:
    adapter = get_adapter(model)
    sites = [adapter.site_name(layer) for layer in layers]
    writable = True
    try:
        check_writable(root)
    except OSError as err:
        if require_cache:
            raise
        writable = False
        logger.warning("%s: statistics will be computed but not cached", err)
    check_corpus(corpus)
    if dist.is_main:
        logger.info("computing statistics for %d site(s) over %d tokens of %s (%d process%s)",
                    len(sites), tokens, corpus, dist.world, "es" if dist.world > 1 else "")
    checkpointer = None
    if writable:
        checkpointer = Checkpointer(root, [fps[layer] for layer in layers], dist.world,
                                    _checkpoint_every(spec, tokens))
        if dist.is_main:  # a killed run's half-written files; we hold these entries' locks
            for path in [checkpointer.path, *(cache_path(root, fps[layer]) for layer in layers)]:
                sweep_temporaries_of(path)
    texts = iter_texts(corpus, model, tok, spec.seed, rank=dist.rank, world=dist.world)
    result = collect_moments(model, tok, sites, texts, tokens, spec, dist=dist,
                             checkpointer=checkpointer, progress=progress)
    by_layer = dict(zip(layers, sites, strict=True))
    if dist.is_main and writable:
        extra = {"model_name": str(getattr(model.config, "_name_or_path", "") or ""),
                 "processes": dist.world, "tokens_per_process": result.rank_tokens,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            for layer, site in by_layer.items():
                save_moment(cache_path(root, fps[layer]), fps[layer], result.moments[site],
                            extra)
        except OSError as err:
            if require_cache:
                raise
            logger.warning("could not cache statistics in %s: %s", root, err)
        if checkpointer is not None:
            checkpointer.remove(dist)
            remove_obsolete(root)  # e.g. a killed run's, whose other sites were cached then
    dist.barrier()  # the files exist before any process goes on
    return PassResult({layer: result.moments[site] for layer, site in by_layer.items()},
                      result.rank_tokens, result.resumed_at)
