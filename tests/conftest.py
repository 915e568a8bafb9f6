"""Shared fixtures: a statistics corpus for tiny models, the data mirror, caches."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from massedit.data.locations import DATA_ENV, default_data_root, describe_data_root

REPO = Path(__file__).resolve().parents[1]
# The one data setting (docs/design.md §10): tests read the developers' data mirror through
# $MASSEDIT_DATA, which defaults to the one beside the checkout. Point it at an empty folder to
# run the suite as a clone without data would: the tests that need a file skip, naming it.
default_data_root(REPO)


def shared_data() -> Path:
    """The data mirror the tests read (``$MASSEDIT_DATA``)."""
    return Path(os.environ[DATA_ENV])


_NO_DATA = "data file "


def needs_data(*relative: str):
    """Skip unless every file is in the data mirror; the reason names the missing file and the
    setting."""
    missing = [r for r in relative if not (shared_data() / r).is_file()]
    return pytest.mark.skipif(
        bool(missing), reason=f"{_NO_DATA}{missing[0] if missing else ''} not found "
        f"({describe_data_root()}; set {DATA_ENV} to a data mirror that has it)")


def pytest_terminal_summary(terminalreporter) -> None:
    """Even under ``-q``, list the tests skipped for lack of data and why (``make test`` on a
    clone without the data mirror)."""
    lines = []
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        reason = reason.removeprefix("Skipped: ")
        if reason.startswith(_NO_DATA):
            lines.append(f"  {report.nodeid}: {reason}")
    if lines:
        terminalreporter.write_line(f"{len(lines)} test(s) skipped for lack of data:")
        for line in lines:
            terminalreporter.write_line(line)


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
