"""Model cards: the ``README.md`` the Hugging Face hub shows for an edited model or an adapter.

A YAML header (``base_model``, ``library_name``, ``tags``) and a body saying what was edited:
method, number of facts, layers and sites, the statistics' corpus and budget, the run's
before/after summary when there is one, and how to go back to the base model. The facts' text is
left out unless asked for: edit files can be private (docs/design.md §14).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from massedit.atomic import write_text_atomic

CARD_FILE = "README.md"
Kind = Literal["model", "adapter", "patch"]


@dataclass(frozen=True)
class CardInfo:
    """What a card says. ``facts`` is None unless the user asked for them (``--card-facts``)."""

    base_model: str
    method: str = ""
    objective: str | None = None
    distribution: str | None = None
    n_facts: int = 0
    layers: Sequence[int] = ()
    sites: Sequence[str] = ()
    stats: Mapping[str, Any] | None = None  # the patch's statistics record
    summary: Mapping[str, Mapping[str, float | None]] | None = None  # metric -> before/after
    facts: Sequence[Mapping[str, Any]] | None = None
    kind: Kind = "model"
    versions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_patch(cls, meta: Mapping[str, Any], *, sites: Sequence[str] | None = None,
                   summary=None, facts=None, kind: Kind = "model") -> CardInfo:
        """From an ``EditPatch``'s metadata (merged patches: the first one's settings); the
        sites default to those a saved patch lists."""
        layouts = sites if sites is not None else (meta.get("layouts") or {})
        return cls(
            base_model=str(meta.get("model") or ""), method=str(meta.get("method") or ""),
            objective=meta.get("objective"), distribution=meta.get("distribution"),
            n_facts=int(meta.get("n_requests") or 0), layers=list(meta.get("layers") or []),
            sites=list(layouts), stats=meta.get("stats"), summary=summary, facts=facts,
            kind=kind, versions=meta.get("versions") or {})

    def for_adapter(self, base_model: str) -> CardInfo:
        return replace(self, kind="adapter", base_model=base_model or self.base_model)


def _header(info: CardInfo) -> dict[str, Any]:
    tags = ["massedit", "knowledge-editing", "model-editing"]
    if info.method:
        tags.append(info.method)
    library = "massedit"
    if info.kind == "adapter":
        library = "peft"
        tags += ["lora", "peft"]
    head: dict[str, Any] = {"base_model": info.base_model, "library_name": library,
                            "tags": tags}
    if info.kind == "adapter":
        head["pipeline_tag"] = "text-generation"
    return head


def _stats_line(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return "- Key statistics: none (this method does not use them)"
    used = stats.get("tokens_used") or {}
    counted = f"; {min(used.values()):,} tokens counted" if used else ""
    return (f"- Key statistics: corpus `{stats.get('corpus')}`, budget "
            f"{int(stats.get('tokens_requested') or 0):,} tokens per site{counted}")


def _summary_table(summary: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    def fmt(v, percent: bool):
        return "-" if v is None else f"{v:.1f}" if percent else f"{v:.3f}"

    rows = ["| metric | before | after |", "|---|---|---|"]
    for name, v in summary.items():
        percent = "success" in name or "mentions" in name  # shares in %, else probabilities
        rows.append(f"| {name} | {fmt(v.get('before'), percent)} | "
                    f"{fmt(v.get('after'), percent)} |")
    return rows


def _revert(info: CardInfo) -> list[str]:
    if info.kind == "adapter":
        return [
            "The base model is untouched: load it without the adapter, or take the adapter "
            "off a loaded one:", "", "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM", "",
            f'base = AutoModelForCausalLM.from_pretrained("{info.base_model}")',
            'model = PeftModel.from_pretrained(base, "THIS_ADAPTER")',
            "with model.disable_adapter():  # the base model's outputs",
            "    ...",
            "base = model.unload()  # or for good", "```"]
    return [
        "The edit's patch keeps the original weights of every edited site, so the base model "
        "comes back bit for bit:", "", "```bash",
        "massedit revert RUN_DIR --model THIS_MODEL --out RESTORED", "```", "",
        f"or load the base model `{info.base_model}` itself."]


def _cell(value: Any) -> str:
    """A table cell: ``|`` and line breaks would end it early."""
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def model_card(info: CardInfo) -> str:
    """The card's text: YAML header and Markdown body."""
    what = {"adapter": "A PEFT LoRA adapter that writes", "model": "This model has",
            "patch": "This patch writes"}[info.kind]
    verb = "written into its weights" if info.kind == "model" else "into"
    title = f"{info.base_model or 'model'} edited with {info.method or 'massedit'}"
    lines = ["---", yaml.safe_dump(_header(info), sort_keys=False).rstrip(), "---", "",
             f"# {title}", ""]
    if info.kind == "model":
        lines.append(f"{what} {info.n_facts} fact(s) {verb} by massedit "
                     "(closed-form knowledge editing).")
    else:
        lines.append(f"{what} {info.n_facts} fact(s) {verb} `{info.base_model}`, made with "
                     "massedit (closed-form knowledge editing); the adapter adds exactly the "
                     "edit's weight change (LoRA scale 1).")
    lines += ["", "## What was edited", "",
              f"- Method: {info.method or '-'} (objective {info.objective or '-'}, "
              f"distribution {info.distribution or '-'})",
              f"- Facts: {info.n_facts}",
              f"- Layers: {', '.join(str(x) for x in info.layers) or '-'}"]
    if info.sites:
        lines.append(f"- Sites: {', '.join(f'`{s}`' for s in info.sites)}")
    lines.append(_stats_line(info.stats))
    if info.versions.get("massedit"):
        lines.append(f"- massedit {info.versions['massedit']}")
    if info.summary:
        lines += ["", "## Before and after", "",
                  "Measured on the edited facts by `massedit edit` (success rates in %, "
                  "probabilities as means):", "", *_summary_table(info.summary)]
    lines += ["", "## How to revert", "", *_revert(info)]
    if info.facts is not None:
        lines += ["", "## Facts", "", "| subject | prompt | new | old |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(_cell(f.get(k)) for k in
                             ("subject", "prompt", "target_new", "target_true")) + " |"
                  for f in info.facts]
    else:
        lines += ["", "The facts' text is not included (edit files can be private); "
                  "`--card-facts` adds it."]
    return "\n".join(lines) + "\n"


def write_card(folder: str | os.PathLike, info: CardInfo) -> Path:
    """Write ``folder/README.md`` atomically."""
    path = Path(folder) / CARD_FILE
    write_text_atomic(path, model_card(info))
    return path


def read_card_header(folder: str | os.PathLike) -> dict[str, Any]:
    """The YAML header of ``folder/README.md`` (tests and tools)."""
    text = (Path(folder) / CARD_FILE).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ValueError(f"{folder}/{CARD_FILE} has no YAML header")
    return yaml.safe_load(text[4:].split("\n---\n", 1)[0])
