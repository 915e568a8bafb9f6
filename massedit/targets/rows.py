"""Token rows of a group of requests for target optimisation, for every kind of model.

Each request gets one *rewrite* row per context prefix (prefix + prompt, teacher-forced with the
target) and one *KL* row ("{subject} is a"). Decoder-only models read the whole row as one
sequence: the target follows the prompt and the logits at ``len(prompt) − 1 + j`` predict target
token ``j``. Encoder-decoder models take the prompt as the *source* (keeping its ``</s>``, as keys
do) and the target in the decoder (``[start] + target[:-1]``): the logits at decoder position
``j`` predict token ``j``, and the KL logits are read at the decoder's first position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from massedit.engine.requests import EditRequest
from massedit.engine.tokens import encode_target, encode_with_subject, pad_id_of, pad_right
from massedit.models.seq2seq import decoder_start

KL_PROMPT = "{} is a"


@dataclass
class Rows:
    """Token rows of a group of requests: T rewrite rows each, then one KL row each."""

    batch: dict[str, torch.Tensor]
    subj_pos: torch.Tensor  # (rows,)
    row_req: torch.Tensor  # (rows,) local request index
    tgt_row: torch.Tensor  # (n_tgt,) row of each target token
    tgt_pos: torch.Tensor  # (n_tgt,) position whose logits predict it
    tgt_id: torch.Tensor  # (n_tgt,)
    tgt_len: torch.Tensor  # (rewrite rows,) target length per rewrite row
    n_rewrite: int
    # Where the KL logits are read in each KL row; None: at the subject token (decoder-only).
    # Encoder-decoder rows read them at the decoder's first position instead.
    kl_pos: torch.Tensor | None = None


def build_rows(model, tok, requests: Sequence[EditRequest], prefixes: Sequence[str],
               device) -> Rows:
    """The rows of ``requests`` × ``prefixes`` (request-major) plus one KL row per request."""
    seq2seq = bool(model.config.is_encoder_decoder)
    start = decoder_start(model) if seq2seq else None
    sources, decoder_in, subj, row_req = [], [], [], []
    tgt_row, tgt_pos, tgt_id, tgt_len = [], [], [], []
    for i, req in enumerate(requests):
        target = encode_target(tok, req.target_new)
        for prefix in prefixes:
            enc = encode_with_subject(tok, prefix + req.text, req.subject_span(prefix),
                                      keep_eos=seq2seq)
            r = len(sources)
            if seq2seq:
                sources.append(enc.ids)
                decoder_in.append([start, *target[:-1]])  # teacher forcing in the decoder
                first = 0
            else:
                sources.append(enc.ids + target[:-1])  # teacher forcing after the prompt
                first = len(enc.ids) - 1
            subj.append(enc.subject_last)
            row_req.append(i)
            for j, t in enumerate(target):
                tgt_row.append(r)
                tgt_pos.append(first + j)
                tgt_id.append(t)
            tgt_len.append(len(target))
    n_rewrite = len(sources)
    for i, req in enumerate(requests):
        enc = encode_with_subject(tok, KL_PROMPT.format(req.subject), (0, len(req.subject)),
                                  keep_eos=seq2seq)
        sources.append(enc.ids)
        if seq2seq:
            decoder_in.append([start])
        subj.append(enc.subject_last)
        row_req.append(i)

    def t(x):
        return torch.tensor(x, dtype=torch.long, device=device)

    pad = pad_id_of(tok)
    batch = pad_right(sources, pad, device)  # (rows, len)
    kl_pos = None
    if seq2seq:
        dec = pad_right(decoder_in, pad, device)  # (rows, dec_len)
        batch.update(decoder_input_ids=dec["input_ids"],
                     decoder_attention_mask=dec["attention_mask"])
        kl_pos = t([0] * len(requests))
    return Rows(batch, t(subj), t(row_req), t(tgt_row), t(tgt_pos), t(tgt_id), t(tgt_len),
                n_rewrite, kl_pos=kl_pos)
