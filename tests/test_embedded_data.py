"""The data shipped in the package: within its size limits, licensed, declared as package data,
and exactly what massedit/data/embedded/README.md says it was made from."""

from __future__ import annotations

import fnmatch
import json
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from massedit.data.corpus import detokenize_wikitext
from massedit.data.embedded import EMBEDDED_DIR
from tests.conftest import REPO, needs_data, shared_data

EXCERPT = EMBEDDED_DIR / "wikitext-2-valid-excerpt.txt"
SAMPLE = EMBEDDED_DIR / "counterfact_sample.json"
HEADING = re.compile(r" = [^=].* = ")  # an article's title line in WikiText


def test_sizes_and_licences() -> None:
    text = EXCERPT.read_text(encoding="utf-8")
    assert len(text.encode()) <= 300 * 1024
    assert not any(j in text for j in (" @-@ ", " @,@ ", " @.@ "))
    assert sum(bool(HEADING.fullmatch(line)) for line in text.split("\n")) == 22
    records = json.loads(SAMPLE.read_text(encoding="utf-8"))
    assert len(records) == 200 and all("requested_rewrite" in r for r in records)
    readme = (EMBEDDED_DIR / "README.md").read_text()
    for needed in ("CC BY-SA 3.0", "Merity et al. 2016", "MIT", "Meng et al. 2022"):
        assert needed in readme


def test_declared_as_package_data() -> None:
    """A wheel carries the files only when pyproject.toml's package-data globs match them."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["massedit.data"]
    for path in EMBEDDED_DIR.iterdir():
        relative = path.relative_to(EMBEDDED_DIR.parent).as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), relative


@needs_data("wikitext-2/valid.txt")
def test_excerpt_is_the_first_articles_of_wikitext2_validation() -> None:
    lines = (shared_data() / "wikitext-2" / "valid.txt").read_text(encoding="utf-8").split("\n")
    starts = [i for i, line in enumerate(lines) if HEADING.fullmatch(line)]
    expected = detokenize_wikitext("\n".join(lines[:starts[22]]))
    assert EXCERPT.read_text(encoding="utf-8") == expected


@needs_data("counterfact/counterfact_dev.json")
def test_sample_is_the_first_records_of_the_dev_file() -> None:
    dev = json.loads((shared_data() / "counterfact" / "counterfact_dev.json").read_text())
    assert json.loads(SAMPLE.read_text(encoding="utf-8")) == dev[:200]
