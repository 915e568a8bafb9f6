"""Small context managers over forward hooks (in the spirit of baukit's nethook).

>>> with capture(model, ["transformer.h.3.mlp.c_proj"], inputs=True) as seen:
...     model(**batch)
>>> seen["transformer.h.3.mlp.c_proj"].shape     # (batch, seq, d_in)

>>> with stop_after(model, "transformer.h.5"):    # no work is done past block 5
...     run_until(model, batch)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from massedit.models.adapters import get_module


@contextmanager
def removed_after(handles: list) -> Iterator[None]:
    """Remove the hook ``handles`` when the block ends, however it ends."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (nothing downstream is computed)."""


def first_output(x):
    """A module's main output (or first positional argument): the tensor, tuple or not."""
    return x[0] if isinstance(x, tuple) else x


@contextmanager
def capture(
    model: nn.Module, names: Sequence[str], *, inputs: bool = False, detach: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Record each named module's output (or first positional input) on every forward pass."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        module = get_module(model, name)

        def hook(_mod, args, output, name=name):
            value = first_output(args) if inputs else first_output(output)
            seen[name] = value.detach() if detach else value

        handles.append(module.register_forward_hook(hook))
    with removed_after(handles):
        yield seen


@contextmanager
def edit_output(
    model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Replace a module's (first) output with ``fn(output)`` while the context is open."""
    module = get_module(model, name)

    def hook(_mod, _args, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def stop_after(model: nn.Module, name: str) -> Iterator[None]:
    """End any forward pass once module ``name`` has run; use with :func:`run_until`."""

    def hook(_mod, _args, _output):
        raise StopForward

    handle = get_module(model, name).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters that require gradients stop doing so while the context is open.

    Optimising an input (a target's δ) needs gradients of activations only; trainable weights
    would make every backward pass also compute (and accumulate) weight gradients.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def run_until(model: nn.Module, batch: dict) -> None:
    """Run a forward pass that a :func:`stop_after` hook is expected to cut short."""
    try:
        model(**batch, use_cache=False)
    except StopForward:
        pass


class _Replay(nn.Module):
    """Stands in for a transformer block whose output is already known.

    Blocks below the target layer give the same output at every optimisation step (δ enters
    above them), so they are replaced by this module: it returns ``value`` when given, else its
    input unchanged, in the same structure (tensor or tuple) the real block returned.
    """

    def __init__(self, template, value: torch.Tensor | None = None) -> None:
        super().__init__()
        self.is_tuple = isinstance(template, tuple)
        self.tail = tuple(template[1:]) if self.is_tuple else ()
        self.value = value

    def forward(self, *args, **kwargs):
        x = self.value if self.value is not None else (args[0] if args else kwargs["hidden_states"])
        return (x, *self.tail) if self.is_tuple else x


@contextmanager
def record_block_outputs(model: nn.Module, layers_path: str, upto: int) -> Iterator[dict]:
    """Record the outputs of blocks ``0..upto`` (for :func:`replay_blocks`)."""
    blocks = get_module(model, layers_path)
    seen: dict[int, object] = {}
    handles = []
    for i in range(upto + 1):
        def hook(_m, _a, output, i=i):
            seen[i] = (tuple(o.detach() if torch.is_tensor(o) else o for o in output)
                       if isinstance(output, tuple) else output.detach())
        handles.append(blocks[i].register_forward_hook(hook))
    with removed_after(handles):
        yield seen


@contextmanager
def replay_blocks(
    model: nn.Module, layers_path: str, recorded: dict, value: torch.Tensor
) -> Iterator[None]:
    """Skip blocks ``0..upto``: block ``upto`` returns ``value``, the ones below do nothing.

    >>> with record_block_outputs(model, "model.layers", 5) as rec:
    ...     model(**batch)                       # one real pass
    >>> with replay_blocks(model, "model.layers", rec, rec[5] + change):
    ...     model(**batch)                       # blocks 0-5 cost nothing now
    """
    blocks = get_module(model, layers_path)
    upto = max(recorded)
    originals = [blocks[i] for i in range(upto + 1)]
    try:
        for i in range(upto):
            blocks[i] = _Replay(recorded[i])
        blocks[upto] = _Replay(recorded[upto], value)
        yield
    finally:
        for i, module in enumerate(originals):
            blocks[i] = module
