"""Keys and values of pair edits at one feed-forward site (docs/design.md §7).

Encoder site: the key is the site's input at the span's tokens in the negative source, the value
its output at the span's tokens in the positive source; ``reduce`` takes the mean over the span's
tokens or its last token. Decoder site: both sources are run with the decoder teacher-forced on the
same desired output (``expected_output``, else the model's translation of the positive source),
and the same reduction runs over the decoder positions.

The site is affine (``out = W k + b``), so ``value − W key − b`` — this module's residual — is the
change the edit must make at the negative key, whatever the bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from massedit.engine.hooks import capture
from massedit.engine.requests import RequestError
from massedit.models.adapters import get_adapter
from massedit.models.seq2seq import Site
from massedit.seq2seq.pairs import EditPair
from massedit.seq2seq.running import encode_output, teacher_forced_batch, translate

Reduce = Literal["mean", "last"]
ValueKind = Literal["site", "stream"]


@dataclass(frozen=True)
class PairTokens:
    """Token ids of both sources and the positions of the span's tokens in each."""

    negative: list[int]
    positive: list[int]
    negative_span: list[int]
    positive_span: list[int]


def span_positions(tok, text: str, span: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Ids of ``text`` (with specials) and the positions of the tokens overlapping ``span``."""
    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    start, end = span
    positions = [
        i for i, ((a, b), special) in enumerate(
            zip(enc["offset_mapping"], enc["special_tokens_mask"], strict=True))
        if not special and a < b and a < end and b > start
    ]
    return list(enc["input_ids"]), positions


def tokenize_pair(tok, pair: EditPair) -> PairTokens:
    """Both sources' ids and span positions; the span must tokenise the same way in both."""
    neg, neg_pos = span_positions(tok, pair.negative_source, pair.span_chars("negative"))
    pos, pos_pos = span_positions(tok, pair.positive_source, pair.span_chars("positive"))
    if not neg_pos or not pos_pos:
        raise RequestError(f"{pair.where}: span {pair.span!r} maps to no token")
    neg_ids, pos_ids = [neg[i] for i in neg_pos], [pos[i] for i in pos_pos]
    if neg_ids != pos_ids:
        raise RequestError(
            f"{pair.where}: the sources tokenise the span {pair.span!r} differently "
            f"({tok.convert_ids_to_tokens(neg_ids)} vs {tok.convert_ids_to_tokens(pos_ids)}); "
            "choose a span with the same tokens in both (e.g. whole words with their spaces)")
    return PairTokens(neg, pos, neg_pos, pos_pos)


def desired_outputs(model, tok, pairs: Sequence[EditPair]) -> list[str]:
    """What the decoder is teacher-forced on at decoder sites: the expected output, else the
    model's own translation of the positive source."""
    missing = [p.positive_source for p in pairs if p.expected_output is None]
    translated = iter(translate(model, tok, missing) if missing else [])
    return [p.expected_output if p.expected_output is not None else next(translated)
            for p in pairs]


def _reduce(states: torch.Tensor, positions: Sequence[int], how: Reduce) -> torch.Tensor:
    """(seq, dim) -> (dim,) over ``positions``."""
    if how == "last":
        return states[positions[-1]]
    if how == "mean":
        return states[list(positions)].mean(0)
    raise ValueError(f"span reduction must be 'mean' or 'last', got {how!r}")


@torch.no_grad()
def pair_keys_and_residuals(
    model, tok, pairs: Sequence[EditPair], site: Site, reduce: Reduce = "mean",
    outputs: Sequence[str] | None = None, value: ValueKind = "site",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys ``K`` (d_in, n) at the negative spans and residuals ``R = V − (W K + b)`` (d_out, n),
    fp32. ``outputs``: decoder-side text for decoder sites (default :func:`desired_outputs`).

    ``value="site"`` (the paper's): V is the site's output in the positive source. ``"stream"``:
    R is the difference of the residual stream right after the FF (attention output + FF output,
    before any post-norm) between the positive and the negative source, so the edited negative
    span carries the positive's whole state there, not only its FF output."""
    toks = [tokenize_pair(tok, p) for p in pairs]
    sources = [t.negative for t in toks] + [t.positive for t in toks]  # negatives, then positives
    if site.stack == "encoder":
        spans = [t.negative_span for t in toks] + [t.positive_span for t in toks]
        outs = [[tok.eos_token_id]] * len(sources)  # the decoder is not read; one step suffices
    else:
        texts = list(outputs) if outputs is not None else desired_outputs(model, tok, pairs)
        ids = [encode_output(tok, t) for t in texts]
        outs = ids + ids
        spans = [list(range(len(o))) for o in outs]  # every decoder position (start included)
    batch, _ = teacher_forced_batch(model, tok, sources, outs)
    read, read_inputs = site.name, False
    if value == "stream":
        adapter = get_adapter(model)
        read, read_inputs = adapter.stream_name(site.stack, site.layer), adapter.stream_is_input
    elif value != "site":
        raise ValueError(f"value must be 'site' or 'stream', got {value!r}")
    with capture(model, [site.name], inputs=True) as seen_in, \
            capture(model, [read], inputs=read_inputs) as seen:
        model(**batch, use_cache=False)
    k_all, v_all = seen_in[site.name].float(), seen[read].float()  # (2n, seq, d_in / d_out)
    n = len(pairs)
    keys = torch.stack([_reduce(k_all[i], spans[i], reduce) for i in range(n)], 1)  # (d_in, n)
    out_neg = torch.stack([_reduce(v_all[i], spans[i], reduce) for i in range(n)], 1)
    out_pos = torch.stack([_reduce(v_all[n + i], spans[n + i], reduce) for i in range(n)], 1)
    return keys, out_pos - out_neg  # (d_in, n), (d_out, n)
