"""Adapters for encoder-decoder models (T5, BART, Marian): one description per stack, as data.

A :class:`Seq2SeqAdapter` *is* a :class:`~massedit.models.ModelAdapter` whose own fields describe
the **encoder** stack, so everything the engine does with an adapter (subject edits, statistics,
patches) works on the encoder unchanged; ``decoder`` describes the decoder stack the same way.
:func:`edit_sites` lists the feed-forward output projections of both stacks, which is what pair
edits and the location sweep walk over.

- T5 (and mT5, gated ``DenseReluDense`` variants included): the FF sub-layer is ``layer.1`` in
  encoder blocks and ``layer.2`` in decoder blocks (``layer.1`` there is cross-attention); the
  edit site is ``DenseReluDense.wo``; each stack ends in ``final_layer_norm``; a tied LM head
  scales hidden states by ``d_model ** -0.5`` (handled by running the model itself for logits).
- BART and Marian: ``fc2`` in every layer, no final norm (post-norm layers), tied heads plus a
  ``final_logits_bias`` buffer (again: logits always come from the model's own forward).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from massedit.models.adapters import ModelAdapter, register_adapter

StackName = Literal["encoder", "decoder"]


@dataclass(frozen=True)
class Seq2SeqAdapter(ModelAdapter):
    """Encoder fields inherited from :class:`ModelAdapter`; the decoder stack in ``decoder``."""

    decoder: ModelAdapter | None = None
    # The residual stream right after the FF output is added (before any post-norm), relative to
    # a block, per stack, and whether it is that module's input (BART/Marian: the layer's
    # final_layer_norm) or output (T5: the FF sub-layer). Pair edits with value="stream" write
    # the whole stream difference, not only the FF's own output.
    streams: tuple[str, str] = ("", "")
    stream_is_input: bool = False

    def stream_name(self, stack: StackName, layer: int) -> str:
        template = self.streams[0 if stack == "encoder" else 1]
        return f"{self.stack(stack).block_name(layer)}.{template}"

    def stack(self, name: StackName) -> ModelAdapter:
        """A plain adapter for one stack (the encoder view is ``self`` without the decoder)."""
        if name == "encoder":
            return replace(self, decoder=None)
        if name == "decoder":
            if self.decoder is None:
                raise ValueError(f"adapter {self.family!r} describes no decoder stack")
            return self.decoder
        raise ValueError(f"stack must be 'encoder' or 'decoder', got {name!r}")


@dataclass(frozen=True)
class Site:
    """One feed-forward edit site of an encoder-decoder model."""

    stack: StackName
    layer: int
    name: str  # module name, e.g. "model.encoder.layers.3.fc2"

    @property
    def label(self) -> str:
        """Short form used in tables, plots and ``--set site=...``: ``encoder.3``."""
        return f"{self.stack}.{self.layer}"


def edit_sites(model_or_config) -> list[Site]:
    """Every FF edit site, encoder layers first, then decoder layers."""
    from massedit.models.adapters import get_adapter

    config = getattr(model_or_config, "config", model_or_config)
    adapter = get_adapter(config)
    if not isinstance(adapter, Seq2SeqAdapter):
        raise ValueError(f"model type {config.model_type!r} is not an encoder-decoder model")
    out = []
    for name in ("encoder", "decoder"):
        stack = adapter.stack(name)
        out += [Site(name, i, stack.site_name(i)) for i in range(stack.depth(config))]
    return out


def find_site(model_or_config, label: str) -> Site:
    """The site named ``encoder.3`` / ``decoder.0`` (also ``enc3``, ``dec:0``)."""
    match = re.fullmatch(r"(enc|dec)(?:oder)?[.:_ ]?(\d+)", label.strip().lower())
    stack = {"enc": "encoder", "dec": "decoder"}[match.group(1)] if match else None
    layer = match.group(2) if match else ""
    for site in edit_sites(model_or_config):
        if site.stack == stack and layer.isdigit() and site.layer == int(layer):
            return site
    known = ", ".join(s.label for s in edit_sites(model_or_config))
    raise ValueError(f"no edit site {label!r}; known: {known}")


def _t5(stack: str, ff_index: int, depth_attr: str) -> ModelAdapter:
    return ModelAdapter(
        family="t5",
        layers=f"{stack}.block",
        site=f"layer.{ff_index}.DenseReluDense.wo",
        mlp=f"layer.{ff_index}.DenseReluDense",
        attn="layer.0.SelfAttention",
        final_norm=f"{stack}.final_layer_norm",
        embed="shared",
        layout="linear",
        width_attr="d_model",
        mlp_width_attrs=("d_ff",),
        depth_attr=depth_attr,
        encoder_decoder=True,
    )


def _bart_like(family: str, stack: str) -> ModelAdapter:
    return ModelAdapter(
        family=family,
        layers=f"model.{stack}.layers",
        site="fc2",
        mlp="fc2",  # BART/Marian have no MLP module: fc1 -> activation -> fc2 inside the layer
        attn="self_attn",
        final_norm=None,  # post-norm layers: the stack ends in the last layer's own norm
        # Post-LN: the block outputs LN(r + fc2's output) (docs/design.md §5).
        mlp_out_norm="final_layer_norm",
        embed="model.shared",
        layout="linear",
        width_attr="d_model",
        mlp_width_attrs=(f"{stack}_ffn_dim",),
        depth_attr=f"{stack}_layers",
        encoder_decoder=True,
    )


def _seq2seq(encoder: ModelAdapter, decoder: ModelAdapter, streams: tuple[str, str],
             stream_is_input: bool) -> Seq2SeqAdapter:
    return Seq2SeqAdapter(**{**encoder.__dict__, "decoder": decoder, "streams": streams,
                             "stream_is_input": stream_is_input})


# T5's decoder depth is `num_decoder_layers` (defaults to num_layers when not set).
T5_ADAPTER = _seq2seq(_t5("encoder", 1, "num_layers"), _t5("decoder", 2, "num_decoder_layers"),
                      ("layer.1", "layer.2"), stream_is_input=False)
BART_ADAPTER = _seq2seq(_bart_like("bart", "encoder"), _bart_like("bart", "decoder"),
                        ("final_layer_norm", "final_layer_norm"), stream_is_input=True)
MARIAN_ADAPTER = _seq2seq(_bart_like("marian", "encoder"), _bart_like("marian", "decoder"),
                          ("final_layer_norm", "final_layer_norm"), stream_is_input=True)

# mBART is left out on purpose: its stacks end in a final layer norm that BART's lack.
for _type, _adapter in (("t5", T5_ADAPTER), ("mt5", T5_ADAPTER), ("bart", BART_ADAPTER),
                        ("marian", MARIAN_ADAPTER)):
    register_adapter(_type, _adapter)


def decoder_start(model) -> int:
    start = model.config.decoder_start_token_id
    if start is None:
        start = model.config.pad_token_id
    return int(start)
