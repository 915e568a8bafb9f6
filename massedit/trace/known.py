"""Facts to trace in bulk: ROME's ``known_1000.json`` schema, and the ones a model gets right.

A fact is ``{"prompt", "subject", "attribute"}`` (``target`` is accepted for ``attribute``).
ROME kept the facts GPT-2 XL completed correctly; another model knows other facts, so they are
filtered again here: a fact is kept when the model's greedy next token is the first token of
``" " + attribute``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from massedit.engine.tokens import encode_target
from massedit.evals.scoring import target_argmax

logger = logging.getLogger(__name__)


def load_known(path: str | Path) -> list[dict]:
    """Facts from a JSON list or JSONL file; errors name the record and the missing field."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON or JSONL ({err})") from None
    facts = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: record {i} is not an object")
        attribute = row.get("attribute", row.get("target"))
        missing = [k for k, v in (("prompt", row.get("prompt")), ("subject", row.get("subject")),
                                  ("attribute", attribute)) if not v]
        if missing:
            raise ValueError(f"{path}: record {i} lacks {', '.join(missing)}")
        # A template prompt ("{} is owned by") is written out: scoring reads plain text.
        prompt = row["prompt"].replace("{}", row["subject"])
        facts.append({"prompt": prompt, "subject": row["subject"],
                      "attribute": str(attribute).strip(), "id": row.get("known_id", i)})
    return facts


def predicted_facts(
    model, tok, facts: Sequence[dict], n: int | None = None, *, chunk: int = 64
) -> list[dict]:
    """The first ``n`` facts (all when None) whose attribute is the model's greedy next token.

    Facts whose prompt does not contain the subject are skipped with a warning.
    """
    kept: list[dict] = []
    for start in range(0, len(facts), chunk):
        part = [f for f in facts[start : start + chunk] if _usable(f)]
        if part:
            for fact, top in zip(part, _greedy_first_tokens(model, tok, part), strict=True):
                if top == encode_target(tok, fact["attribute"])[0]:
                    kept.append(fact)
        if n is not None and len(kept) >= n:
            return kept[:n]
    if n is not None and len(kept) < n:
        logger.warning("the model predicts only %d of %d facts; tracing those", len(kept),
                       len(facts))
    return kept


def _greedy_first_tokens(model, tok, facts: Sequence[dict]) -> list[int]:
    """The model's greedy next token after each fact's prompt."""
    if not getattr(model.config, "is_encoder_decoder", False):
        top = target_argmax(model, tok, [f["prompt"] for f in facts],
                            [f["attribute"] for f in facts])
        return [int(t[0]) for t in top]
    from massedit.evals.scoring import inference_mode
    from massedit.trace.fact import _greedy_input, traced_stack

    start = traced_stack(model).decoder_start
    with inference_mode(model):
        return [_greedy_input(model, tok, f["prompt"], f["subject"], start).answer_ids[0]
                for f in facts]


def _usable(fact: dict) -> bool:
    if fact["subject"] in fact["prompt"]:
        return True
    logger.warning("fact %s: subject %r is not in its prompt %r; skipped", fact.get("id"),
                   fact["subject"], fact["prompt"])
    return False

