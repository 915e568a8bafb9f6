"""Train a test model once and cache it atomically (toy-world and NMT-world models share this).

Training is bit-reproducible: :func:`reproducible_training` fixes everything besides the recipe
that decides the trained weights (the thread count, deterministic kernels, the random state and
float32 as the default dtype), and :func:`training_fingerprint` names what still differs between
machines (torch version, CPU instruction set), so that it is part of every cache key. What else
runs on the machine changes only how long training takes, never the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from massedit.atomic import atomic_dir, entry_lock

log = logging.getLogger(__name__)

# Reductions are split by thread, so another thread count gives other float sums and, after a
# thousand steps, another model. One thread: the same model wherever it is trained, and no
# OpenMP threads spinning against other jobs (two threads on a busy 2-core machine ran 13x
# slower than one).
TRAIN_THREADS = 1


def training_fingerprint() -> dict[str, Any]:
    """What besides the recipe decides the trained weights bit for bit (for cache keys)."""
    return {"threads": TRAIN_THREADS, "torch": torch.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability()}


@contextmanager
def reproducible_training(threads: int = TRAIN_THREADS) -> Iterator[None]:
    """Train on ``threads`` threads with deterministic kernels, float32 by default and the
    caller's random state saved; everything is restored on exit."""
    previous_threads = torch.get_num_threads()
    previous_dtype = torch.get_default_dtype()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_default_dtype(previous_dtype)
        torch.set_num_threads(previous_threads)


def train_and_cache(
    path: Path, marker: str, train: Callable[[], tuple[Any, Any, dict]], meta: dict,
) -> tuple[Any, Any]:
    """Run ``train() -> (model, tokenizer, report)`` under :func:`reproducible_training`, then
    save both to ``path`` with ``marker`` (JSON of ``meta``, the training fingerprint and the
    report) written last, so a half-written folder never counts as cached. A process that loses
    the race to cache the same model uses the winner's copy."""
    # One writer per cached model (docs/design.md §12): a process that finds it being trained
    # waits, then loads the other's copy instead of training it again.
    with entry_lock(path, what=f"training {path.name}"):
        if (path / marker).is_file():
            return _load_cached(path)
        return _train_and_save(path, marker, train, meta)


def _load_cached(path: Path) -> tuple[Any, Any]:
    """The model and tokenizer another process cached at ``path`` (eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    seq2seq = AutoConfig.from_pretrained(path).is_encoder_decoder
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = cls.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()
    log.info("loaded the model another process cached in %s", path)
    return model, AutoTokenizer.from_pretrained(path)


def _train_and_save(path: Path, marker: str, train, meta: dict) -> tuple[Any, Any]:
    with reproducible_training():
        model, tok, report = train()
    with atomic_dir(path, complete_marker=marker) as tmp:  # a lost race uses the winner's copy
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        record = {**meta, "fingerprint": training_fingerprint(), "report": report}
        (tmp / marker).write_text(json.dumps(record, indent=2))
    return model, tok
