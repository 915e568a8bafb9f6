"""``massedit edit --dry-run``: validate everything and show the plan, without loading weights.

The model is built on the meta device from its config (accelerate's ``init_empty_weights``), which
is all the editor needs to resolve its preset and layers, so a dry run of a 7B model is instant.
"""

from __future__ import annotations

import logging
from typing import Any

from massedit.jobs.edit_files import EditFileError, EditSet, tokenisation_problems

logger = logging.getLogger(__name__)


def load_skeleton(name_or_path: str):
    """``(model on the meta device, tokenizer)``: shapes and config, no weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from massedit.models.adapters import get_adapter
    from massedit.models.loading import prepare_tokenizer, resolve_model_path

    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path)
    get_adapter(config)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with init_empty_weights():
        model = cls.from_config(config)
    return model, prepare_tokenizer(AutoTokenizer.from_pretrained(path))


def show_plan(opts, edits: EditSet, previous: dict[str, Any] | None, console,
              editor_kwargs: dict[str, Any]) -> None:
    """Print what ``massedit edit`` would do; raises EditFileError on tokenisation problems."""
    from rich.table import Table

    from massedit.editing.editor import Editor

    model, tok = load_skeleton(opts.model)
    problems = tokenisation_problems(edits, tok)
    if problems:
        raise EditFileError(edits.source, problems)
    editor = Editor(model, tok, opts.method, **editor_kwargs)
    n = len(edits.requests)
    batch = opts.batch_size or n
    console.print(f"[bold]dry run[/bold]: {n} edit(s) from {edits.source} are valid")
    console.print(f"model {opts.model} ({model.config.model_type}), method {opts.method} = "
                  f"{editor.objective_name} + {editor.distribution_name}, preset "
                  f"{editor.preset_source}, layers {editor.layers}")
    settings = ", ".join(f"{k}={v}" for k, v in editor.hparams.to_dict().items())
    console.print(f"{-(-n // batch)} batch(es) of up to {batch}; hyper-parameters: {settings}")
    if previous is not None and previous.get("status") == "finished":
        console.print(f"{opts.out} already holds this finished run")
    elif previous is not None:
        console.print(f"{opts.out} holds an unfinished run of this command: it would continue")
    else:
        console.print(f"would write {opts.out}")
    table = Table(title="edits")
    for name in ("row", "prompt", "target_new", "target_true"):
        table.add_column(name, overflow="fold")
    for req, row in list(zip(edits.requests, edits.rows, strict=True))[:20]:
        table.add_row(str(row), req.text, req.target_new, req.target_true or "-")
    console.print(table)
    if n > 20:
        console.print(f"... and {n - 20} more")
