"""Running an encoder-decoder model: source batches, teacher forcing, greedy translation.

Sources are padded on the right with an attention mask (the encoder is bidirectional, so padding
side only matters for the mask). Teacher forcing feeds ``[decoder_start] + target[:-1]`` and
reads the logits that predict ``target``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from massedit.engine.forward import model_device
from massedit.engine.tokens import pad_batch, pad_id_of
from massedit.models.seq2seq import decoder_start


def encode_source(tok, text: str) -> list[int]:
    """Source ids with the tokenizer's specials (T5/Marian append ``</s>``)."""
    return list(tok(text)["input_ids"])


def encode_output(tok, text: str) -> list[int]:
    """Target-side ids (``text_target``: Marian has its own target vocabulary), ending in EOS."""
    ids = list(tok(text_target=text)["input_ids"])
    if tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
        ids.append(tok.eos_token_id)
    return ids


def source_batch(tok, sources: Sequence[Sequence[int]], device) -> dict[str, torch.Tensor]:
    ids, mask, _ = pad_batch(sources, pad_id_of(tok), "right", device)
    return {"input_ids": ids, "attention_mask": mask}  # (b, src_len)


def teacher_forced_batch(
    model, tok, sources: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs for teacher forcing and the labels ``(b, tgt_len)`` (-100 at padding), on
    the input embedding's device (docs/design.md §12: not the first parameter's, which is
    ``meta`` when the embedding is offloaded; the decoder's hooks move what they need)."""
    device = model_device(model)
    batch = source_batch(tok, sources, device)
    start = decoder_start(model)
    dec_in = [[start, *out[:-1]] for out in outputs]
    ids, mask, _ = pad_batch(dec_in, pad_id_of(tok), "right", device)
    labels, _, _ = pad_batch(outputs, -100, "right", device)
    batch.update(decoder_input_ids=ids, decoder_attention_mask=mask)  # (b, tgt_len)
    return batch, labels


@torch.no_grad()
def translate(
    model, tok, sources: Sequence[str], *, max_new_tokens: int = 64, batch_size: int = 64,
) -> list[str]:
    """Greedy translations (no sampling, one beam), decoded without special tokens."""
    device = model_device(model)
    out: list[str] = []
    for lo in range(0, len(sources), batch_size):
        chunk = [encode_source(tok, s) for s in sources[lo : lo + batch_size]]
        batch = source_batch(tok, chunk, device)
        gen = model.generate(
            **batch, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
            decoder_start_token_id=decoder_start(model), eos_token_id=tok.eos_token_id,
            pad_token_id=pad_id_of(tok), forced_bos_token_id=None, forced_eos_token_id=None,
        )
        out += [t.strip() for t in tok.batch_decode(gen, skip_special_tokens=True)]
    return out
