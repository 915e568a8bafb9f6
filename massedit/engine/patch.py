"""EditPatch: the record of an edit, which can be saved, reverted, re-applied and merged.

Each written update is a :class:`SiteDelta` (factors ``U Vᵀ`` or dense) in the order it was
applied. Updating a weight is always the one function :func:`patched_weight`, so re-applying a
patch to a fresh copy of the same base model reproduces the edited weights bit for bit. The
original weights of every edited site are kept (and saved), so ``revert`` is exact too.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from massedit.atomic import atomic_dir
from massedit.engine.problem import Delta
from massedit.models.adapters import Layout, get_module, read_weight, write_weight

if TYPE_CHECKING:  # massedit.export sits below engine and reads patches by their fields
    from massedit.export.card import CardInfo
    from massedit.export.peft_adapter import PeftExport

PATCH_FORMAT = 1


def patched_weight(weight: torch.Tensor, delta: Delta) -> torch.Tensor:
    """``W + ΔW`` in Linear layout, computed in fp32 on the weight's device, cast back."""
    d = delta.matrix().to(weight.device)
    return (weight.to(torch.float32) + d).to(weight.dtype)


def weight_digest(weight: torch.Tensor) -> str:
    return hashlib.sha256(weight.detach().contiguous().cpu().view(torch.uint8).numpy()).hexdigest()


@dataclass
class SiteDelta:
    site: str  # module name of the edit site
    layer: int
    layout: Layout
    delta: Delta


@dataclass
class EditPatch:
    """Deltas in application order, the original weights of edited sites, and metadata."""

    deltas: list[SiteDelta] = field(default_factory=list)
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # Linear layout, CPU
    base_digests: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    # ---- building ------------------------------------------------------------------------
    def record_original(self, site: str, weight: torch.Tensor) -> None:
        if site not in self.originals:
            self.originals[site] = weight.detach().to("cpu", copy=True)
            self.base_digests[site] = weight_digest(weight)

    @property
    def sites(self) -> list[str]:
        return list(self.originals)

    # ---- model operations ----------------------------------------------------------------
    def apply(self, model) -> None:
        """Write the patch into a fresh copy of its base model (refuses another model)."""
        for site, digest in self.base_digests.items():
            layout = self._layout(site)
            current = read_weight(get_module(model, site), layout)
            if weight_digest(current) != digest:
                raise ValueError(
                    f"this patch was made for another base model: weight {site!r} differs from "
                    "the one the patch was computed on (already edited, or a different model)"
                )
        for sd in self.deltas:
            module = get_module(model, sd.site)
            write_weight(
                module, sd.layout, patched_weight(read_weight(module, sd.layout), sd.delta)
            )

    def revert(self, model) -> None:
        """Restore the original weights of every edited site, bit for bit."""
        for site, original in self.originals.items():
            write_weight(get_module(model, site), self._layout(site), original)

    def _layout(self, site: str) -> Layout:
        for sd in self.deltas:
            if sd.site == site:
                return sd.layout
        return self.metadata.get("layouts", {}).get(site, "linear")

    def merge(self, other: EditPatch) -> EditPatch:
        """One patch that applies ``self`` then ``other`` (``other`` was made on top of self)."""
        originals = dict(other.originals)
        originals.update(self.originals)
        digests = dict(other.base_digests)
        digests.update(self.base_digests)
        meta = {**self.metadata, "merged": [self.metadata, other.metadata]}
        return EditPatch(self.deltas + other.deltas, originals, digests, meta)

    # ---- other formats (massedit.export, docs/design.md §14) --------------------------------
    def to_peft(self, model_or_config: Any, out: str | os.PathLike, *, allow_large: bool = False,
                card: CardInfo | None = None) -> PeftExport:
        """Write this patch as a PEFT LoRA adapter folder that ``PeftModel.from_pretrained``
        loads; see :func:`massedit.export.export_peft`. Returns a ``PeftExport``."""
        from massedit.export.peft_adapter import export_peft

        return export_peft(self, model_or_config, out, allow_large=allow_large, card=card)

    def push_to_hub(self, repo_id: str, *, private: bool = True, token: str | None = None,
                    card: CardInfo | None = None) -> str:
        """Upload the saved patch with a model card to the hub model repository ``repo_id``
        (private by default); returns its URL."""
        import tempfile

        from massedit.export.card import CardInfo, write_card
        from massedit.hub import push_folder

        with tempfile.TemporaryDirectory(prefix="massedit-patch-") as tmp:
            folder = self.save(Path(tmp) / "patch")
            info = card or CardInfo.from_patch(self.metadata, sites=self.sites, kind="patch")
            write_card(folder, info)
            return push_folder(folder, repo_id, private=private, token=token,
                               commit_message="massedit edit patch")

    # ---- files -----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, *, include_originals: bool = True) -> Path:
        """Write ``patch.json``, ``deltas.safetensors`` and ``originals.safetensors`` atomically."""
        directory = Path(directory)
        # A new folder renamed into place (an older save of this patch is replaced).
        with atomic_dir(directory, overwrite=True) as tmp:
            tensors, index = {}, []
            for i, sd in enumerate(self.deltas):
                entry = {
                    "site": sd.site,
                    "layer": sd.layer,
                    "layout": sd.layout,
                    "info": sd.delta.info,
                }
                if sd.delta.dense is not None:
                    tensors[f"{i}.dense"] = sd.delta.dense.contiguous().cpu()
                    entry["kind"] = "dense"
                else:
                    tensors[f"{i}.u"] = sd.delta.u.contiguous().cpu()
                    tensors[f"{i}.v"] = sd.delta.v.contiguous().cpu()
                    entry["kind"] = "factors"
                index.append(entry)
            save_file(tensors, str(tmp / "deltas.safetensors"))
            if include_originals and self.originals:
                save_file(
                    {k: v.contiguous() for k, v in self.originals.items()},
                    str(tmp / "originals.safetensors"),
                )
            layouts = {sd.site: sd.layout for sd in self.deltas}
            doc = {
                "format": PATCH_FORMAT,
                "deltas": index,
                "base_digests": self.base_digests,
                "metadata": {**self.metadata, "layouts": layouts},
            }
            (tmp / "patch.json").write_text(json.dumps(doc, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EditPatch:
        directory = Path(directory)
        if not (directory / "patch.json").exists():
            raise FileNotFoundError(f"{directory} holds no patch.json: not an EditPatch folder")
        doc = json.loads((directory / "patch.json").read_text())
        if doc.get("format") != PATCH_FORMAT:
            raise ValueError(f"{directory}: unsupported patch format {doc.get('format')!r}")
        tensors = load_file(str(directory / "deltas.safetensors"))
        deltas = []
        for i, entry in enumerate(doc["deltas"]):
            if entry["kind"] == "dense":
                delta = Delta(dense=tensors[f"{i}.dense"], info=entry.get("info", {}))
            else:
                delta = Delta(tensors[f"{i}.u"], tensors[f"{i}.v"], info=entry.get("info", {}))
            deltas.append(SiteDelta(entry["site"], entry["layer"], entry["layout"], delta))
        originals = {}
        if (directory / "originals.safetensors").exists():
            originals = load_file(str(directory / "originals.safetensors"))
        return cls(deltas, originals, doc["base_digests"], doc["metadata"])
