"""One evaluation of a model on benchmark cases, shared by ``massedit eval`` and ``compare``.

A case's row holds both metric families under their own names (docs/design.md §9):

- ROME/MEMIT (``counterfact``): the per-prompt probabilities of :func:`counterfact_scores` plus
  the case's own ``efficacy_success``, ``paraphrase_success``, ``neighborhood_success`` and
  magnitudes (×100), so a summary is exactly the mean of its rows;
- EasyEdit token accuracy (``token_accuracy``): ``reliability``, ``generalization`` and
  ``locality`` (×100), locality always against the UNEDITED model's argmax tokens, which
  :func:`unedited_reference` computes before anything is edited;
- ``fluency`` (ROME's n-gram entropy ×100) of sampled generations, seeded.

zsRE gets token accuracy only (its standard metric); CounterFact in either schema gets both.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from massedit import version as versions

from .metrics import (
    counterfact_scores,
    locality_reference_tokens,
    summarize_counterfact,
    summarize_token_accuracy,
    token_accuracy_scores,
)
from .readers import DatasetError, EvalCase
from .scoring import encode_prompt_target, prompt_token_ids

logger = logging.getLogger(__name__)

CASE_METRICS = (
    "efficacy_success", "paraphrase_success", "neighborhood_success",
    "efficacy_magnitude", "paraphrase_magnitude", "neighborhood_magnitude",
    "reliability", "generalization", "locality", "fluency", "consistency",
)


@dataclass(frozen=True)
class EvalSettings:
    """How cases are scored. ``generation_prompts=None`` samples every generation prompt of a
    case (ROME does); fewer make fluency cheaper and noisier."""

    batch_size: int = 32
    fluency: bool = True
    generation_prompts: int | None = None
    max_new_tokens: int = 100
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def uses_counterfact(cases: Sequence[EvalCase]) -> bool:
    """Whether ROME's CounterFact probabilities apply (token accuracy always does)."""
    return all(c.dataset != "zsre" and c.target_true is not None for c in cases)


def _limited(cases: Sequence[EvalCase], settings: EvalSettings) -> list[EvalCase]:
    """Cases with at most ``generation_prompts`` generation prompts (none without fluency)."""
    keep = settings.generation_prompts if settings.fluency else 0
    if keep is None:
        return list(cases)
    return [dataclasses.replace(c, generation_prompts=c.generation_prompts[:keep]) for c in cases]


def context_length(model) -> int | None:
    """The longest sequence the model's positions allow, when its config says."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(model, tok, cases: Sequence[EvalCase], settings: EvalSettings) -> None:
    """Refuse cases whose prompt plus target (or plus generated tokens) exceed the context.

    Truncating would silently change what is scored, so the message names the case, the prompt
    family and the lengths instead."""
    limit = context_length(model)
    if limit is None:
        return
    for i, case in enumerate(_limited(cases, settings)):
        where = f"case {i} (case_id {case.case_id!r})"
        pairs = [(f, p, case.target_new) for f in ("rewrite", "paraphrase")
                 for p in getattr(case, f"{f}_prompts")]
        if case.target_true is not None:
            pairs += [("neighborhood", p, case.target_true) for p in case.neighborhood_prompts]
        if case.loc_prompt is not None and case.loc_answer is not None:
            pairs.append(("locality", case.loc_prompt, case.loc_answer))
        for family, prompt, target in pairs:
            length = len(encode_prompt_target(tok, prompt, target)[0])
            if length > limit:
                raise DatasetError(f"{where}: {family} prompt with its target is {length} tokens, "
                                   f"longer than the model's context of {limit}")
        for prompt in case.generation_prompts:
            length = len(prompt_token_ids(tok, prompt)) + settings.max_new_tokens
            if length > limit:
                raise DatasetError(f"{where}: generation prompt plus --max-new-tokens is {length} "
                                   f"tokens, longer than the model's context of {limit}")


@dataclass
class Reference:
    """What the unedited model says, computed before editing: its per-case rows and the argmax
    tokens that locality compares edited models against."""

    rows: list[dict[str, Any]]
    locality_tokens: list[list[list[int]]]

    def subset(self, indices: Sequence[int]) -> Reference:
        return Reference([self.rows[i] for i in indices],
                         [self.locality_tokens[i] for i in indices])


def unedited_reference(model, tok, cases: Sequence[EvalCase], settings: EvalSettings, *,
                       references: Mapping[Any, Sequence[str]] | None = None) -> Reference:
    """Evaluate the unedited model: its rows (``pre``) and its locality argmax tokens."""
    cache: dict = {}  # one scoring pass serves the reference tokens and the rows
    tokens = locality_reference_tokens(model, tok, cases, batch_size=settings.batch_size,
                                       cache=cache)
    rows = evaluate(model, tok, cases, settings, tokens, references=references, cache=cache)
    return Reference(rows, tokens)


def evaluate(
    model,
    tok,
    cases: Sequence[EvalCase],
    settings: EvalSettings,
    locality_tokens: Sequence[Sequence[Sequence[int]]],
    *,
    references: Mapping[Any, Sequence[str]] | None = None,
    cache: dict | None = None,
) -> list[dict[str, Any]]:
    """One row per case on ``model`` as it is now; see the module docstring for the fields.

    ``cache`` (scored pairs, see :func:`massedit.evals.metrics.scored_pairs`) may be passed only
    while the model stays in the same state; by default a fresh one lets both metric families
    share one pass."""
    if not cases:
        return []
    cache = {} if cache is None else cache
    cases = _limited(cases, settings)
    counterfact = uses_counterfact(cases)
    rows = [{"case_id": c.case_id} for c in cases]
    generation = settings.fluency and any(c.generation_prompts for c in cases)
    if counterfact:
        scored = counterfact_scores(
            model, tok, cases, batch_size=settings.batch_size, generation=generation,
            max_new_tokens=settings.max_new_tokens, seed=settings.seed, references=references,
            cache=cache)
        for row, found in zip(rows, scored, strict=True):
            row.update({k: v for k, v in found.items() if k != "case_id"})
            summary = summarize_counterfact([found])
            row.update({k: v for k, v in summary.items() if k not in ("n_cases", "score")})
    accuracy = token_accuracy_scores(model, tok, cases, locality_tokens,
                                     batch_size=settings.batch_size, cache=cache)
    for row, found in zip(rows, accuracy, strict=True):
        for name in ("reliability", "generalization", "locality"):
            row[name] = None if found[name] is None else 100 * found[name]
    return rows


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Means over cases of every per-case metric, ``score`` (harmonic mean of the three
    CounterFact successes) and ``n_cases``. Equals :func:`summarize_counterfact` and
    :func:`summarize_token_accuracy` on the same rows."""
    out: dict[str, float] = {"n_cases": float(len(rows))}
    if any("rewrite_prompts_probs" in r for r in rows):
        out.update(summarize_counterfact(rows))
    accuracy = summarize_token_accuracy([
        {k: (None if r.get(k) is None else r[k] / 100) for k in
         ("reliability", "generalization", "locality")} for r in rows])
    out.update({k: v for k, v in accuracy.items() if k != "n_cases"})
    return out


# Libraries an evaluation's numbers depend on besides those every patch records.
EVAL_LIBRARIES = ("massedit-lm", "tokenizers", "numpy", "scikit-learn", "matplotlib",
                  "accelerate")


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on, for the record (the patches' own record,
    ``massedit.version.library_versions``, plus :data:`EVAL_LIBRARIES`)."""
    return versions.library_versions(EVAL_LIBRARIES)
