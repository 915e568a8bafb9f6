"""Hyper-parameters: frozen dataclasses, YAML presets per (method, model), overrides.

Presets hold numbers only. Module names come from the model adapter, and which preset a model gets
is decided from its architecture's shape (type, depth, width), never from a path substring.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EditHparams:
    """Everything a closed-form edit needs besides the model and the requests."""

    layers: tuple[int, ...] = ()
    # Target optimisation (DESIGN §5).
    v_lr: float = 0.5
    v_num_grad_steps: int = 20
    kl_factor: float = 0.0625
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    early_stop_loss: float = 0.05
    # Objectives: λ scales C in least squares; μ regularises the equality objective.
    mom2_lambda: float = 15000.0
    mu: float = 0.0
    # Relative ridge on C (× its mean eigenvalue): keeps C⁻¹k bounded when units are dead.
    moment_ridge: float = 1e-3
    # Context prefixes: (count, length in words) pairs; the plain prompt is always included.
    context_lengths: tuple[tuple[int, int], ...] = ((5, 5), (5, 10))
    context_source: str = "corpus"  # or "model": sample prefixes from the model, as the reference
    seed: int = 0
    # Statistics budget: tokens = stats_tokens_per_width × MLP width unless given in StatsSpec.
    stats_tokens_per_width: int = 100
    # Safety: an update larger than this multiple of ‖W‖ (Frobenius) stops the edit.
    max_update_ratio: float = 10.0
    # Rows per forward pass in keys/targets.
    batch_rows: int = 64

    def replace(self, **overrides: Any) -> EditHparams:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {unknown}; known: {sorted(known)}")
        fixed = {k: _coerce(getattr(self, k), v) for k, v in overrides.items()}
        return dataclasses.replace(self, **fixed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(current: Any, value: Any) -> Any:
    """Turn YAML/CLI values into the field's type (tuples stay tuples)."""
    if isinstance(value, str) and not isinstance(current, str):
        value = yaml.safe_load(value)
    if isinstance(current, tuple):
        if isinstance(value, int):
            value = [value]
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(current, bool):
        return bool(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, int):
        return int(value)
    return value


# Architecture shapes of the models that have presets: (model_type, depth, width).
MODEL_SIGNATURES: dict[str, tuple[str, int, int]] = {
    "gpt2-xl": ("gpt2", 48, 1600),
    "gpt-j-6b": ("gptj", 28, 4096),
    "llama-2-7b": ("llama", 32, 4096),
    "smollm2-135m": ("llama", 30, 576),
}


def preset_model_name(model) -> str | None:
    """Which preset family a loaded model belongs to, from its shape; None when unknown."""
    from massedit.models import get_adapter

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


def load_preset(method: str, model, *, spread: bool) -> Preset:
    """The method's hyper-parameters for this model (falls back to defaults with a warning)."""
    name = preset_model_name(model)
    root = resources.files("massedit") / "presets" / method
    if name is not None and (root / f"{name}.yaml").is_file():
        data = yaml.safe_load((root / f"{name}.yaml").read_text()) or {}
        return Preset(method, name, EditHparams().replace(**data), source=f"{method}/{name}.yaml")
    from massedit.models import get_adapter

    depth = get_adapter(model).depth(model.config)
    data = {}
    if (root / "default.yaml").is_file():
        data = yaml.safe_load((root / "default.yaml").read_text()) or {}
    hp = EditHparams().replace(**data)
    if not hp.layers:
        hp = hp.replace(layers=default_layers(spread, depth))
    logger.warning(
        "no %s preset for this model (%s, %d layers): using defaults with layers %s; "
        "run a layer sweep (or `massedit trace --suggest`) to choose better ones",
        method, model.config.model_type, depth, list(hp.layers),
    )
    return Preset(method, None, hp, source=f"{method}/default")
