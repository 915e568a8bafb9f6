"""Half-precision overflow, named as such (docs/design.md §1, §12).

A model loaded in float16 runs its forward passes in a format whose largest value is 65,504:
hidden states of some models grow past it, the pass fills with inf and NaN, and what is
computed from it (statistics sums, the target optimisation's loss and δ) becomes inf/NaN. The
generic errors that follow ("the statistics look broken", "non-finite values") do not say that
the dtype is the cause, nor that bfloat16 (float32's range) or float32 is the remedy; this does,
where it first happens, before anything is written or cached. Only half-precision models are
checked: float32 runs keep their arithmetic and their own checks untouched.
"""

from __future__ import annotations

import torch

from massedit.engine.writing import EditError

HALF_DTYPES = (torch.float16, torch.bfloat16)

# What to load instead, per dtype: float16's range is the usual cause; bfloat16 has float32's
# range, so a NaN there comes from elsewhere and only float32 is left to try.
_REMEDY = {
    torch.float16: "load the model in bfloat16 (float32's range at half the memory) or float32: "
                   "--dtype bfloat16 or --dtype float32 (Python: load_model(..., "
                   "dtype='bfloat16'))",
    torch.bfloat16: "load the model in float32: --dtype float32 (Python: load_model(..., "
                    "dtype='float32'))",
}


class HalfPrecisionOverflowError(EditError):
    """A half-precision model's forward passes produced inf or NaN where an edit or its
    statistics needed numbers; nothing was written. An :class:`EditError`, so callers that
    handle failed edits handle this one."""


def half_dtype(model) -> torch.dtype | None:
    """The model's half-precision dtype (float16 first: the one that overflows), or None for
    a model that runs in float32 or float64."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return next((d for d in HALF_DTYPES if d in dtypes), None)


def check_finite(dtype: torch.dtype | None, value: torch.Tensor, where: str, what: str) -> None:
    """Raise :class:`HalfPrecisionOverflowError` when ``value`` has inf or NaN in a
    half-precision run (``where``: the pass, e.g. "the target optimisation"; ``what``: the
    quantity and the blocks whose forward produced it); a no-op for ``dtype=None``."""
    if dtype is None or bool(torch.isfinite(value.detach()).all()):
        return
    name = str(dtype).removeprefix("torch.")
    raise HalfPrecisionOverflowError(
        f"{name} overflow in {where}: {what} became inf/NaN (those forward passes run in "
        f"{name}, whose range ends at {torch.finfo(dtype).max:.6g}); nothing was written. "
        f"To fix it, {_REMEDY.get(dtype, 'load the model in float32')}")
