"""Where a model's tensors live when it is split over devices or offloaded (docs/design.md §12).

A model loaded with ``device_map`` (accelerate) has its blocks on several devices, and blocks
offloaded to CPU or disk keep their parameters on the ``meta`` device between forward passes:
a hook (``module._hf_hook``, an ``AlignDevicesHook``) loads them from its ``weights_map`` just
before the module runs. So "the first parameter's device" says nothing about where inputs go,
and reading an offloaded parameter directly gives a tensor without data. These helpers answer
both questions; they import nothing from accelerate (a model without hooks passes through).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn


def _align_hooks(module: nn.Module) -> Iterator[object]:
    """The module's accelerate hooks (a ``SequentialHook`` holds several)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return
    yield from getattr(hook, "hooks", (hook,))


def offload_store(module: nn.Module):
    """The mapping an offloaded module's parameters are loaded from, or None when the module
    keeps its own parameters."""
    for hook in _align_hooks(module):
        if getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None:
            return hook.weights_map
    return None


def is_offloaded(module: nn.Module) -> bool:
    """Whether any of the module's own parameters is on ``meta`` (loaded only for a forward)."""
    return any(p.device.type == "meta" for p in module.parameters(recurse=False))


def stored_tensor(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The value of the module's parameter or buffer ``name``: the tensor itself, or, for an
    offloaded module, the copy its hook loads from (read-only: writing it may change nothing)."""
    value = getattr(module, name)
    if value.device.type != "meta":
        return value
    store = offload_store(module)
    if store is None:
        raise ValueError(f"{type(module).__name__}.{name} is on the meta device with no "
                         "offloaded copy to read (was the model loaded completely?)")
    return store[name]


def execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: its hook's execution device, else its parameters'."""
    for hook in _align_hooks(module):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def input_device(model: nn.Module) -> torch.device:
    """Where token ids and masks go: the input embedding's execution device (not the model's
    first parameter, which is on ``meta`` when the embedding is offloaded)."""
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embedding = None
    return execution_device(embedding if embedding is not None else model)


def offloaded_modules(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The ``names`` (modules of ``model``) whose parameters are offloaded."""
    return [name for name in names if is_offloaded(model.get_submodule(name))]
