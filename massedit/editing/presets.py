"""Presets: YAML hyper-parameters per (method, model), matched by the architecture's shape.

Presets hold numbers only. Module names come from the model adapter, and which preset a model gets
is decided from its architecture's shape (type, depth, width), never from a path substring.

Where a preset is looked up, first found wins (docs/design.md §4):

1. the user's presets, ``cache_root()/presets/<method>/<key>.yaml`` (what ``massedit tune``
   writes), keyed by the model's name (:func:`name_key`) or its shape (:func:`shape_key`);
2. the built-in presets of the published models (:data:`MODEL_SIGNATURES`);
3. defaults derived from the model's shape (:func:`unknown_model_defaults`), with a warning.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from massedit.data.locations import cache_root
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


def model_signature(model) -> tuple[str, int, int]:
    """``(model_type, depth, width)``: what presets are matched by."""
    adapter = get_adapter(model)
    return model.config.model_type, adapter.depth(model.config), adapter.width(model.config)


def preset_model_name(model) -> str | None:
    """Which preset family a loaded model belongs to, from its shape; None when unknown."""
    sig = model_signature(model)
    for name, known in MODEL_SIGNATURES.items():
        if known == sig:
            return name
    return None


def shape_key(model) -> str:
    """The user-preset key of the model's shape, e.g. ``llama-30x576-1536`` (type, depth x
    width, MLP width): every model of that shape shares it."""
    model_type, depth, width = model_signature(model)
    mlp = get_adapter(model).mlp_width(model.config)
    return f"{model_type}-{depth}x{width}-{mlp}"


def name_key(model) -> str | None:
    """The user-preset key of the model's name (the last part of its path or hub id, lower
    case, other characters than ``[a-z0-9._-]`` as ``-``); None for a model built in memory."""
    name = str(getattr(model.config, "_name_or_path", "") or "").rstrip("/\\")
    if not name:
        return None
    return re.sub(r"[^a-z0-9._-]+", "-", re.split(r"[/\\]", name)[-1].lower()).strip("-") or None


def user_preset_dir() -> Path:
    """The user's preset folder, ``cache_root()/presets`` (``$MASSEDIT_CACHE`` decides it)."""
    return cache_root() / "presets"


def user_preset_path(method: str, model, *, by: str = "shape") -> Path:
    """Where a user preset for ``method`` and this model is written: keyed ``by`` ``"shape"``
    (every model of this shape finds it) or ``"name"`` (only this model)."""
    if by not in ("shape", "name"):
        raise ValueError(f"user presets are keyed by 'shape' or 'name', not {by!r}")
    key = shape_key(model) if by == "shape" else name_key(model)
    if key is None:
        raise ValueError("this model has no name (built in memory): key its preset by shape")
    return user_preset_dir() / method / f"{key}.yaml"


def find_user_preset(method: str, model) -> Path | None:
    """The user preset this model gets for ``method``: by name first, then by shape."""
    for key in (name_key(model), shape_key(model)):
        if key is not None:
            path = user_preset_dir() / method / f"{key}.yaml"
            if path.is_file():
                return path
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
    """Layers for a model without a preset: early-middle MLPs, where facts are recalled.

    The last layer sits a quarter of the way up (SmolLM2's swept ROME layer is 6 of 30, GPT-J's
    MEMIT run ends at 8 of 28); a spread covers about a sixth of the model, at most 5 layers as
    every published MEMIT preset (GPT-2 XL 13-17 of 48, Llama-2-7B 4-8 of 32)."""
    last = max(0, min(depth - 1, round(0.25 * depth)))
    if not method_spread:
        return (last,)
    length = max(1, min(5, round(depth / 6)))
    first = max(0, last - length + 1)
    return tuple(range(first, last + 1))


def default_lambda(mlp_width: int) -> float:
    """λ for a model without a preset: its MLP width d_in.

    Why (docs/design.md §5): least squares weighs ``λC`` against ``K Kᵀ``; whitened by C, a
    corpus key has ``E[kᵀ C⁻¹ k] = tr(C⁻¹ C) = d_in``, so one edit key pulls as hard as λ/d_in
    corpus keys hold back. The swept presets sit near λ ≈ d_in: GPT-J 15000 for d_in 16384,
    Llama-2-7B 15000 for 11008, SmolLM2 1000 for 1536, while the old fixed default (15000) kept
    SmolLM2's edits 10-15 points short."""
    return float(mlp_width)


def unknown_model_defaults(method: str, model, *, spread: bool,
                           hparams_class: type[EditHparams] = EditHparams) -> EditHparams:
    """Hyper-parameters for a model without any preset: the method's ``default.yaml`` (if it
    has one), with layers from the depth and λ from the MLP width where the file leaves them."""
    root = resources.files("massedit") / "presets" / method
    data = {}
    if (root / "default.yaml").is_file():
        data = yaml.safe_load((root / "default.yaml").read_text()) or {}
    adapter = get_adapter(model)
    derived = dict(layers=default_layers(spread, adapter.depth(model.config)),
                   mom2_lambda=default_lambda(adapter.mlp_width(model.config)))
    return hparams_class().replace(**{**derived, **data})


def load_preset(method: str, model, *, spread: bool,
                hparams_class: type[EditHparams] = EditHparams) -> Preset:
    """The method's hyper-parameters for this model (user preset, built-in preset, or derived
    defaults with a warning), in ``hparams_class`` (a built-in method with fields of its own,
    e.g. fine-tuning's)."""
    user = find_user_preset(method, model)
    if user is not None:
        data = yaml.safe_load(user.read_text()) or {}
        logger.info("%s: using your preset %s", method, user)
        return Preset(method, user.stem, hparams_class().replace(**data), source=str(user))
    name = preset_model_name(model)
    root = resources.files("massedit") / "presets" / method
    if name is not None and (root / f"{name}.yaml").is_file():
        data = yaml.safe_load((root / f"{name}.yaml").read_text()) or {}
        return Preset(method, name, hparams_class().replace(**data),
                      source=f"{method}/{name}.yaml")
    hp = unknown_model_defaults(method, model, spread=spread, hparams_class=hparams_class)
    model_type, depth, _ = model_signature(model)
    logger.warning(
        "no %s preset for this model (%s, %d layers): using defaults derived from its shape "
        "(layers %s, λ %g); run `massedit tune --model ... --method %s` to choose better ones",
        method, model_type, depth, list(hp.layers), hp.mom2_lambda, method,
    )
    return Preset(method, None, hp, source=f"{method}/default")
