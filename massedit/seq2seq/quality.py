"""What an encoder-decoder edit did: efficacy on check inputs and BLEU on held-out pairs.

BLEU is sacrebleu's corpus BLEU with its default settings (13a tokenisation); the signature is
returned with every score so that numbers from different runs can be compared honestly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from massedit.seq2seq.pairs import CheckInput
from massedit.seq2seq.running import translate


@dataclass(frozen=True)
class Efficacy:
    rate: float  # share of check inputs that pass, ×100
    outputs: list[str]
    passed: list[bool]


@dataclass(frozen=True)
class BleuScore:
    score: float
    signature: str
    hypotheses: list[str]


def efficacy(model, tok, checks: Sequence[CheckInput], max_new_tokens: int = 48) -> Efficacy:
    """Greedy-translate every check input and test it (expected phrase in, forbidden out)."""
    if not checks:
        raise ValueError("no check inputs given")
    outputs = translate(model, tok, [c.source for c in checks], max_new_tokens=max_new_tokens)
    passed = [c.passes(o) for c, o in zip(checks, outputs, strict=True)]
    return Efficacy(100.0 * sum(passed) / len(passed), outputs, passed)


def bleu(model, tok, pairs: Sequence[tuple[str, str]], max_new_tokens: int = 64) -> BleuScore:
    """Corpus BLEU of greedy translations of ``(source, reference)`` pairs."""
    from sacrebleu.metrics import BLEU

    if not pairs:
        raise ValueError("no (source, reference) pairs for BLEU")
    hyps = translate(model, tok, [s for s, _ in pairs], max_new_tokens=max_new_tokens)
    metric = BLEU()
    result = metric.corpus_score(hyps, [[r for _, r in pairs]])
    return BleuScore(round(result.score, 2), str(metric.get_signature()), hyps)
