"""Second moments ``C = E[k kᵀ]`` at encoder and decoder sites over parallel text.

Encoder sites see source tokens, decoder sites see the decoder teacher-forced on the reference
(or, for a corpus of sources only, on the model's own translation), each counted under its own
stack's mask. One forward pass per batch serves every site of both stacks. Token budgets are per
stack; a small budget (a few times ``d_in``) is what the location sweep uses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from massedit.data.corpus import iter_texts
from massedit.engine.problem import SecondMoment
from massedit.models.adapters import get_module
from massedit.models.seq2seq import Site
from massedit.seq2seq.pairs import load_parallel
from massedit.seq2seq.running import encode_output, encode_source, teacher_forced_batch, translate

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


@torch.no_grad()
def parallel_moments(
    model, tok, sites: Sequence[Site], pairs: Sequence[tuple[str, str]], tokens: int,
    batch_size: int = 32,
) -> dict[str, SecondMoment]:
    """Moments at every site (by module name) from up to ``tokens`` tokens per stack."""
    sums: dict[str, torch.Tensor] = {}
    counts = {"encoder": 0, "decoder": 0}
    masks: dict[str, torch.Tensor] = {}
    handles = []
    for site in sites:
        def hook(_m, args, _out, site=site):
            k = args[0].reshape(-1, args[0].shape[-1])[masks[site.stack]].float()  # (t, d_in)
            if site.name not in sums:
                sums[site.name] = torch.zeros(k.shape[1], k.shape[1], device=k.device)
            sums[site.name].addmm_(k.T, k)
        handles.append(get_module(model, site.name).register_forward_hook(hook))
    stacks = {s.stack for s in sites}
    try:
        for lo in range(0, len(pairs), batch_size):
            if all(counts[s] >= tokens for s in stacks):
                break
            chunk = pairs[lo : lo + batch_size]
            batch, _ = teacher_forced_batch(model, tok, [encode_source(tok, s) for s, _ in chunk],
                                            [encode_output(tok, t) for _, t in chunk])
            masks["encoder"] = batch["attention_mask"].reshape(-1).bool()
            masks["decoder"] = batch["decoder_attention_mask"].reshape(-1).bool()
            model(**batch, use_cache=False)
            counts["encoder"] += int(masks["encoder"].sum())
            counts["decoder"] += int(masks["decoder"].sum())
    finally:
        for h in handles:
            h.remove()
    if not sums:
        raise ValueError("the statistics corpus gave no tokens")
    for stack in stacks:
        if counts[stack] < tokens:
            logger.info("%s statistics: corpus gave %d of %d tokens", stack, counts[stack],
                        tokens)
    return {s.name: SecondMoment(sums[s.name], counts[s.stack]) for s in sites}
