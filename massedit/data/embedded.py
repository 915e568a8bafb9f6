"""Data shipped inside the package (``massedit/data/embedded``, sources and licences in its
README.md), so that a clone works offline: a WikiText excerpt for key statistics and context
prefixes, and a CounterFact sample for the demo and quick evaluations.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
# The statistics corpus of last resort: the first 22 articles of WikiText-2's validation split
# (about 300 KB of text), CC BY-SA 3.0, Merity et al. 2016. Pass it by this name.
WIKITEXT_EXCERPT = "wikitext-excerpt"
_CORPORA = {WIKITEXT_EXCERPT: "wikitext-2-valid-excerpt.txt"}


def embedded_file(filename: str) -> Path:
    path = EMBEDDED_DIR / filename
    if not path.is_file():  # a broken install (package data left out)
        raise FileNotFoundError(f"{path} is missing from the massedit installation")
    return path


def embedded_corpus(name: str) -> Path | None:
    """The shipped file behind a corpus name such as ``"wikitext-excerpt"``, else ``None``."""
    return embedded_file(_CORPORA[name]) if name in _CORPORA else None
