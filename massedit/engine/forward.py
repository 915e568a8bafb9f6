"""Small facts about a model's forward pass that scoring, tracing and targets all need."""

from __future__ import annotations

import inspect

import torch

from massedit.models.placement import input_device


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go: its input embedding's execution device (docs/design.md §12;
    ``model.device`` is the first parameter's, ``meta`` when the embedding is offloaded)."""
    return input_device(model)


def forward_kwargs(model: torch.nn.Module) -> tuple[bool, str | None]:
    """Whether forward takes ``position_ids``, and its name for 'only project the last k'."""
    params = inspect.signature(model.forward).parameters
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return "position_ids" in params, keep
