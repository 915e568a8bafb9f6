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


def encode_with_subject(tok, text: str, span: tuple[int, int], where: str = "") -> Encoded:
    """Tokenise ``text`` (with the tokenizer's special tokens) and locate the subject span's last
    token: the last non-special token whose characters overlap ``span``."""
    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    start, end = span
    last = None
    for i, ((a, b), special) in enumerate(
        zip(enc["offset_mapping"], enc["special_tokens_mask"], strict=True)
    ):
        if special or a == b:
            continue
        if a < end and b > start:
            last = i
    if last is None:
        raise ValueError(f"{where}: subject span {span} of {text!r} maps to no token")
    return Encoded(list(enc["input_ids"]), last)


def encode_target(tok, target: str) -> list[int]:
    """Token ids of ``" " + target`` as a continuation (no BOS or other special tokens)."""
    ids = tok(" " + target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return list(ids)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (batch, seq)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def pad_id_of(tok) -> int:
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    if tok.eos_token_id is not None:
        return int(tok.eos_token_id)
    return 0
