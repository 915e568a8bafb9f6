"""Tokenisation with exact subject positions, from offset mappings.

Positions are found from character offsets, never by matching token ids, so they are right with
BOS-adding tokenizers, subjects whose text occurs twice (the placeholder's position is used), and
subjects that merge with the preceding space. Batches are padded here on the right, whatever the
tokenizer's padding side: with a causal mask, right padding leaves positions and logits of real
tokens exactly as in an unpadded run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Encoded:
    """Token ids of one text plus the index of the subject's last token."""

    ids: list[int]
    subject_last: int


def encode_with_subject(
    tok, text: str, span: tuple[int, int], where: str = "", keep_eos: bool = False
) -> Encoded:
    """Tokenise ``text`` (with the tokenizer's special tokens) and locate the subject span's last
    token: the last non-special token whose characters overlap ``span``. ``keep_eos``: keep
    trailing specials, for encoder sources (T5/Marian were trained on sources ending in ``</s>``;
    without it 11-15% of a toy model's translations changed)."""
    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids, specials = list(enc["input_ids"]), list(enc["special_tokens_mask"])
    while not keep_eos and specials and specials[-1]:  # an EOS would sit before the target
        ids.pop()
        specials.pop()
    start, end = span
    last = None
    for i, ((a, b), special) in enumerate(
        zip(enc["offset_mapping"][: len(ids)], specials, strict=True)
    ):
        if special or a == b:
            continue
        if a < end and b > start:
            last = i
    if last is None:
        raise ValueError(f"{where}: subject span {span} of {text!r} maps to no token")
    return Encoded(ids, last)


def encode_target(tok, target: str) -> list[int]:
    """Ids of ``" " + target`` as a continuation, as ROME's ``tok(f" {target}")`` (no specials).

    SentencePiece tokenizers with a dummy prefix turn the leading space into a lone ``"▁"`` token
    before the word's own (already space-marked) token; it is dropped, since the model never sees
    it between words.
    """
    ids = list(tok(" " + target, add_special_tokens=False)["input_ids"])
    if len(ids) > 1 and tok.decode(ids[:1]).strip() == "":
        ids = ids[1:]
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return ids


def pad_batch(
    rows: Sequence[Sequence[int]], pad_id: int, side: str = "right", device=None
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Pad id lists into ``input_ids`` and ``attention_mask`` (batch, seq), plus each row's
    offset (where its first real token sits; non-zero only with left padding)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (batch, seq)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (batch, seq)
    offsets = []
    for i, r in enumerate(rows):
        start = width - len(r) if side == "left" else 0
        ids[i, start : start + len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, start : start + len(r)] = 1
        offsets.append(start)
    return ids.to(device), mask.to(device), offsets


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Right-padded model inputs: positions and logits of real tokens are as unpadded."""
    ids, mask, _ = pad_batch(seqs, pad_id, "right", device)
    return {"input_ids": ids, "attention_mask": mask}


def pad_id_of(tok) -> int:
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    if tok.eos_token_id is not None:
        return int(tok.eos_token_id)
    return 0
