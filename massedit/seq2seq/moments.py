"""Second moments ``C = E[k kᵀ]`` at encoder and decoder sites over parallel text.

Encoder sites see source tokens, decoder sites see the decoder teacher-forced on the reference
(or, for a corpus of sources only, on the model's own translation), each counted under its own
stack's mask. One forward pass per batch serves every site of both stacks. Token budgets are per
stack; a small budget (a few times ``d_in``) is what the location sweep uses.

The moments live in the statistics store (``massedit.stats.cache``: fingerprint, checksum,
atomic files; docs/design.md §6-7) like a corpus pass's, so a sweep, an edit and a later run on
the same model and text share them. A site's sum depends only on the model, the site, the pairs,
the budget and the batch size (in the fingerprint): each stack stops counting at the first batch
that reaches its budget, whichever other sites share the pass. Site inputs are read with the
engine's :func:`~massedit.engine.hooks.capture` and summed as the corpus pass sums them
(:func:`~massedit.stats.passes.accumulate_gram_`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from massedit.data.corpus import iter_texts
from massedit.data.locations import cache_root
from massedit.engine.hooks import capture, run_until, stop_after
from massedit.engine.problem import SecondMoment
from massedit.models.seq2seq import Site
from massedit.seq2seq.pairs import load_parallel
from massedit.seq2seq.running import encode_output, encode_source, teacher_forced_batch, translate
from massedit.stats.cache import cached_moments, site_fingerprint
from massedit.stats.passes import accumulate_gram_, row_blocks, symmetrised

logger = logging.getLogger(__name__)


def parallel_corpus(corpus: str | Path | Sequence[tuple[str, str]], model=None, tok=None,
                    limit: int = 5000) -> list[tuple[str, str]]:
    """``(source, target)`` pairs from a CSV/TSV/JSONL file with ``source`` and ``reference``
    columns, from a list of pairs, or from a text file of sources (targets translated by the
    model, greedily)."""
    if not isinstance(corpus, str | Path):
        return list(corpus)[:limit]
    path = Path(corpus)
    if path.suffix.lower() in (".csv", ".tsv", ".tab", ".jsonl", ".json"):
        try:
            return load_parallel(path)[:limit]
        except ValueError:
            if path.suffix.lower() not in (".jsonl", ".json"):
                raise
    sources = []
    for text in iter_texts(str(path)):
        sources += [line.strip() for line in text.split("\n") if line.strip()]
        if len(sources) >= limit:
            break
    if model is None:
        raise ValueError(f"{path}: a corpus of sources only needs the model to translate it")
    sources = sources[:limit]
    return list(zip(sources, translate(model, tok, sources), strict=True))


def parallel_corpus_id(pairs: Sequence[tuple[str, str]]) -> str:
    """The content identity of a parallel corpus (sources and targets, in order)."""
    payload = json.dumps([[src, tgt] for src, tgt in pairs], ensure_ascii=False)
    return f"parallel:{len(pairs)}:{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def parallel_fingerprint(model, site: Site, corpus_key: str, tokens: int,
                         batch_size: int) -> dict:
    """What one site's sum over parallel text depends on (the batch size too: the budget is
    checked between batches)."""
    return site_fingerprint(model, site.name, corpus_key, tokens, kind="parallel",
                            batch_size=batch_size, dtype="float32")


def parallel_moments(
    model, tok, sites: Sequence[Site], pairs: Sequence[tuple[str, str]], tokens: int,
    batch_size: int = 32, *, cache_dir: str | Path | None = None,
) -> dict[str, SecondMoment]:
    """Moments at every site (by module name) from up to ``tokens`` tokens per stack, from the
    statistics store under ``cache_root(cache_dir)`` when computed before, else in one pass
    (and then stored)."""
    by_name = {site.name: site for site in sites}
    corpus_key = parallel_corpus_id(pairs)
    fps = {site.name: parallel_fingerprint(model, site, corpus_key, tokens, batch_size)
           for site in sites}
    extra = {"model_name": str(getattr(model.config, "_name_or_path", "") or ""),
             "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return cached_moments(
        cache_root(None if cache_dir is None else str(cache_dir)), fps,
        lambda missing: parallel_pass(model, tok, [by_name[n] for n in missing], pairs, tokens,
                                      batch_size),
        extra)


@torch.no_grad()
def parallel_pass(
    model, tok, sites: Sequence[Site], pairs: Sequence[tuple[str, str]], tokens: int,
    batch_size: int = 32,
) -> dict[str, SecondMoment]:
    """One pass over ``pairs`` summing ``k kᵀ`` at every site (no store). A stack's sites stop
    counting once it has ``tokens`` tokens; each batch's forward stops after the deepest site
    still counting."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    counts = {site.stack: 0 for site in sites}
    sums: dict[str, torch.Tensor] = {}  # block upper triangles, (d_in, d_in) each
    blocks: dict[str, list[tuple[int, int]]] = {}
    with capture(model, [site.name for site in sites], inputs=True) as seen:
        for lo in range(0, len(pairs), batch_size):
            active = [site for site in sites if counts[site.stack] < tokens]
            if not active:
                break
            chunk = pairs[lo : lo + batch_size]
            batch, _ = teacher_forced_batch(model, tok, [encode_source(tok, s) for s, _ in chunk],
                                            [encode_output(tok, t) for _, t in chunk])
            masks = {"encoder": batch["attention_mask"].reshape(-1).bool(),  # (b·src_len,)
                     "decoder": batch["decoder_attention_mask"].reshape(-1).bool()}  # (b·tgt_len,)
            with stop_after(model, max((s.name for s in active), key=order.__getitem__)):
                run_until(model, batch)
            for site in active:
                x = seen[site.name]  # (b, len, d_in)
                if site.name not in sums:
                    d_in = x.shape[-1]
                    sums[site.name] = torch.zeros(d_in, d_in, device=x.device)  # fp32
                    blocks[site.name] = row_blocks(d_in)
                accumulate_gram_(sums[site.name], blocks[site.name], x, masks[site.stack])
            for stack in {site.stack for site in active}:
                counts[stack] += int(masks[stack].sum())
            seen.clear()  # the batch's activations are not kept
    if len(sums) < len(sites):
        raise ValueError("the statistics corpus gave no tokens")
    for stack, count in counts.items():
        if count < tokens:
            logger.info("%s statistics: corpus gave %d of %d tokens", stack, count, tokens)
    return {s.name: SecondMoment(symmetrised(sums[s.name], blocks[s.name]), counts[s.stack])
            for s in sites}
