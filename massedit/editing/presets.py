"""Presets: YAML hyper-parameters per (method, model), matched by the architecture's shape.

Presets hold numbers only. Module names come from the model adapter, and which preset a model gets
is decided from its architecture's shape (type, depth, width), never from a path substring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources

import yaml

from massedit.engine.hparams import EditHparams
from massedit.models.adapters import get_adapter

logger = logging.getLogger(__name__)


# Architecture shapes of the models that have presets: (model_type, depth, width).
MODEL_SIGNATURES: dict[str, tuple[str, int, int]] = {
    "gpt2-xl": ("gpt2", 48, 1600),
    "gpt-j-6b": ("gptj", 28, 4096),
    "llama-2-7b": ("llama", 32, 4096),
    "smollm2-135m": ("llama", 30, 576),
}


def preset_model_name(model) -> str | None:
    """Which preset family a loaded model belongs to, from its shape; None when unknown."""
    adapter = get_adapter(model)
    sig = (model.config.model_type, adapter.depth(model.config), adapter.width(model.config))
    for name, known in MODEL_SIGNATURES.items():
        if known == sig:
            return name
    return None


@dataclass(frozen=True)
class Preset:
    method: str
    model: str | None
    hparams: EditHparams
    source: str = field(default="default")


def available_presets() -> dict[str, list[str]]:
    """Method name -> models with a preset file."""
    out: dict[str, list[str]] = {}
    root = resources.files("massedit") / "presets"
    for method_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if method_dir.is_dir():
            out[method_dir.name] = sorted(
                p.name[: -len(".yaml")] for p in method_dir.iterdir() if p.name.endswith(".yaml")
            )
    return out


def default_layers(method_spread: bool, depth: int) -> tuple[int, ...]:
    """Layers for a model without a preset: early-middle MLPs, where facts are recalled."""
    last = max(0, min(depth - 1, round(0.25 * depth)))
    if not method_spread:
        return (last,)
    first = max(0, last - max(1, round(0.15 * depth)))
    return tuple(range(first, last + 1))


def load_preset(method: str, model, *, spread: bool,
                hparams_class: type[EditHparams] = EditHparams) -> Preset:
    """The method's hyper-parameters for this model (falls back to defaults with a warning), in
    ``hparams_class`` (a built-in method with fields of its own, e.g. fine-tuning's)."""
    name = preset_model_name(model)
    root = resources.files("massedit") / "presets" / method
    if name is not None and (root / f"{name}.yaml").is_file():
        data = yaml.safe_load((root / f"{name}.yaml").read_text()) or {}
        return Preset(method, name, hparams_class().replace(**data),
                      source=f"{method}/{name}.yaml")
    depth = get_adapter(model).depth(model.config)
    data = {}
    if (root / "default.yaml").is_file():
        data = yaml.safe_load((root / "default.yaml").read_text()) or {}
    hp = hparams_class().replace(**data)
    if not hp.layers:
        hp = hp.replace(layers=default_layers(spread, depth))
    logger.warning(
        "no %s preset for this model (%s, %d layers): using defaults with layers %s; "
        "run a layer sweep (or `massedit trace --suggest`) to choose better ones",
        method, model.config.model_type, depth, list(hp.layers),
    )
    return Preset(method, None, hp, source=f"{method}/default")
