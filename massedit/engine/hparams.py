"""Hyper-parameters of a closed-form edit: a frozen dataclass with typed overrides.

Plug-in methods extend it with a dataclass subclass (see :mod:`massedit.contracts`); presets that
fill it per (method, model) live in :mod:`massedit.editing.presets`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class EditHparams:
    """Everything a closed-form edit needs besides the model and the requests."""

    layers: tuple[int, ...] = ()
    # Target optimisation (docs/design.md §5).
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
    # Rows per target group (each group's graph is live during its steps, so this bounds the
    # targets' memory); None: batch_rows. Never changes a target (docs/scale.md, phase 2).
    target_rows: int | None = None

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
