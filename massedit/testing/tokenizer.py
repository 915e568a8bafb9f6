"""A word-level tokenizer built in memory, so tests never need a hub download.

Whitespace pre-tokenisation makes ``" Paris"`` and ``"Paris"`` the same token (as a real BPE
tokenizer's leading-space tokens would be, for our purposes) and keeps character offsets exact, so
subject spans computed from ``return_offsets_mapping=True`` work as with real tokenizers.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
# Always in the vocabulary: punctuation splits off as its own token under the Whitespace
# pre-tokenizer, and text built from words alone would otherwise map it to <unk>.
PUNCTUATION: tuple[str, ...] = (".", ",", ":", ";", "!", "?", "'", '"', "(", ")", "-")


def build_word_tokenizer(
    words: Iterable[str], add_bos: bool = False, padding_side: str = "right"
) -> PreTrainedTokenizerFast:
    """A fast tokenizer with one id per word of ``words`` (ids in first-seen order after specials).

    Strings in ``words`` that contain spaces or punctuation are split the way text is, so a phrase
    may be passed as well as a word. With ``add_bos=True`` every encoding starts with ``<bos>``
    (marked in ``special_tokens_mask``), like Llama's tokenizer.

    >>> tok = build_word_tokenizer(["Paris", "is", "nice"])
    >>> tok(" Paris is nice.")["input_ids"] == tok("Paris is  nice .")["input_ids"]
    True
    """
    splitter = pre_tokenizers.Whitespace()
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *PUNCTUATION):
        vocab.setdefault(token, len(vocab))
    for word in words:
        for piece, _ in splitter.pre_tokenize_str(word):
            vocab.setdefault(piece, len(vocab))

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = splitter
    # Decoding joins words with spaces; exact round trips of punctuation spacing are not needed.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A",
            pair=f"{BOS} $A $B",
            special_tokens=[(BOS, vocab[BOS])],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        padding_side=padding_side,
        add_bos_token=add_bos,
        model_max_length=1024,
    )
