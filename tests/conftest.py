"""Shared fixtures: a statistics corpus for tiny models, the shared data folder, caches."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine extra OpenMP threads
    only spin against other jobs (a tiny-model test measured 40x slower). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
