"""Edit-quality metrics; every name says which family it comes from (docs/design.md §9).

ROME/MEMIT (CounterFact): per prompt the probabilities P(new) and P(true) of ``" " + target``
(exp of minus the mean per-token NLL, teacher forced). ``efficacy_success`` is the share of rewrite
prompts with P(new) > P(true), ``paraphrase_success`` the same on paraphrases,
``neighborhood_success`` the share of neighbour prompts with P(true) > P(new); magnitudes are the
mean differences; ``score`` is the harmonic mean of the three successes. As ROME's
``summarize.py`` does, each is averaged per case first, then over cases, and reported ×100.

EasyEdit (token accuracy under its own names): ``reliability`` (rewrite prompts, target_new),
``generalization`` (paraphrases, target_new), ``locality`` (share of the post-edit teacher-forced
argmax tokens on unrelated prompts that equal the unedited model's). zsRE uses the same three on
question, rephrase and the NQ question.

Fluency and consistency as ROME: bigram/trigram entropy of sampled generations and TF-IDF cosine
against reference texts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from massedit.engine.forward import model_device

from .readers import EvalCase
from .scoring import TargetScore, generate_batched, score_targets

COUNTERFACT_FAMILIES = ("rewrite_prompts", "paraphrase_prompts", "neighborhood_prompts")


def _where(index: int, case: EvalCase) -> str:
    return f"case {index} (case_id {case.case_id!r})"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def scored_pairs(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int,
    cache: dict[tuple[str, str], TargetScore] | None,
) -> list[TargetScore]:
    """:func:`score_targets`, scoring each distinct (prompt, target) pair once per ``cache``.

    A cache belongs to ONE state of the model: metrics of the same model state that share it
    (CounterFact probabilities, token accuracy, the locality reference) need one forward pass per
    pair between them instead of one each."""
    if cache is None:
        return score_targets(model, tok, prompts, targets, batch_size=batch_size)
    pairs = list(zip(prompts, targets, strict=True))
    missing = [pair for pair in dict.fromkeys(pairs) if pair not in cache]
    if missing:
        found = score_targets(model, tok, [p for p, _ in missing], [t for _, t in missing],
                              batch_size=batch_size)
        cache.update(zip(missing, found, strict=True))
    return [cache[pair] for pair in pairs]


def _harmonic_mean(values: Sequence[float]) -> float:
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


# --------------------------------------------------------------------------- ROME / MEMIT


def counterfact_scores(
    model: torch.nn.Module,
    tok,
    cases: Sequence[EvalCase],
    *,
    batch_size: int = 32,
    generation: bool = False,
    max_new_tokens: int = 100,
    seed: int = 0,
    references: Mapping[Any, Sequence[str]] | None = None,
    cache: dict | None = None,
) -> list[dict[str, Any]]:
    """One row per case: ``{family}_probs`` lists of ``{"target_new": P, "target_true": P}``.

    Unlike ROME's JSON, which stores mean NLLs under ``*_probs``, these are probabilities.
    With ``generation=True`` the case's ``generation_prompts`` are sampled
    (:func:`generate_fluency_texts`) and the row gets ``generated_texts`` and ``ngram_entropy``,
    and ``consistency_tfidf`` where ``references`` holds texts for the case's ``case_id``.
    ``cache`` shares scored pairs with other metrics of the same model state (:func:`scored_pairs`).
    """
    prompts: list[str] = []
    targets: list[str] = []
    for i, case in enumerate(cases):
        if case.target_true is None:
            raise ValueError(f"{_where(i, case)}: CounterFact metrics need target_true")
        for family in COUNTERFACT_FAMILIES:
            for prompt in getattr(case, family):
                prompts += [prompt, prompt]
                targets += [case.target_new, case.target_true]
    scores = scored_pairs(model, tok, prompts, targets, batch_size, cache)
    nll = torch.tensor([s.nll for s in scores], dtype=torch.float64)  # (2 * prompts,)
    probs = torch.exp(-nll).tolist()

    rows: list[dict[str, Any]] = []
    k = 0
    for case in cases:
        row: dict[str, Any] = {"case_id": case.case_id}
        for family in COUNTERFACT_FAMILIES:
            pairs = []
            for _ in getattr(case, family):
                pairs.append({"target_new": probs[k], "target_true": probs[k + 1]})
                k += 2
            row[f"{family}_probs"] = pairs
        rows.append(row)

    if generation:
        _add_generation_metrics(
            model, tok, cases, rows, batch_size, max_new_tokens, seed, references
        )
    return rows


def _add_generation_metrics(
    model: torch.nn.Module,
    tok,
    cases: Sequence[EvalCase],
    rows: list[dict[str, Any]],
    batch_size: int,
    max_new_tokens: int,
    seed: int,
    references: Mapping[Any, Sequence[str]] | None,
) -> None:
    # One sampling call for all cases: fewer, fuller batches than case by case.
    flat = [p for case in cases for p in case.generation_prompts]
    texts = generate_fluency_texts(
        model, tok, flat, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size
    )
    k = 0
    for case, row in zip(cases, rows, strict=True):
        own = texts[k : k + len(case.generation_prompts)]
        k += len(case.generation_prompts)
        row["generated_texts"] = own
        row["ngram_entropy"] = ngram_entropy(own) if own else None
        if references is not None and case.case_id in references and own:
            row["consistency_tfidf"] = tfidf_consistency(own, references[case.case_id])


def _case_share(pairs: Sequence[Mapping[str, float]], first: str, second: str) -> float:
    return _mean([float(p[first] > p[second]) for p in pairs])


def _case_margin(pairs: Sequence[Mapping[str, float]], first: str, second: str) -> float:
    return _mean([p[first] - p[second] for p in pairs])


def summarize_counterfact(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """ROME's CounterFact summary, ×100: successes, magnitudes, ``score``; ``fluency`` and
    ``consistency`` when rows carry generation metrics.

    A family absent from every row is left out (and then so is ``score``); cases without prompts
    of a family do not count towards its mean.
    """
    spec = {
        "efficacy": ("rewrite_prompts_probs", "target_new", "target_true"),
        "paraphrase": ("paraphrase_prompts_probs", "target_new", "target_true"),
        "neighborhood": ("neighborhood_prompts_probs", "target_true", "target_new"),
    }
    out: dict[str, float] = {"n_cases": float(len(rows))}
    for name, (key, first, second) in spec.items():
        per_case = [row[key] for row in rows if row.get(key)]
        if not per_case:
            continue
        out[f"{name}_success"] = 100 * _mean([_case_share(p, first, second) for p in per_case])
        out[f"{name}_magnitude"] = 100 * _mean([_case_margin(p, first, second) for p in per_case])
    successes = [out.get(f"{name}_success") for name in spec]
    if all(s is not None for s in successes):
        out["score"] = _harmonic_mean(successes)  # type: ignore[arg-type]
    for name, key in (("fluency", "ngram_entropy"), ("consistency", "consistency_tfidf")):
        values = [row[key] for row in rows if row.get(key) is not None]
        if values:
            out[name] = 100 * _mean(values)
    return out


# --------------------------------------------------------------------------- EasyEdit / zsRE


def _locality_pairs(case: EvalCase) -> list[tuple[str, str]]:
    """Unrelated prompts and the answers teacher-forced on them (EasyEdit's locality inputs)."""
    if case.loc_prompt is not None and case.loc_answer is not None:
        return [(case.loc_prompt, case.loc_answer)]
    if case.target_true is not None:
        return [(p, case.target_true) for p in case.neighborhood_prompts]
    return []


def locality_reference_tokens(
    model: torch.nn.Module, tok, cases: Sequence[EvalCase], *, batch_size: int = 32,
    cache: dict | None = None,
) -> list[list[list[int]]]:
    """The UNEDITED model's teacher-forced argmax tokens on each case's locality prompts.

    Run this before editing and pass the result to :func:`token_accuracy_scores` after editing.
    Plain lists, so they can be stored with the pre-edit results.
    """
    pairs = [_locality_pairs(case) for case in cases]
    flat = [pair for case_pairs in pairs for pair in case_pairs]
    scores = scored_pairs(model, tok, [p for p, _ in flat], [t for _, t in flat], batch_size,
                          cache)
    out: list[list[list[int]]] = []
    k = 0
    for case_pairs in pairs:
        out.append([scores[k + j].argmax.tolist() for j in range(len(case_pairs))])
        k += len(case_pairs)
    return out


def token_accuracy_scores(
    model: torch.nn.Module,
    tok,
    cases: Sequence[EvalCase],
    reference: Sequence[Sequence[Sequence[int]]] | None = None,
    *,
    batch_size: int = 32,
    cache: dict | None = None,
) -> list[dict[str, Any]]:
    """One row per case with EasyEdit's ``reliability``, ``generalization`` and ``locality``.

    Each is the mean over the case's prompts of the per-prompt token accuracy, in [0, 1]; a family
    without prompts gives ``None``. ``locality`` needs ``reference`` from
    :func:`locality_reference_tokens` on the unedited model (``None`` without it).
    """
    if reference is not None and len(reference) != len(cases):
        raise ValueError(f"reference covers {len(reference)} cases, but {len(cases)} were given")
    prompts: list[str] = []
    targets: list[str] = []
    for case in cases:
        for prompt in (*case.rewrite_prompts, *case.paraphrase_prompts):
            prompts.append(prompt)
            targets.append(case.target_new)
        for prompt, target in _locality_pairs(case):
            prompts.append(prompt)
            targets.append(target)
    scores = scored_pairs(model, tok, prompts, targets, batch_size, cache)

    rows: list[dict[str, Any]] = []
    k = 0
    for i, case in enumerate(cases):
        row: dict[str, Any] = {"case_id": case.case_id}
        for name, family in (
            ("reliability", case.rewrite_prompts),
            ("generalization", case.paraphrase_prompts),
        ):
            accs = [float(s.hits.float().mean()) for s in scores[k : k + len(family)]]
            k += len(family)
            row[name] = _mean(accs) if accs else None
        loc = scores[k : k + len(_locality_pairs(case))]
        k += len(loc)
        row["locality"] = None
        if reference is not None and loc:
            if len(reference[i]) != len(loc):
                raise ValueError(
                    f"{_where(i, case)}: reference has {len(reference[i])} locality prompts, "
                    f"the case has {len(loc)}; compute it on the same cases"
                )
            accs = []
            for j, (s, ref) in enumerate(zip(loc, reference[i], strict=True)):
                ref_t = torch.as_tensor(list(ref), dtype=torch.long)
                if ref_t.shape != s.argmax.shape:
                    raise ValueError(f"{_where(i, case)}: locality prompt {j} token count differs")
                accs.append(float((s.argmax == ref_t).float().mean()))
            row["locality"] = _mean(accs)
        rows.append(row)
    return rows


def zsre_scores(
    model: torch.nn.Module,
    tok,
    cases: Sequence[EvalCase],
    reference: Sequence[Sequence[Sequence[int]]] | None = None,
    *,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """zsRE token accuracy on question (``reliability``), rephrase (``generalization``) and the
    NQ question against the unedited model (``locality``)."""
    for i, case in enumerate(cases):
        if case.loc_prompt is None or case.loc_answer is None:
            raise ValueError(f"{_where(i, case)}: zsRE metrics need loc_prompt and loc_answer")
    return token_accuracy_scores(model, tok, cases, reference, batch_size=batch_size)


def summarize_token_accuracy(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Means over cases, ×100, of ``reliability``, ``generalization`` and ``locality``."""
    out: dict[str, float] = {"n_cases": float(len(rows))}
    for name in ("reliability", "generalization", "locality"):
        values = [row[name] for row in rows if row.get(name) is not None]
        if values:
            out[name] = 100 * _mean(values)
    return out


# --------------------------------------------------------------------------- fluency, consistency

# ROME tokenises words with nltk.word_tokenize; this regex (runs of word characters, or single
# other non-space characters) agrees on plain prose but not on contractions ("don't") or quotes.
_WORD = re.compile(r"\w+|[^\w\s]")


def _entropy_bits(counts: Counter) -> float:
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def text_ngram_entropy(text: str) -> float:
    """ROME's ``compute_n_gram_entropy``: mean of (2/3·H₂, 4/3·H₃), i.e. H₂/3 + 2·H₃/3, in bits,
    where Hₙ is the entropy of the text's n-gram frequency distribution (0 when there are none)."""
    words = _WORD.findall(text)
    entropies = []
    for n, weight in ((2, 2 / 3), (3, 4 / 3)):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        entropies.append(weight * _entropy_bits(grams))
    return _mean(entropies)


def ngram_entropy(texts: Sequence[str]) -> float:
    """ROME's ``n_gram_entropy`` (fluency): arithmetic mean of :func:`text_ngram_entropy` over
    texts. ROME's tables report it ×100 (``summarize_counterfact``'s ``fluency`` does)."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("ngram_entropy needs at least one text")
    return _mean([text_ngram_entropy(t) for t in texts])


def generate_fluency_texts(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    max_new_tokens: int = 100,
    seed: int = 0,
    *,
    batch_size: int = 32,
    top_k: int = 5,
    include_prompt: bool = True,
) -> list[str]:
    """Sampled generations as ROME's ``generate_fast`` makes them (top-k 5, prompt included).

    Sampling is seeded with ``seed`` inside a forked RNG, so the caller's random state is left
    alone and the same model, prompts and batch size give the same texts.
    """
    device = model_device(model)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return generate_batched(
            model,
            tok,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            include_prompt=include_prompt,
            do_sample=True,
            top_k=top_k,
            top_p=1.0,
            temperature=1.0,
        )


def tfidf_consistency(
    generated: Sequence[str] | str,
    references: Sequence[str] | str,
    *,
    vectorizer: TfidfVectorizer | None = None,
) -> float:
    """ROME's consistency: cosine of the TF-IDF vectors of the joined generations and the joined
    reference texts, in [0, 1].

    ROME's vectoriser has IDF weights fitted on Wikipedia; pass such a fitted ``vectorizer`` to
    match it. Without one, a ``TfidfVectorizer`` is fitted on these two documents alone.
    """
    gen = generated if isinstance(generated, str) else " ".join(generated)
    ref = references if isinstance(references, str) else " ".join(references)
    if vectorizer is None:
        vectorizer = TfidfVectorizer()
        try:
            vectorizer.fit([gen, ref])
        except ValueError:  # no word survives tokenisation on either side
            return 0.0
    vectors = vectorizer.transform([gen, ref])  # (2, vocab) sparse
    return float(cosine_similarity(vectors[0], vectors[1])[0, 0])
