"""Averages of many facts' traces over ROME's six token categories (the paper's figure 2).

Prompts differ in length and subject position, so each trace's token rows are grouped first:
first subject token, middle subject tokens, last subject token, first subsequent token, further
tokens, last token. A category a prompt lacks (no middle tokens in a two-token subject) is left
out of that prompt's contribution, so each category averages over the facts that have it.
The *indirect effect* of a state is ``P(answer | corrupted, state restored) - P(answer |
corrupted)``; its mean over facts is ROME's average indirect effect (AIE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from massedit.trace.result import FactTrace

CATEGORIES: tuple[str, ...] = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)


def token_categories(subject_range: tuple[int, int], n_tokens: int) -> dict[str, list[int]]:
    """Token positions of each category (a position may be in two: the last token can also be
    the last subject token or the first subsequent one)."""
    lo, hi = subject_range
    return {
        "first subject token": [lo],
        "middle subject tokens": list(range(lo + 1, hi - 1)),
        "last subject token": [hi - 1],
        "first subsequent token": [hi] if hi < n_tokens else [],
        "further tokens": list(range(hi + 1, n_tokens - 1)),
        "last token": [n_tokens - 1],
    }


@dataclass
class KindAverage:
    kind: str
    window: int
    prob: torch.Tensor  # (6, n_layers) mean P(answer) after restoring, per category
    effect: torch.Tensor  # (6, n_layers) mean indirect effect, per category
    counts: tuple[int, ...]  # (6,) facts that contributed to each category


@dataclass
class AverageTrace:
    """Traces of ``n_facts`` facts averaged per kind and token category."""

    n_facts: int
    clean_prob: float  # mean over facts
    corrupted_prob: float
    kinds: dict[str, KindAverage] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_facts": self.n_facts,
            "clean_prob": self.clean_prob,
            "corrupted_prob": self.corrupted_prob,
            "categories": list(CATEGORIES),
            "kinds": {
                name: {"window": k.window, "counts": list(k.counts), "prob": k.prob.tolist(),
                       "indirect_effect": k.effect.tolist()}
                for name, k in self.kinds.items()
            },
        }

    def csv_rows(self) -> list[dict[str, Any]]:
        rows = []
        for name, k in self.kinds.items():
            for c, category in enumerate(CATEGORIES):
                for layer in range(k.prob.shape[1]):
                    rows.append({
                        "kind": name, "category": category, "layer": layer,
                        "facts": k.counts[c], "prob": float(k.prob[c, layer]),
                        "indirect_effect": float(k.effect[c, layer]),
                    })
        return rows


def average_traces(traces: Sequence[FactTrace]) -> AverageTrace:
    """Average full traces (every token position restored) over facts, per category."""
    if not traces:
        raise ValueError("average_traces: no traces to average (no fact was predicted?)")
    kinds = list(traces[0].kinds)
    result = AverageTrace(
        n_facts=len(traces),
        clean_prob=sum(t.clean_prob for t in traces) / len(traces),
        corrupted_prob=sum(t.corrupted_prob for t in traces) / len(traces),
    )
    for kind in kinds:
        first = traces[0].kinds[kind]
        depth = first.scores.shape[1]
        prob_sum = torch.zeros(len(CATEGORIES), depth)  # (6, layers)
        effect_sum = torch.zeros(len(CATEGORIES), depth)  # (6, layers)
        counts = [0] * len(CATEGORIES)
        for trace in traces:
            k = trace.kinds.get(kind)
            if k is None or k.scores.shape[1] != depth:
                raise ValueError(f"average_traces: trace of {trace.prompt!r} lacks kind {kind!r} "
                                 "or has another depth")
            row_of = {pos: r for r, pos in enumerate(k.positions)}
            for c, positions in enumerate(
                token_categories(trace.subject_range, len(trace.tokens)).values()
            ):
                if not positions:
                    continue
                if any(p not in row_of for p in positions):
                    raise ValueError("average_traces needs traces of every token position")
                mean = k.scores[[row_of[p] for p in positions]].mean(0)  # (layers,)
                prob_sum[c] += mean
                effect_sum[c] += mean - trace.corrupted_prob
                counts[c] += 1
        denom = torch.tensor(counts, dtype=torch.float32).clamp(min=1)[:, None]  # (6, 1)
        result.kinds[kind] = KindAverage(
            kind, first.window, prob_sum / denom, effect_sum / denom, tuple(counts)
        )
    return result
