"""Named data sets: where each one is found, in this order.

1. the local mirror ``$MASSEDIT_DATA`` (:mod:`massedit.data.locations`): the first of the data
   set's ``mirror`` paths that exists;
2. the cache, ``<cache>/data/<name>/<file>``, a copy downloaded earlier and still intact (its
   sha256 equals the pinned one, or the one recorded when it was downloaded);
3. a download from the data set's public source, checked (pinned sha256 where one is known, the
   JSON structure always) before it enters the cache (:func:`massedit.data.download.download`).

``counterfact_sample`` is shipped with massedit (``massedit/data/embedded``) and needs none of
these. Evaluation readers (``massedit.evals.readers``) turn the files into cases.

Checksums: the public ``counterfact.json`` is pinned to the digest and size that many independent
projects record for the ROME authors' file (45,108,470 bytes, 21,919 records);
``known_1000.json`` to the digest of the developers' copy, which is byte-identical to an
independent copy found in a public repository. For ``zsre_mend_eval.json`` no digest could be
established: a download is accepted when every record has the zsRE fields, and its digest is
recorded beside the cached copy so a later change is noticed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from massedit.atomic import write_text_atomic
from massedit.data.download import DownloadError, download, sha256_file
from massedit.data.embedded import embedded_file
from massedit.data.locations import DATA_ENV, cache_root, describe_data_root, mirror_file

logger = logging.getLogger(__name__)

# The ROME/MEMIT authors' data host, as named by their code (dsets/counterfact.py, zsre.py,
# knowns.py, with REMOTE_ROOT_URL from globals.yml).
ROME_DATA_URL = "https://rome.baulab.info/data/dsets"


class DataUnavailable(FileNotFoundError):
    """A named data set is in neither the mirror nor the cache and could not be downloaded."""


@dataclass(frozen=True)
class DataSource:
    """One named data set: where to look for it and how to check a downloaded copy."""

    name: str
    description: str
    licence: str
    mirror: tuple[str, ...] = ()  # paths under $MASSEDIT_DATA; the first that exists is used
    url: str | None = None  # the public source; None: mirror (or path) only
    sha256: str | None = None  # the public file's digest, when it is known
    required: tuple[str, ...] = ()  # fields every record of a downloaded copy must have
    embedded: str | None = None  # a file shipped in massedit/data/embedded

    @property
    def filename(self) -> str:
        return Path(self.url).name if self.url else f"{self.name}.json"


SOURCES: dict[str, DataSource] = {s.name: s for s in (
    DataSource(
        "counterfact", "CounterFact in ROME's schema (21,919 records; a mirror may hold a subset)",
        "MIT, Meng et al. 2022",
        mirror=("counterfact/counterfact.json", "counterfact/counterfact_dev.json"),
        url=f"{ROME_DATA_URL}/counterfact.json",
        sha256="d017056125178a13728594e66a801357a8db9ed7973a7425554bb4271de9fc6f",
        required=("case_id", "requested_rewrite", "paraphrase_prompts",
                  "neighborhood_prompts")),
    DataSource(
        "zsre", "zsRE question answering as prepared for MEND/MEMIT (zsre_mend_eval.json)",
        "zsRE, Levy et al. 2017, as prepared by Mitchell et al. 2022",
        mirror=("zsre/zsre_mend_eval.json", "zsre/zsre_dev.json"),
        url=f"{ROME_DATA_URL}/zsre_mend_eval.json",
        required=("subject", "src", "rephrase", "alt", "answers", "loc", "loc_ans")),
    DataSource(
        "counterfact_easyedit", "CounterFact in EasyEdit's flat schema (no public file to fetch "
        "by URL: put it in the mirror or pass its path)", "MIT, Meng et al. 2022",
        mirror=("counterfact/counterfact_train_easyedit.json",)),
    DataSource(
        "known_1000", "the facts ROME traced (1,209 records, for `massedit trace --known`)",
        "MIT, Meng et al. 2022",
        mirror=("known/known_1000.json",), url=f"{ROME_DATA_URL}/known_1000.json",
        sha256="685ed2a0c3e8323921ea8a945b237cfe75e1f4948b9dda7a92aa6c2401f1d9df",
        required=("subject", "prompt", "attribute")),
    DataSource(
        "counterfact_sample", "200 CounterFact records shipped with massedit (offline demos and "
        "quick evaluations)", "MIT, Meng et al. 2022", embedded="counterfact_sample.json"),
)}


def get_source(name: str) -> DataSource:
    if name not in SOURCES:
        raise ValueError(f"unknown data set {name!r}: use one of {sorted(SOURCES)}")
    return SOURCES[name]


def check_records(path: Path, required: tuple[str, ...]) -> int:
    """The number of records of a JSON list whose every record has the ``required`` fields;
    a ``ValueError`` naming the first record that does not."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not a JSON file: {err}") from None
    if not isinstance(records, list) or not records:
        raise ValueError("expected a non-empty JSON list of records")
    for index, record in enumerate(records):
        missing = [f for f in required if not isinstance(record, dict) or f not in record]
        if missing:
            raise ValueError(f"record {index} lacks {missing}")
    return len(records)


def cached_path(source: DataSource) -> Path:
    return cache_root() / "data" / source.name / source.filename


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _intact(path: Path, source: DataSource) -> bool:
    """A cached copy is used only when its digest is the pinned or the recorded one."""
    if not path.is_file():
        return False
    expected = source.sha256
    if expected is None and _digest_path(path).is_file():
        expected = _digest_path(path).read_text().strip()
    if expected and sha256_file(path) == expected:
        return True
    logger.warning("%s: the cached copy is not the one downloaded (sha256 differs or was never "
                   "recorded); fetching it again", path)
    return False


def _record_digest(path: Path, digest: str) -> None:
    write_text_atomic(_digest_path(path), digest + "\n")


def _where_to_look(source: DataSource) -> str:
    where = ", ".join(source.mirror) or "nothing"
    return f"looked for {where} in the data mirror ({describe_data_root()})"


def dataset_file(name: str, *, allow_download: bool = True) -> Path:
    """The local file of a named data set: mirror, cache, then download (module docstring)."""
    source = get_source(name)
    if source.embedded:
        return embedded_file(source.embedded)
    for relative in source.mirror:
        path = mirror_file(relative)
        if path is not None:
            return path
    advice = (f"set {DATA_ENV} to a folder holding {source.mirror[0]}, or pass the file's path "
              "as the data set")
    if source.url is None:
        raise DataUnavailable(f"data set {name!r}: {_where_to_look(source)}; {advice}")
    target = cached_path(source)
    if _intact(target, source):
        return target
    if not allow_download:
        raise DataUnavailable(f"data set {name!r}: {_where_to_look(source)} and in the cache "
                              f"({target}); downloads are off; {advice}")
    try:
        digest = download(source.url, target, sha256=source.sha256,
                          check=lambda p: check_records(p, source.required))
    except DownloadError as err:
        raise DataUnavailable(
            f"data set {name!r}: {_where_to_look(source)}, and the download failed: {err}. "
            f"{advice[0].upper()}{advice[1:]}; 'counterfact_sample' ships with massedit"
        ) from err
    if source.sha256 is None:
        _record_digest(target, digest)
    return target
