"""Shared fixtures: a statistics corpus for tiny models, the shared data folder, caches."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    return Path(os.environ.get("MASSEDIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Random sentences over the tiny tokenizer's vocabulary: keys span every direction."""
    from massedit.testing import TINY_WORDS

    rng = random.Random(0)
    words = list(TINY_WORDS)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) + " ."
             for _ in range(600)]
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("\n\n".join(lines))
    return path


@pytest.fixture(scope="session")
def stats_dir(tmp_path_factory) -> Path:
    """A statistics cache private to this test session."""
    return tmp_path_factory.mktemp("stats-cache")
