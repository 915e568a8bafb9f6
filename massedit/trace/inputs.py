"""The token ids a trace runs on: prompt, subject positions and the answer being measured.

The prompt is tokenised with the tokenizer's special tokens (a Llama-style BOS), exactly as the
engine tokenises edit prompts (:func:`~massedit.engine.tokens.encode_with_subject`), and the
answer as ``" " + answer`` (:func:`~massedit.engine.tokens.encode_target`). A multi-token answer
is teacher forced: the model reads ``prompt + answer[:-1]`` and the answer's probability is
``exp(mean log p(answer tokens))`` (docs/design.md §9). Only prompt positions are ever corrupted or
restored. Encoder-decoder models read the prompt as the source and the answer in the decoder
(``[decoder start] + answer[:-1]``), tokenised as the engine's subject edits do
(:mod:`massedit.targets.rows`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from massedit.engine.requests import PLACEHOLDER, normalise_template
from massedit.engine.tokens import encode_target, encode_with_subject

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TraceInput:
    """One fact, tokenised for tracing."""

    prompt: str  # the prompt with the subject written in
    subject: str
    prompt_ids: tuple[int, ...]  # (P,) with the tokenizer's leading special tokens
    subject_range: tuple[int, int]  # [first, last + 1) token positions of the subject
    answer: str
    answer_ids: tuple[int, ...]  # (t,) ids of " " + answer (or the greedy token)
    tokens: tuple[str, ...]  # (P,) each prompt token decoded, for tables and plots
    decoder_start: int | None = None  # encoder-decoder models: the decoder's first input

    def model_inputs(self, device=None) -> dict[str, torch.Tensor]:
        """A batch of one: decoder-only models read ``prompt + answer[:-1]`` (1, P + t - 1);
        encoder-decoder models the prompt (1, P) and ``[start] + answer[:-1]`` (1, t)."""
        def row(ids) -> torch.Tensor:
            return torch.tensor([list(ids)], dtype=torch.long, device=device)

        if self.decoder_start is None:
            return {"input_ids": row(self.prompt_ids + self.answer_ids[:-1])}
        return {"input_ids": row(self.prompt_ids),
                "decoder_input_ids": row((self.decoder_start, *self.answer_ids[:-1]))}

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def subject_last(self) -> int:
        return self.subject_range[1] - 1


def subject_template(prompt: str, subject: str) -> str:
    """``prompt`` with exactly one ``{}`` where the subject is (clear error when it is absent)."""
    if not subject or not subject.strip():
        raise ValueError("trace: the subject is empty")
    return normalise_template(prompt, subject, where="trace")


def tokenise_fact(tok, prompt: str, subject: str, keep_eos: bool = False
                  ) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """``(text, prompt ids, subject token range)`` for a prompt that contains the subject.

    The subject's first token is the last token overlapping its first character, and its last
    token the last one overlapping any of its characters: both come from offset mappings.
    ``keep_eos``: an encoder-decoder's source keeps the EOS its tokenizer ends it with, as in
    training and in pair edits (a decoder prompt drops it: the answer follows the prompt).
    """
    template = subject_template(prompt, subject)
    start = template.index(PLACEHOLDER)
    text = template.replace(PLACEHOLDER, subject)
    end = start + len(subject)
    whole = encode_with_subject(tok, text, (start, end), where="trace", keep_eos=keep_eos)
    first = encode_with_subject(tok, text, (start, start + 1), where="trace",
                                keep_eos=keep_eos).subject_last
    return text, tuple(whole.ids), (first, whole.subject_last + 1)


def decode_tokens(tok, ids) -> tuple[str, ...]:
    return tuple(tok.decode([i]) for i in ids)


def answer_input(tok, text: str, subject: str, ids, subject_range, answer_ids, answer: str,
                 decoder_start: int | None = None) -> TraceInput:
    return TraceInput(
        prompt=text,
        subject=subject,
        prompt_ids=tuple(ids),
        subject_range=subject_range,
        answer=answer,
        answer_ids=tuple(answer_ids),
        tokens=decode_tokens(tok, ids),
        decoder_start=decoder_start,
    )


def target_input(
    tok, prompt: str, subject: str, target: str | Sequence[int], decoder_start: int | None = None
) -> TraceInput:
    """The input for a given answer: a text (``--target``) or token ids (reused as they are)."""
    text, ids, subject_range = tokenise_fact(tok, prompt, subject,
                                             keep_eos=decoder_start is not None)
    if isinstance(target, str):
        try:
            answer_ids = encode_target(tok, target)
        except ValueError as err:
            raise ValueError(f"trace: the target {target!r} has no tokens") from err
        shown = target.strip()
    else:
        answer_ids = [int(i) for i in target]
        if not answer_ids:
            raise ValueError("trace: the target has no tokens")
        shown = tok.decode(answer_ids).strip()
    return answer_input(tok, text, subject, ids, subject_range, answer_ids, shown, decoder_start)
