"""Train a test model once and cache it atomically (toy-world and NMT-world models share this)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def train_and_cache(
    path: Path, marker: str, train: Callable[[], tuple[Any, Any, dict]], meta: dict,
    threads: int,
) -> tuple[Any, Any]:
    """Run ``train() -> (model, tokenizer, report)`` on ``threads`` threads, leaving the caller's
    random state and thread count as they were, then save both to ``path`` with ``marker`` (JSON
    of ``meta`` plus the report) written last, so a half-written folder never counts as cached.
    A process that loses the race to cache the same model uses the winner's copy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            model, tok, report = train()
    finally:
        torch.set_num_threads(previous)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / marker).write_text(json.dumps({**meta, "report": report}, indent=2))
        os.rename(tmp, path)
    except OSError:
        if not (path / marker).is_file():
            raise
        log.info("another process cached %s first; using its copy", path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return model, tok
