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
    """A request (or pair, or check input) is malformed.

    The parts are data, so callers that know more about where the request came from (an edit
    file's row and line) report it their own way without parsing the message:

    - ``field``: the field at fault (``None`` when no single field is);
    - ``reason``: what is wrong, without naming the request (``"field 'subject' is empty"``);
    - ``where``: which request (``"request 7"``), or ``None``;
    - ``problems``: every ``(field, reason)`` found, when one request has several (all its
      empty fields); ``[(field, reason)]`` otherwise.

    ``str(err)`` is ``"<where>: <reason>"``.

    >>> err = RequestError("field 'prompt' is empty", field="prompt", where="request 7")
    >>> str(err), err.field, err.reason
    ("request 7: field 'prompt' is empty", 'prompt', "field 'prompt' is empty")
    """

    def __init__(self, reason: str, field: str | None = None, where: str | None = None,
                 problems: Sequence[tuple[str | None, str]] = ()) -> None:
        self.reason, self.field, self.where = reason, field, where
        self.problems = list(problems) or [(field, reason)]
        super().__init__(f"{where}: {reason}" if where else reason)

    def __reduce__(self):  # keep the parts across pickling (multiprocessing, pytest-xdist)
        return type(self), (self.reason, self.field, self.where, self.problems)


def empty_fields_error(obj: Any, names: Sequence[str], where: str) -> RequestError | None:
    """The error for ``obj``'s required ``names`` that are not non-blank strings (all of them
    listed in ``problems``), or None when every one is filled."""
    empty = [name for name in names
             if not isinstance(getattr(obj, name), str) or not getattr(obj, name).strip()]
    if not empty:
        return None
    problems = [(name, f"field {name!r} is empty") for name in empty]
    return RequestError("; ".join(reason for _, reason in problems), empty[0], where, problems)


def normalise_template(prompt: str, subject: str, where: str | None = None) -> str:
    if "{subject}" in prompt:
        prompt = prompt.replace("{subject}", PLACEHOLDER)
    count = prompt.count(PLACEHOLDER)
    if count > 1:
        raise RequestError(f"field 'prompt' has {count} '{{}}' placeholders; use exactly one",
                           "prompt", where)
    if count == 1:
        return prompt
    if subject and subject in prompt:
        start = prompt.rindex(subject)
        return prompt[:start] + PLACEHOLDER + prompt[start + len(subject) :]
    raise RequestError(
        f"field 'prompt' contains neither a '{{}}' placeholder nor the subject {subject!r}: "
        "write the subject out or put {} where it goes", "prompt", where)


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
        # The one validation of a request: edit files, readers and the API all rely on it
        # and report its RequestError's field and reason (docs/design.md §3, §12).
        where = f"request {self.case_id!r}" if self.case_id is not None else "request"
        error = empty_fields_error(self, ("prompt", "subject", "target_new"), where)
        if error is not None:
            raise error
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
            raise RequestError(f"missing field(s) {', '.join(missing)}", missing[0],
                               f"request {case_id!r}",
                               [(k, f"missing field {k!r}") for k in missing])
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
