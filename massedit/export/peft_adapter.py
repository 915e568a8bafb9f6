"""``EditPatch.to_peft``: a patch as a PEFT LoRA adapter (docs/design.md §14).

The folder holds what ``PeftModel.from_pretrained(base, folder)`` reads, and nothing of massedit:
``adapter_config.json`` (written by PEFT's own ``LoraConfig``) and ``adapter_model.safetensors``
with ``base_model.model.<site>.lora_A.weight`` ``(r, d_in)`` and ``lora_B.weight`` ``(d_out, r)``
per site, plus a model card. Targets are the sites' full module names (PEFT matches a name in
``target_modules`` exactly), each site's rank is in ``rank_pattern`` and its ``lora_alpha`` equals
its rank, so the LoRA scale is 1 and the adapter adds exactly the patch's ``ΔW``. GPT-2's
``Conv1D`` sites need ``fan_in_fan_out``; the factors are in Linear layout either way (PEFT keeps
``lora_A``/``lora_B`` as ``nn.Linear`` and transposes only the merged weight).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file
from torch import nn

from massedit.atomic import atomic_dir
from massedit.export.card import CardInfo, write_card
from massedit.export.lora import AdapterTooLargeError, ExportError, SiteLora, site_lora

if TYPE_CHECKING:
    from massedit.engine.patch import EditPatch

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class PeftExport:
    """An adapter folder written by :func:`export_peft`."""

    path: Path
    ranks: dict[str, int]  # site -> LoRA rank
    base_model: str
    svd_sites: list[str] = field(default_factory=list)  # sites factored by an SVD of ΔW

    def push_to_hub(self, repo_id: str, *, private: bool = True, token: str | None = None,
                    commit_message: str = "massedit edit as a PEFT LoRA adapter") -> str:
        """Upload the adapter folder to the hub model repository ``repo_id`` (private by
        default); returns the repository's URL."""
        from massedit.hub import push_folder

        return push_folder(self.path, repo_id, private=private, token=token,
                           commit_message=commit_message)


def _site_module_types() -> tuple[type, ...]:
    """Module types whose weight PEFT's LoRA can wrap as an edit site."""
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def structure_model(model_or_config):
    """A model to read module names and types from: the model itself, or one built on the meta
    device (no memory, no weights) from a config object or a hub id / local folder."""
    if isinstance(model_or_config, nn.Module):
        return model_or_config
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = model_or_config
    if isinstance(config, (str, os.PathLike)):
        from massedit.models.loading import resolve_model_path

        config = AutoConfig.from_pretrained(resolve_model_path(str(config)))
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else \
        AutoModelForCausalLM
    with init_empty_weights():
        return auto.from_config(config)


def base_model_name(patch_meta: dict[str, Any], model) -> str:
    """The name PEFT records as ``base_model_name_or_path``: the model's own, else the patch's."""
    return str(getattr(model.config, "_name_or_path", "") or patch_meta.get("model") or "")


def _check_sites(model, by_site: dict[str, list], layouts: dict[str, str]) -> None:
    """Every site exists on the model, is a module LoRA can wrap, and has the patch's shape."""
    from transformers.pytorch_utils import Conv1D

    modules = dict(model.named_modules())
    problems = []
    for site, deltas in by_site.items():
        module = modules.get(site)
        if module is None:
            problems.append(f"{site}: no such module on this {model.config.model_type} model")
            continue
        if not isinstance(module, _site_module_types()):
            problems.append(f"{site}: a {type(module).__name__}, which PEFT's LoRA cannot "
                            "wrap (it needs nn.Linear or Conv1D)")
            continue
        is_conv = isinstance(module, Conv1D)
        if is_conv != (layouts[site] == "conv1d"):
            problems.append(f"{site}: the patch's layout {layouts[site]!r} does not match "
                            f"the model's {type(module).__name__}")
            continue
        d_in, d_out = module.weight.shape if is_conv else module.weight.shape[::-1]
        m = deltas[0].matrix() if deltas[0].dense is not None else None
        shape = tuple(m.shape) if m is not None else (deltas[0].u.shape[0], deltas[0].v.shape[0])
        if shape != (d_out, d_in):
            problems.append(f"{site}: update {shape} for a weight of (d_out, d_in) = "
                            f"{(d_out, d_in)}")
    if problems:
        raise ExportError("this patch cannot be written as a LoRA adapter for this model:\n  - "
                          + "\n  - ".join(problems))


def _too_large_message(large: list[SiteLora]) -> str:
    rows = "; ".join(f"{s.site}: rank {s.rank} of ({s.b.shape[0]}, {s.a.shape[1]})"
                     for s in large)
    return (f"a LoRA adapter would be no smaller than the dense update at {len(large)} site(s) "
            f"({rows}): r (d_in + d_out) >= d_in d_out. Use the dense patch (`massedit apply "
            "RUN --out MODEL` writes the merged model) or pass allow_large=True / --allow-large "
            "to write the adapter anyway")


def lora_config(loras: list[SiteLora], *, fan_in_fan_out: bool, base_model: str,
                encoder_decoder: bool):
    """PEFT's own ``LoraConfig`` for these sites: full names, per-site rank = alpha."""
    from peft import LoraConfig

    # rank_pattern keys are regular expressions matched at the end of a module name: escape
    # the dots so that layer 1's pattern cannot match another module.
    ranks = {re.escape(s.site): s.rank for s in loras}
    first = loras[0].rank
    return LoraConfig(
        r=first, lora_alpha=first, rank_pattern=ranks, alpha_pattern=dict(ranks),
        target_modules=[s.site for s in loras], lora_dropout=0.0, bias="none",
        fan_in_fan_out=fan_in_fan_out, base_model_name_or_path=base_model or None,
        task_type="SEQ_2_SEQ_LM" if encoder_decoder else "CAUSAL_LM", inference_mode=True,
    )


def export_peft(patch: EditPatch, model_or_config, out: str | os.PathLike, *,
                allow_large: bool = False, card: CardInfo | None = None,
                base_model: str | None = None) -> PeftExport:
    """Write ``patch`` as a PEFT LoRA adapter folder ``out`` (new; written atomically).

    ``model_or_config``: the base (or edited) model, its config, or a hub id / local folder
    (then only its structure is built, on the meta device). ``base_model``: the name recorded
    as ``base_model_name_or_path`` and in the card (default: the model's own name).

    Raises :class:`ExportError` for sites LoRA cannot express and :class:`AdapterTooLargeError`
    when the factors would be no smaller than the dense update (unless ``allow_large``)."""
    if not patch.deltas:
        raise ExportError("the patch holds no update: nothing to export")
    model = structure_model(model_or_config)
    by_site: dict[str, list] = defaultdict(list)
    layouts: dict[str, str] = {}
    for sd in patch.deltas:  # application order; each site's updates add up
        by_site[sd.site].append(sd.delta)
        layouts[sd.site] = sd.layout
    _check_sites(model, by_site, layouts)
    if len(set(layouts.values())) > 1:
        raise ExportError("the patch mixes Conv1D and Linear sites; one LoRA config cannot "
                          "express both (fan_in_fan_out is per adapter)")
    fan_in_fan_out = set(layouts.values()) == {"conv1d"}
    loras = [site_lora(site, deltas) for site, deltas in by_site.items()]
    empty = [s.site for s in loras if s.rank == 0]
    if empty:
        logger.info("no change at %s: left out of the adapter", ", ".join(empty))
    loras = [s for s in loras if s.rank > 0]
    if not loras:
        raise ExportError("every update of the patch is zero: nothing to export")
    large = [s for s in loras if not s.saves_space]
    if large and not allow_large:
        raise AdapterTooLargeError(_too_large_message(large))
    if large:
        logger.warning(_too_large_message(large).split(". Use")[0])
    base = base_model or base_model_name(patch.metadata, model)
    config = lora_config(loras, fan_in_fan_out=fan_in_fan_out, base_model=base,
                         encoder_decoder=bool(getattr(model.config, "is_encoder_decoder", False)))
    tensors = {}
    for s in loras:
        tensors[f"base_model.model.{s.site}.lora_A.weight"] = s.a  # (r, d_in)
        tensors[f"base_model.model.{s.site}.lora_B.weight"] = s.b  # (d_out, r)
    with atomic_dir(out) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        info = card or CardInfo.from_patch(patch.metadata, sites=patch.sites)
        write_card(tmp, info.for_adapter(base))
    ranks = {s.site: s.rank for s in loras}
    logger.info("LoRA adapter with %d site(s), ranks %s, written to %s", len(ranks),
                sorted(set(ranks.values())), out)
    return PeftExport(Path(out), ranks, base, [s.site for s in loras if s.via_svd])


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
