"""Model adapters: where each architecture keeps its layers and edit sites, as data.

An adapter never guesses a weight's orientation from its shape: GPT-2's ``Conv1D`` stores
``(d_in, d_out)`` and says so (``layout="conv1d"``); every other site is ``nn.Linear``
``(d_out, d_in)``. :func:`read_weight` / :func:`write_weight` transpose exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

Layout = Literal["linear", "conv1d"]


@dataclass(frozen=True)
class ModelAdapter:
    """Where the parts of one architecture family live (``{}`` is the layer index)."""

    family: str
    layers: str  # path of the ModuleList of blocks
    site: str  # edit site: the MLP's output projection, relative to a block
    mlp: str  # the whole MLP, relative to a block
    attn: str  # the attention module, relative to a block
    final_norm: str | None
    embed: str
    layout: Layout
    width_attr: str  # config attribute: model width d_out
    mlp_width_attrs: tuple[str, ...]  # config attributes tried in order for d_in
    depth_attr: str
    encoder_decoder: bool = False
    # Where the MLP's output goes (docs/design.md §5, "Edits through a norm after the MLP"):
    # the norm it passes through before joining the residual stream, relative to a block (Gemma
    # 2/3, OLMo 2: ``post_feedforward_layernorm``; BART/Marian's post-LN ``final_layer_norm``,
    # which takes the stream plus the MLP output; None: added to the stream unchanged), and the
    # config attribute of a scalar that multiplies it there (Granite: ``residual_multiplier``).
    mlp_out_norm: str | None = None
    mlp_out_scale_attr: str | None = None

    def block_name(self, layer: int) -> str:
        return f"{self.layers}.{layer}"

    def site_name(self, layer: int) -> str:
        return f"{self.layers}.{layer}.{self.site}"

    def mlp_name(self, layer: int) -> str:
        return f"{self.layers}.{layer}.{self.mlp}"

    def attn_name(self, layer: int) -> str:
        return f"{self.layers}.{layer}.{self.attn}"

    def mlp_out_norm_name(self, layer: int) -> str | None:
        if self.mlp_out_norm is None:
            return None
        return f"{self.block_name(layer)}.{self.mlp_out_norm}"

    def mlp_out_scale(self, config) -> float:
        """What the stream receives per unit of (normed) MLP output: 1 unless the config says."""
        if self.mlp_out_scale_attr is None:
            return 1.0
        return float(getattr(config, self.mlp_out_scale_attr))

    def depth(self, config) -> int:
        return int(getattr(config, self.depth_attr))

    def width(self, config) -> int:
        return int(getattr(config, self.width_attr))

    def mlp_width(self, config) -> int:
        for attr in self.mlp_width_attrs:
            value = getattr(config, attr, None)
            if value:
                return int(value)
        return 4 * self.width(config)  # GPT-2/GPT-J default when n_inner is None


_LLAMA_LIKE = ModelAdapter(
    family="llama",
    layers="model.layers",
    site="mlp.down_proj",
    mlp="mlp",
    attn="self_attn",
    final_norm="model.norm",
    embed="model.embed_tokens",
    layout="linear",
    width_attr="hidden_size",
    mlp_width_attrs=("intermediate_size",),
    depth_attr="num_hidden_layers",
)

ADAPTERS: dict[str, ModelAdapter] = {
    "gpt2": ModelAdapter(
        family="gpt2",
        layers="transformer.h",
        site="mlp.c_proj",
        mlp="mlp",
        attn="attn",
        final_norm="transformer.ln_f",
        embed="transformer.wte",
        layout="conv1d",
        width_attr="n_embd",
        mlp_width_attrs=("n_inner",),
        depth_attr="n_layer",
    ),
    "gptj": ModelAdapter(
        family="gptj",
        layers="transformer.h",
        site="mlp.fc_out",
        mlp="mlp",
        attn="attn",
        final_norm="transformer.ln_f",
        embed="transformer.wte",
        layout="linear",
        width_attr="n_embd",
        mlp_width_attrs=("n_inner",),
        depth_attr="n_layer",
    ),
    "gpt_neox": ModelAdapter(
        family="gpt_neox",
        layers="gpt_neox.layers",
        site="mlp.dense_4h_to_h",
        mlp="mlp",
        attn="attention",
        final_norm="gpt_neox.final_layer_norm",
        embed="gpt_neox.embed_in",
        layout="linear",
        width_attr="hidden_size",
        mlp_width_attrs=("intermediate_size",),
        depth_attr="num_hidden_layers",
    ),
}
# Llama-like families share one description (docs/design.md §4); they differ only in where the
# MLP's output goes. Checked against each family's decoder layer in transformers 5.x:
# - llama, mistral, qwen2, qwen3, gemma, phi3, olmo: ``h = h + mlp(norm(h))`` (Phi-3's dropout
#   is the identity in eval mode);
# - gemma2, gemma3_text: ``h = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))``
#   (Gemma's RMSNorm gain is 1 + weight; its embedding scaling by √width and Gemma 2's logit
#   soft-capping happen outside the blocks);
# - olmo2: ``h = h + post_feedforward_layernorm(mlp(h))``: no norm before the MLP, so the MLP (and
#   the key) reads the raw residual stream, which changes nothing for keys, the site's input;
# - granite: ``h = h + residual_multiplier · mlp(norm(h))`` (and embedding_multiplier,
#   attention_multiplier, logits_scaling elsewhere in the model).
for _name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo"):
    ADAPTERS[_name] = _LLAMA_LIKE
for _name in ("gemma2", "gemma3_text", "olmo2"):
    ADAPTERS[_name] = replace(_LLAMA_LIKE, family=_name,
                              mlp_out_norm="post_feedforward_layernorm")
ADAPTERS["granite"] = replace(_LLAMA_LIKE, family="granite",
                              mlp_out_scale_attr="residual_multiplier")


def register_adapter(model_type: str, adapter: ModelAdapter) -> None:
    """Teach massedit a new architecture (``config.model_type``)."""
    ADAPTERS[model_type] = adapter


def get_adapter(model_or_config) -> ModelAdapter:
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(
            f"model type {model_type!r} has no massedit adapter (known: {known}). Register one "
            "with massedit.models.register_adapter(model_type, ModelAdapter(...)), giving the "
            "layer list path, the MLP output projection and the weight layout."
        )
    return ADAPTERS[model_type]


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"module {name!r} not found in {type(model).__name__}") from err


def read_weight(module: nn.Module, layout: Layout) -> torch.Tensor:
    """The site's weight in Linear layout ``(d_out, d_in)`` (a view, not a copy)."""
    w = module.weight
    return w.T if layout == "conv1d" else w


@torch.no_grad()
def write_weight(module: nn.Module, layout: Layout, new_weight: torch.Tensor) -> None:
    """Overwrite the site's weight from a Linear-layout ``(d_out, d_in)`` tensor, in place."""
    target = module.weight
    value = new_weight.T if layout == "conv1d" else new_weight
    if value.shape != target.shape:
        raise ValueError(f"weight shape {tuple(value.shape)} != parameter {tuple(target.shape)}")
    target.copy_(value.to(dtype=target.dtype, device=target.device))

