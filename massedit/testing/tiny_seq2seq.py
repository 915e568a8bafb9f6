"""Tiny encoder-decoder models (T5, gated T5, BART, Marian) built from configs, no downloads.

Like :mod:`massedit.testing.tiny`: random weights for shapes, hooks, orientation and exact algebra.
The MLP width is ``3 * width`` so ``d_in != d_out``, and the decoder has one layer fewer than the
encoder so that a stack mix-up cannot pass a depth check. Source and target share one word-level
vocabulary; every encoding ends in ``<eos>`` as with T5 and Marian tokenizers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tokenizers import processors
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from massedit.testing.tiny import TINY_WORDS
from massedit.testing.tokenizer import EOS, build_word_tokenizer

# "t5_gated" is T5 with a gated-GELU feed-forward (T5 v1.1, mT5, Flan-T5): same site names.
TINY_SEQ2SEQ_TYPES: tuple[str, ...] = ("t5", "t5_gated", "bart", "marian")


def build_seq2seq_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose encodings end in ``<eos>`` (marked as special)."""
    tok = build_word_tokenizer(words)
    eos_id = tok.convert_tokens_to_ids(EOS)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)],
    )
    return tok


def seq2seq_config(
    model_type: str, tok: PreTrainedTokenizerBase, *, n_layer: int = 3, n_dec_layer: int = 2,
    width: int = 32, mlp_width: int | None = None, heads: int = 4,
):
    """A config for ``model_type`` (one of :data:`TINY_SEQ2SEQ_TYPES`) over ``tok``'s vocabulary.

    The decoder starts from ``<pad>`` (T5 and Marian's convention) and stops at ``<eos>``."""
    mlp_width = mlp_width or 3 * width
    common: dict[str, Any] = dict(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, decoder_start_token_id=tok.pad_token_id,
        forced_bos_token_id=None, forced_eos_token_id=None,
    )
    if model_type in ("t5", "t5_gated"):
        return AutoConfig.for_model(
            "t5", d_model=width, d_ff=mlp_width, d_kv=width // heads, num_heads=heads,
            num_layers=n_layer, num_decoder_layers=n_dec_layer, dropout_rate=0.0,
            feed_forward_proj="gated-gelu" if model_type == "t5_gated" else "relu",
            relative_attention_num_buckets=8, relative_attention_max_distance=32,
            tie_word_embeddings=True, **common,
        )
    if model_type in ("bart", "marian"):
        extra = dict(
            d_model=width, encoder_layers=n_layer, decoder_layers=n_dec_layer,
            encoder_ffn_dim=mlp_width, decoder_ffn_dim=mlp_width,
            encoder_attention_heads=heads, decoder_attention_heads=heads,
            max_position_embeddings=128, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, scale_embedding=model_type == "marian",
        )
        if model_type == "marian":
            extra["decoder_vocab_size"] = len(tok)
            extra["share_encoder_decoder_embeddings"] = True
        return AutoConfig.for_model(model_type, **extra, **common)
    raise ValueError(f"no tiny seq2seq config for {model_type!r}; known: "
                     f"{', '.join(TINY_SEQ2SEQ_TYPES)}")


def tiny_seq2seq_model(
    model_type: str, tokenizer: PreTrainedTokenizerBase | None = None, *, seed: int = 0,
    n_layer: int = 3, n_dec_layer: int = 2, width: int = 32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A small random fp32 encoder-decoder model in eval mode, and its tokenizer."""
    tok = tokenizer or build_seq2seq_tokenizer(TINY_WORDS)
    config = seq2seq_config(model_type, tok, n_layer=n_layer, n_dec_layer=n_dec_layer, width=width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSeq2SeqLM.from_config(config, dtype=torch.float32)
        if model_type in ("bart", "marian"):
            # Random, non-zero logits bias: a head that forgot it would be caught by tests.
            model.final_logits_bias.normal_(0.0, 0.1)
    model.eval()
    model.requires_grad_(False)
    return model, tok
