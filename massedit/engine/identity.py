"""Identity of a model's edit-site weights, cheap enough to take every batch (docs/design.md §11).

Targets are cached per state of the weights (``Editor.target_cache`` and the target store), so the
state needs a name. Hashing every site's weight each batch costs ~7.5 GB of hashing per batch on
GPT-J; instead each parameter's identity is

- its **content hash** (sha256 of its bytes), taken once and remembered on the tensor itself
  together with the tensor's ``(data_ptr, _version)``;
- after massedit writes an update into it: ``H(identity before, digest of the update)``, a
  **chain**: the written weight ``cast(fp32(W) + ΔW)`` is a function of ``W`` and ``ΔW``, so equal
  chains mean equal weights and a target is never reused across different weights.

Any other in-place write (``copy_``, ``load_state_dict``, an optimiser step) bumps the tensor's
``_version``, and ``.to()`` / ``.half()`` move its data (``data_ptr``), so the remembered identity
no longer matches and the content hash is taken again. Not seen: writes through ``param.data``,
which bypass the version counter; massedit never writes that way (``write_weight``).

Chains depend on the path to a state: a patch applied to a fresh base (a resumed run) is replayed
through :func:`apply_patch`, which chains its deltas exactly as the edit that made it did, so a
resumed run names its weights as the uninterrupted run did and finds its cached targets.
"""

from __future__ import annotations

import hashlib

import torch

from massedit.engine.patch import EditPatch, weight_digest
from massedit.engine.problem import Delta
from massedit.models.adapters import get_adapter, get_module
from massedit.models.placement import stored_tensor

MEMO = "_massedit_identity"  # attribute on the parameter: ((data_ptr, _version), identity)


def _state(param: torch.Tensor) -> tuple[int, int]:
    return param.data_ptr(), param._version


def remember(param: torch.Tensor, identity: str) -> str:
    """Record ``identity`` as the name of ``param``'s current contents."""
    setattr(param, MEMO, (_state(param), identity))
    return identity


def content_identity(param: torch.Tensor) -> str:
    """The full hash of a tensor's bytes (what every memo falls back to)."""
    return "w:" + weight_digest(param)


def tensor_identity(param: torch.Tensor) -> str:
    """``param``'s identity: remembered while its ``(data_ptr, _version)`` is unchanged, else its
    content hash (taken now and remembered)."""
    memo = getattr(param, MEMO, None)
    if memo is not None and memo[0] == _state(param):
        return memo[1]
    return remember(param, content_identity(param))


def delta_digest(delta: Delta) -> str:
    """Hash of an update's stored tensors (factors or dense, as written and saved)."""
    h = hashlib.sha256()
    for name, t in (("u", delta.u), ("v", delta.v), ("dense", delta.dense)):
        if t is not None:
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            # flatten: a contiguous (d, 1) tensor may still have a last stride ≠ 1.
            h.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
    return h.hexdigest()


def chain(before: str, delta: Delta) -> str:
    """The identity of ``patched_weight(W, delta)`` given ``W``'s identity ``before``."""
    return "c:" + hashlib.sha256(f"{before}|{delta_digest(delta)}".encode()).hexdigest()


def record_write(param: torch.Tensor, before: str, delta: Delta) -> str:
    """After massedit wrote ``delta`` into ``param`` (whose identity was ``before``): remember the
    chained identity under the parameter's new version."""
    return remember(param, chain(before, delta))


def site_parameter(model, site: str) -> torch.Tensor:
    """The site's weight; for an offloaded site (never written: docs/design.md §12) its stored
    copy, as the meta parameter has no bytes to hash."""
    return stored_tensor(get_module(model, site))


def weights_identity(model, *, memo: bool = True) -> str:
    """Identity of all edit-site weights of ``model`` (the only ones massedit changes).
    ``memo=False`` hashes every site's bytes again (the reference cost, for benchmarks)."""
    adapter = get_adapter(model)
    h = hashlib.sha256()
    for layer in range(adapter.depth(model.config)):
        param = site_parameter(model, adapter.site_name(layer))
        h.update((tensor_identity(param) if memo else content_identity(param)).encode())
    return h.hexdigest()


def apply_patch(patch: EditPatch, model) -> None:
    """``patch.apply(model)``, then name the written weights by chaining the patch's deltas in
    order from the base weights' identities, as the edit that made the patch named them."""
    current = {sd.site: tensor_identity(site_parameter(model, sd.site)) for sd in patch.deltas}
    patch.apply(model)
    for sd in patch.deltas:
        current[sd.site] = chain(current[sd.site], sd.delta)
    for site, identity in current.items():
        remember(site_parameter(model, site), identity)
