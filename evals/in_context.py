"""Evaluating an in-context edit (IKE, ``massedit.baselines.ike``): every prompt a case is
measured with gets the context the edit's memory chooses for it, before it.

An IKE patch changes no weight, so ``patch.apply`` leaves the model as it was; what the edit
did is only seen when its facts stand before the prompts. :func:`cases_for_patch` is the one
place ``massedit eval --patch`` and ``massedit compare`` turn a patch into the cases they score
(docs/design.md §9): the cases themselves for a patch of weights, the cases with every prompt
(rewrite, paraphrase, neighbourhood, attribute, generation and the locality question) preceded by
its context for an IKE patch. Targets are unchanged, so every metric reads as for other methods;
locality still compares with the unedited model's answers to the plain prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from massedit.baselines.ike import InContextMemory, in_context_memory

from .readers import EvalCase

PROMPT_FIELDS = ("rewrite_prompts", "paraphrase_prompts", "neighborhood_prompts",
                 "attribute_prompts", "generation_prompts")


def with_context(model, tok, cases: Sequence[EvalCase],
                 memory: InContextMemory) -> list[EvalCase]:
    """``cases`` with each prompt preceded by the context ``memory`` chooses for it (all prompts
    embedded together, so the cost is one pass over them)."""
    prompts: list[str] = []
    for case in cases:
        for name in PROMPT_FIELDS:
            prompts += getattr(case, name)
        if case.loc_prompt is not None:
            prompts.append(case.loc_prompt)
    distinct = list(dict.fromkeys(prompts))  # each distinct prompt once, with its own context
    shown = dict(zip(distinct, memory.prepend(model, tok, distinct), strict=True))
    out = []
    for case in cases:
        changes = {name: tuple(shown[p] for p in getattr(case, name)) for name in PROMPT_FIELDS}
        if case.loc_prompt is not None:
            changes["loc_prompt"] = shown[case.loc_prompt]
        out.append(dataclasses.replace(case, **changes))
    return out


def cases_for_patch(model, tok, cases: Sequence[EvalCase], patch) -> Sequence[EvalCase]:
    """The cases to score a model carrying ``patch`` on: new cases with their contexts when it
    is an IKE patch, else ``cases`` itself (the same object)."""
    memory = None if patch is None else in_context_memory(patch)
    return cases if memory is None else with_context(model, tok, cases, memory)
