"""Edit requests: one fact to write, validated before any weight changes.

A prompt names where the subject goes with ``{}`` or ``{subject}``, or writes the subject out (its
last occurrence is taken). Internally every prompt is normalised to a template with exactly one
``{}`` so that the subject's character span is known exactly, even when the subject's text also
occurs elsewhere in the prompt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

PLACEHOLDER = "{}"


class RequestError(ValueError):
    """A request is malformed; the message names the request and the field."""


def normalise_template(prompt: str, subject: str, where: str) -> str:
    if "{subject}" in prompt:
        prompt = prompt.replace("{subject}", PLACEHOLDER)
    count = prompt.count(PLACEHOLDER)
    if count > 1:
        raise RequestError(
            f"{where}: field 'prompt' has {count} '{{}}' placeholders; use exactly one"
        )
    if count == 1:
        return prompt
    if subject and subject in prompt:
        start = prompt.rindex(subject)
        return prompt[:start] + PLACEHOLDER + prompt[start + len(subject) :]
    raise RequestError(
        f"{where}: field 'prompt' contains neither a '{{}}' placeholder nor the subject {subject!r}"
    )


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt.format(subject)`` should continue with ``target_new``.

    >>> r = EditRequest("The Eiffel Tower is in", "Eiffel Tower", "Rome", "Paris")
    >>> r.prompt, r.text
    ('The {} is in', 'The Eiffel Tower is in')
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrases: tuple[str, ...] = ()
    neighborhood: tuple[str, ...] = ()
    case_id: str | int | None = None

    def __post_init__(self) -> None:
        where = f"request {self.case_id!r}" if self.case_id is not None else "request"
        for name in ("prompt", "subject", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise RequestError(f"{where}: field {name!r} is empty")
        if self.target_true is not None and not str(self.target_true).strip():
            object.__setattr__(self, "target_true", None)
        template = normalise_template(self.prompt, self.subject, where)
        object.__setattr__(self, "prompt", template)
        # Targets are scored as " " + target: strip the user's spaces so they are not doubled.
        object.__setattr__(self, "target_new", self.target_new.strip())
        if self.target_true is not None:
            object.__setattr__(self, "target_true", self.target_true.strip())
        object.__setattr__(self, "paraphrases", tuple(self.paraphrases))
        object.__setattr__(self, "neighborhood", tuple(self.neighborhood))

    @property
    def text(self) -> str:
        """The prompt with the subject written in."""
        return self.prompt.replace(PLACEHOLDER, self.subject)

    def subject_span(self, prefix: str = "") -> tuple[int, int]:
        """Character span of the subject in ``prefix + self.text``."""
        start = len(prefix) + self.prompt.index(PLACEHOLDER)
        return start, start + len(self.subject)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["paraphrases"] = list(self.paraphrases)
        d["neighborhood"] = list(self.neighborhood)
        return d

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], case_id: Any = None) -> EditRequest:
        def prompts(key: str) -> tuple[str, ...]:
            value = row.get(key) or ()
            if isinstance(value, str):
                value = [p for p in value.split("|") if p.strip()]
            return tuple(value)

        missing = [k for k in ("prompt", "subject", "target_new") if k not in row]
        if missing:
            raise RequestError(f"request {case_id!r}: missing field(s) {', '.join(missing)}")
        return cls(
            prompt=row["prompt"],
            subject=row["subject"],
            target_new=row["target_new"],
            target_true=row.get("target_true") or None,
            paraphrases=prompts("paraphrases") or prompts("paraphrase"),
            neighborhood=prompts("neighborhood"),
            case_id=row.get("case_id", case_id),
        )


def as_requests(items: Iterable[EditRequest | Mapping[str, Any]]) -> list[EditRequest]:
    """Accept requests or plain dicts; errors name the item's index."""
    out = []
    for i, item in enumerate(items):
        out.append(
            item if isinstance(item, EditRequest) else EditRequest.from_dict(item, case_id=i)
        )
    if not out:
        raise RequestError("no edit requests given")
    return out


def requests_digest(requests: Sequence[EditRequest]) -> str:
    """Stable digest of a batch, recorded in patches so a result names what it wrote."""
    payload = json.dumps([r.to_dict() for r in requests], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
