"""Presets of the published models resolve on skeletons of those models (no weights needed)."""

from __future__ import annotations

import pytest
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModelForCausalLM

from massedit.editing.presets import available_presets, load_preset
from massedit.models.adapters import get_adapter, get_module, read_weight

SHAPES = {
    "gpt2-xl": ("gpt2", dict(n_layer=48, n_embd=1600, n_head=25)),
    "gpt-j-6b": ("gptj", dict(n_layer=28, n_embd=4096, n_head=16, rotary_dim=64)),
    "llama-2-7b": ("llama", dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008,
                                 num_attention_heads=32)),
    "smollm2-135m": ("llama", dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                                   num_attention_heads=9, num_key_value_heads=3)),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("method", ["rome", "memit", "emmet"])
def test_preset_matches_model_shape(name, method):
    model_type, kwargs = SHAPES[name]
    config = AutoConfig.for_model(model_type, **kwargs)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    assert name in available_presets()[method]
    preset = load_preset(method, model, spread=method != "rome")
    assert preset.source == f"{method}/{name}.yaml"
    adapter = get_adapter(model)
    width, mlp_width = adapter.width(config), adapter.mlp_width(config)
    for layer in preset.hparams.layers:
        weight = read_weight(get_module(model, adapter.site_name(layer)), adapter.layout)
        assert tuple(weight.shape) == (width, mlp_width)  # Linear layout (d_out, d_in)
