"""Text sources for statistics and context prefixes: local files, hub datasets, or the model.

``"wikitext-excerpt"`` names the WikiText excerpt shipped with massedit
(``massedit.data.embedded``), the default corpus when none is given and the hub cannot be reached.
``"self"`` means text sampled from the model itself with a fixed seed (slow: only when asked for).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from massedit.data.embedded import embedded_corpus

# A leaf module (it imports only torch): where a split or offloaded model takes its inputs.
from massedit.models.placement import input_device

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = "Salesforce/wikitext:wikitext-103-raw-v1"
_WIKITEXT_JOINERS = {" @-@ ": "-", " @,@ ": ",", " @.@ ": "."}


def detokenize_wikitext(text: str) -> str:
    for joiner, char in _WIKITEXT_JOINERS.items():
        text = text.replace(joiner, char)
    return text


def _file_texts(path: Path) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        with path.open(encoding="utf-8-sig") as fh:
            if suffix == ".json":
                records = json.load(fh)
            else:
                records = (json.loads(line) for line in fh if line.strip())
            for i, rec in enumerate(records):
                if not isinstance(rec, dict) or "text" not in rec:
                    raise ValueError(f"{path}: record {i} has no 'text' field")
                yield str(rec["text"])
        return
    # Plain text: paragraphs separated by blank lines; WikiText headings ("= Title =") dropped.
    block: list[str] = []
    with path.open(encoding="utf-8-sig", errors="strict") as fh:
        for line in fh:
            stripped = line.strip()
            if not stripped or re.fullmatch(r"(= )+.*( =)+", stripped):
                if block:
                    yield detokenize_wikitext(" ".join(block))
                    block = []
                continue
            block.append(stripped)
    if block:
        yield detokenize_wikitext(" ".join(block))


CORPUS_SUFFIXES = (".txt", ".json", ".jsonl")


def _folder_files(folder: Path) -> list[Path]:
    """A folder corpus: its text files in name order (so the token budget is reproducible)."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
    if not files:
        kinds = "/".join(CORPUS_SUFFIXES)
        raise FileNotFoundError(f"corpus folder {str(folder)!r} holds no {kinds} file")
    return files


def _path_texts(path: Path) -> Iterator[str]:
    if path.is_dir():
        for file in _folder_files(path):
            yield from _file_texts(file)
    else:
        yield from _file_texts(path)


def _hub_texts(corpus: str, rank: int = 0, world: int = 1) -> Iterator[str]:
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    name, _, config = corpus.partition(":")
    ds = load_dataset(name, config or None, split="train", streaming=True)
    if world > 1:
        ds = split_dataset_by_node(ds, rank=rank, world_size=world)
    for rec in ds:
        text = rec.get("text", "")
        if text and text.strip():
            yield detokenize_wikitext(text)


@torch.no_grad()
def _model_texts(model, tok, seed: int, n_texts: int = 10_000, length: int = 128) -> Iterator[str]:
    device = input_device(model)  # docs/design.md §12: the first parameter may be on meta
    gen = torch.Generator(device="cpu").manual_seed(seed)
    starts = ["The", "In", "A", "It", "He", "She", "This", "On"]
    for i in range(0, n_texts, 8):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        batch = tok([starts[(i + j) % len(starts)] for j in range(8)], return_tensors="pt")
        out = model.generate(
            **batch.to(device), do_sample=True, top_p=0.95, max_new_tokens=length,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
        yield from tok.batch_decode(out, skip_special_tokens=True)


def _local_path(corpus: str) -> Path:
    """The file or folder a corpus string names: a shipped corpus's file, else the path itself."""
    return embedded_corpus(corpus) or Path(corpus).expanduser()


def iter_texts(corpus: str, model=None, tok=None, seed: int = 0, rank: int = 0,
               world: int = 1) -> Iterator[str]:
    """Texts of a corpus: a local .txt/.json/.jsonl file, a folder of them (name order),
    ``"wikitext-excerpt"`` (shipped), ``"self"``, or a hub dataset id (``name[:config]``,
    streamed)."""
    if corpus == "self":
        if model is None:
            raise ValueError("corpus 'self' needs the model to sample from")
        yield from _model_texts(model, tok, seed + rank)
        return
    path = _local_path(corpus)
    if path.exists():
        texts = _path_texts(path)
        if world > 1:  # deterministic round-robin shard of a local file
            texts = (t for i, t in enumerate(texts) if i % world == rank)
        yield from texts
        return
    if corpus.endswith(CORPUS_SUFFIXES):
        raise FileNotFoundError(f"corpus file {corpus!r} does not exist")
    yield from _hub_texts(corpus, rank, world)


def corpus_id(corpus: str) -> str:
    """What identifies a corpus in a fingerprint: a file's (or a folder's files' names and)
    content hash, else its name."""
    import hashlib

    path = _local_path(corpus)
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return f"file:{path.name}:{digest}"
    if path.is_dir():
        digest = hashlib.sha256()
        for file in _folder_files(path):
            digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
        return f"folder:{path.name}:{digest.hexdigest()[:16]}"
    return corpus
