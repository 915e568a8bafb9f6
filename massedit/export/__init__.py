"""Edits in other people's formats: PEFT LoRA adapters and Hugging Face model cards.

This package sits just below ``engine`` (docs/design.md §2): ``EditPatch.to_peft`` calls it, so
it reads a patch by its fields and never imports ``massedit.engine.patch``.
"""

from massedit.export.card import CardInfo, model_card, write_card
from massedit.export.lora import AdapterTooLargeError, ExportError, SiteLora, site_lora
from massedit.export.peft_adapter import PeftExport, export_peft

__all__ = [
    "AdapterTooLargeError", "CardInfo", "ExportError", "PeftExport", "SiteLora", "export_peft",
    "model_card", "site_lora", "write_card",
]
