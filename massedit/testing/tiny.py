"""Tiny randomly initialised models, one per adapter family, built from configs (no downloads).

They exercise shapes, hooks, weight orientation and exact algebra; they know no facts. Llama-like
models get an MLP width of ``3 * width`` and GPT-style ones ``4 * width`` so that ``d_in != d_out``
everywhere and a transposed weight can never pass a shape check by accident.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

from massedit.models.adapters import ADAPTERS, get_adapter, get_module, register_adapter
from massedit.testing.tokenizer import build_word_tokenizer

# One per registered decoder type (docs/design.md §10.1): the adapter table's every entry runs
# through the same algebra tests.
TINY_MODEL_TYPES: tuple[str, ...] = (
    "gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
    "gemma3_text", "phi3", "olmo", "olmo2", "granite",
)
GPT2_LINEAR = "gpt2_linear"

# Enough everyday English for prompts in tests ("The Eiffel Tower is located in Paris.").
TINY_WORDS: tuple[str, ...] = tuple(
    """
    The the a an A An is was are were be has have had of in on at to from by for with and or not
    it its this that which who what where when how He She They he she they his her their I you we
    located capital city country language speaks spoken native mother tongue born lives live living
    works work working as job profession plays played sport team member citizen official religion
    known famous named called made founded headquarters owned produced created developed written
    Eiffel Tower Colosseum Louvre Big Ben Statue Liberty Space Needle Golden Gate Bridge
    Paris Rome London Berlin Madrid Tokyo Moscow Beijing Cairo Athens Vienna Dublin Lisbon Oslo
    France Italy England Germany Spain Japan Russia China Egypt Greece Austria Ireland Portugal
    Norway Canada Brazil India Mexico Sweden Finland Poland
    French Italian English German Spanish Japanese Russian Chinese Arabic Greek Portuguese
    Danielle Darrieux Michael Jordan Lionel Messi Barack Obama Marie Curie Albert Einstein Apple
    Microsoft Google Toyota Nokia Sony iPhone Windows
    basketball football soccer baseball tennis hockey chess piano guitar violin
    actor singer writer doctor lawyer teacher pilot chef painter scientist engineer farmer
    musician player politician journalist
    new old big small good bad first last one two three many some all very also only
    year years day today tomorrow yesterday time people world home house man woman
    """.split()
)

_LLAMA_LIKE = TINY_MODEL_TYPES[3:]
_GEMMA = ("gemma", "gemma2", "gemma3_text")


def _config_kwargs(model_type: str, tok: PreTrainedTokenizerBase, n_layer: int, width: int) -> dict:
    heads = 4
    head_dim = width // heads
    common: dict[str, Any] = dict(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=model_type == "gpt2" or model_type in _GEMMA,
    )
    if model_type in ("gpt2", "gptj"):
        extra = dict(
            n_embd=width, n_layer=n_layer, n_head=heads, n_inner=4 * width, n_positions=128,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        if model_type == "gptj":
            extra["rotary_dim"] = head_dim
        return {**common, **extra}
    if model_type == "gpt_neox":
        return {
            **common, "hidden_size": width, "num_hidden_layers": n_layer,
            "num_attention_heads": heads, "intermediate_size": 4 * width,
            "max_position_embeddings": 128, "hidden_dropout": 0.0, "attention_dropout": 0.0,
        }
    # Llama-like: grouped-query attention (2 kv heads) where the family has it in practice.
    extra = dict(
        hidden_size=width, num_hidden_layers=n_layer, num_attention_heads=heads,
        num_key_value_heads=heads if model_type == "llama" else 2, head_dim=head_dim,
        intermediate_size=3 * width, max_position_embeddings=128, attention_dropout=0.0,
    )
    if model_type == "mistral":
        extra["sliding_window"] = 64
    if model_type == "gemma2":
        # Gemma 2 alternates local and global layers too; a soft-cap small enough to bend these
        # logits, so a head that forgets it cannot match the model's own.
        extra.update(
            sliding_window=16, query_pre_attn_scalar=head_dim, final_logit_softcapping=0.5,
            layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                         for i in range(n_layer)],
        )
    if model_type == "granite":
        # Every Granite multiplier away from 1, so code that ignores one cannot pass.
        extra.update(residual_multiplier=0.5, embedding_multiplier=4.0, logits_scaling=3.0,
                     attention_multiplier=1.0 / head_dim)
    if model_type == "gemma3_text":
        # Alternate local and global layers as Gemma 3 does, with a window shorter than
        # max_position_embeddings so that both attention kinds are real; the last layer is global.
        extra.update(
            sliding_window=16,
            query_pre_attn_scalar=head_dim,
            layer_types=[
                "full_attention" if (i % 2 == 1 or i == n_layer - 1) else "sliding_attention"
                for i in range(n_layer)
            ],
        )
    return {**common, **extra}


def tiny_model(
    model_type: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    seed: int = 0,
    n_layer: int = 4,
    width: int = 32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A small random fp32 model of ``model_type`` in eval mode, and its tokenizer.

    The weights depend only on ``(model_type, vocabulary, seed, n_layer, width)``. The default
    tokenizer is a word-level one over :data:`TINY_WORDS` (with ``<bos>`` for Llama-like types,
    as their real tokenizers add one).
    """
    if model_type not in TINY_MODEL_TYPES:
        raise ValueError(f"no tiny config for {model_type!r}; known: {', '.join(TINY_MODEL_TYPES)}")
    if tokenizer is None:
        tokenizer = build_word_tokenizer(TINY_WORDS, add_bos=model_type in _LLAMA_LIKE)
    kwargs = _config_kwargs(model_type, tokenizer, n_layer, width)
    config = AutoConfig.for_model(model_type, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        _vary_post_mlp_gains(model)
    model.eval()
    return model, tokenizer


@torch.no_grad()
def _vary_post_mlp_gains(model: PreTrainedModel) -> None:
    """Give the norms after the MLP (Gemma 2/3, OLMo 2) unequal gains, as trained models have:
    they initialise to all-equal gains, under which a map that ignored them would still pass."""
    adapter = get_adapter(model)
    for layer in range(adapter.depth(model.config)):
        name = adapter.mlp_out_norm_name(layer)
        if name is not None:
            weight = get_module(model, name).weight  # (d,) the gain is w (OLMo) or 1 + w (Gemma)
            weight.add_(torch.rand_like(weight) - 0.5)


class GPT2LinearConfig(GPT2Config):
    """GPT-2 whose MLP output projections are ``nn.Linear`` (adapter ``gpt2_linear``)."""

    model_type = GPT2_LINEAR


def _register_gpt2_linear() -> None:
    if GPT2_LINEAR not in ADAPTERS:
        register_adapter(GPT2_LINEAR, replace(ADAPTERS["gpt2"], layout="linear"))


def conv1d_to_linear(conv: Conv1D) -> nn.Linear:
    """An ``nn.Linear`` computing exactly what ``conv`` computes (weight transposed once)."""
    d_in, d_out = conv.weight.shape  # Conv1D stores (d_in, d_out)
    linear = nn.Linear(d_in, d_out, dtype=conv.weight.dtype, device=conv.weight.device)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)  # (d_out, d_in)
        linear.bias.copy_(conv.bias)
    return linear


def tiny_gpt2_pair(
    *, seed: int = 0, n_layer: int = 4, width: int = 32
) -> tuple[PreTrainedModel, PreTrainedModel, PreTrainedTokenizerBase]:
    """``(conv_model, linear_model, tokenizer)``: the same function, two weight layouts.

    In ``linear_model`` every edit site (``mlp.c_proj``) is an ``nn.Linear`` and its config's
    ``model_type`` is ``gpt2_linear``, so the adapter reports layout ``"linear"``. An edit through
    the Conv1D adapter must equal the same edit on the Linear copy.
    """
    _register_gpt2_linear()
    conv_model, tok = tiny_model("gpt2", seed=seed, n_layer=n_layer, width=width)
    # to_dict() carries model_type "gpt2", which would shadow the class attribute.
    fields = {k: v for k, v in conv_model.config.to_dict().items() if k != "model_type"}
    config = GPT2LinearConfig.from_dict(fields)
    linear_model = GPT2LMHeadModel(config)
    linear_model.load_state_dict(copy.deepcopy(conv_model.state_dict()))
    adapter = get_adapter(linear_model)
    for layer in range(adapter.depth(config)):
        mlp = get_module(linear_model, adapter.mlp_name(layer))
        mlp.c_proj = conv1d_to_linear(mlp.c_proj)
    linear_model.eval()
    return conv_model, linear_model, tok


_register_gpt2_linear()
