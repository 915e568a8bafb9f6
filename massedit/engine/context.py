"""Context prefixes that keys and targets are averaged over (docs/design.md §5).

The reference code samples prefixes from the model starting at "The"; small instruct models answer
that with punctuation, so by default prefixes are short windows of natural text from the statistics
corpus, cut at word boundaries and drawn with a fixed seed. Prefixes are saved with the results.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from massedit.models.placement import input_device


def corpus_prefixes(
    texts: Sequence[str], lengths: Sequence[tuple[int, int]], seed: int
) -> list[str]:
    """``[""]`` plus, for each ``(count, n_words)``, windows of ``n_words`` words ending in ". "."""
    # WikiText's "<unk>" markers are not natural text.
    words = [w for t in texts for w in t.split() if w.isprintable() and "<unk>" not in w]
    if not words:
        raise ValueError("no text to draw context prefixes from")
    rng = random.Random(seed)
    out = [""]
    for count, n_words in lengths:
        for _ in range(count):
            start = rng.randrange(0, max(1, len(words) - n_words))
            window = " ".join(words[start : start + n_words]).strip(".,;:!? ")
            out.append(window + ". ")
    return out


@torch.no_grad()
def model_prefixes(model, tok, lengths: Sequence[tuple[int, int]], seed: int) -> list[str]:
    """The reference's way: sample ``count`` continuations of "The" of ``n`` tokens each."""
    out = [""]
    device = input_device(model)  # not the first parameter's: meta when offloaded (§12)
    torch.manual_seed(seed)
    for count, n_tokens in lengths:
        batch = tok(["The"] * count, return_tensors="pt").to(device)
        gen = model.generate(
            **batch, do_sample=True, top_k=5, max_new_tokens=n_tokens,
            pad_token_id=tok.pad_token_id or tok.eos_token_id,
        )
        for text in tok.batch_decode(gen, skip_special_tokens=True):
            out.append(text.replace("{", " ").replace("}", " ") + ". ")
    return out
