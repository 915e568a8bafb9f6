"""Token rows for subject edits of encoder-decoder models (the seam used by ``targets.py``).

The prompt (with its context prefix) is the *source*: δ is added in the encoder at the subject's
last source token. The target is read in the decoder with teacher forcing: the decoder gets
``[start] + target[:-1]`` and its logits at positions ``0..len(target)-1`` predict the target.
The KL row's source is the KL prompt; its logits are read at the decoder's first position.
Sources are encoded as the engine's keys are (:func:`massedit.tokens.encode_with_subject`, keeping
the trailing ``</s>`` the model was trained with), so keys and targets see the same tokens.
"""

from __future__ import annotations

import torch

from massedit.seq2seq.running import decoder_start
from massedit.tokens import encode_target, encode_with_subject, pad_id_of, pad_right


def build_seq2seq_rows(model, tok, requests, prefixes, device):
    from massedit.targets import KL_PROMPT, _Rows

    sources, decoder_in, subj, row_req = [], [], [], []
    tgt_row, tgt_pos, tgt_id, tgt_len = [], [], [], []
    start = decoder_start(model)
    for i, req in enumerate(requests):
        target = encode_target(tok, req.target_new)
        for prefix in prefixes:
            enc = encode_with_subject(tok, prefix + req.text, req.subject_span(prefix),
                                      keep_eos=True)
            r = len(sources)
            sources.append(enc.ids)
            decoder_in.append([start, *target[:-1]])  # teacher forcing
            subj.append(enc.subject_last)
            row_req.append(i)
            for j, t in enumerate(target):
                tgt_row.append(r)
                tgt_pos.append(j)
                tgt_id.append(t)
            tgt_len.append(len(target))
    n_rewrite = len(sources)
    for i, req in enumerate(requests):
        enc = encode_with_subject(tok, KL_PROMPT.format(req.subject), (0, len(req.subject)),
                                  keep_eos=True)
        sources.append(enc.ids)
        decoder_in.append([start])
        subj.append(enc.subject_last)
        row_req.append(i)

    def t(x):
        return torch.tensor(x, dtype=torch.long, device=device)

    pad = pad_id_of(tok)
    batch = pad_right(sources, pad, device)  # (rows, src_len)
    dec = pad_right(decoder_in, pad, device)  # (rows, dec_len)
    batch.update(decoder_input_ids=dec["input_ids"], decoder_attention_mask=dec["attention_mask"])
    return _Rows(batch, t(subj), t(row_req), t(tgt_row), t(tgt_pos), t(tgt_id), t(tgt_len),
                 n_rewrite, kl_pos=t([0] * len(requests)))
