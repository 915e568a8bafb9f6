"""Readers for CounterFact (ROME and EasyEdit forms) and zsRE: the data mirror's files, the shipped
sample and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from massedit.evals import (
    DatasetError,
    load_eval_dataset,
    read_counterfact,
    read_counterfact_easyedit,
    read_zsre,
)
from tests.conftest import needs_data, shared_data

SHARED = shared_data()

COUNTERFACT = {
    "case_id": 18,
    "requested_rewrite": {
        "prompt": "{}, created by",
        "subject": "Porsche 911",
        "target_new": {"str": "Honda", "id": "Q9584"},
        "target_true": {"str": "Porsche", "id": "Q40993"},
    },
    "paraphrase_prompts": ["Porsche 911 is developed by"],
    "neighborhood_prompts": ["Porsche 550, developed by"],
    "attribute_prompts": ["Honda Aviator is produced by"],
    "generation_prompts": ["Porsche 911 is sold by"],
}
EASYEDIT = {
    "case_id": 2,
    "prompt": "Toko Yasuda, the",
    "subject": "Toko Yasuda",
    "target_new": "piano",
    "ground_truth": "guitar",
    "rephrase_prompt": "Toko Yasuda is incredible at",
    "locality_prompt": "John Lennon performs on the",
    "locality_ground_truth": "guitar",
}
ZSRE = {
    "subject": "UniFirst",
    "src": "What is the product made by UniFirst?",
    "rephrase": "What will be the product of UniFirst?",
    "alt": "unmanned aircraft",
    "answers": ["uniform"],
    "loc": "nq question: john goodman's character in the big lebowski",
    "loc_ans": "Walter Sobchak",
}


def write(tmp_path: Path, records: list, name: str = "data.json") -> Path:
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def test_counterfact_record(tmp_path: Path) -> None:
    [c] = read_counterfact(write(tmp_path, [COUNTERFACT]))
    assert c.case_id == 18 and c.dataset == "counterfact"
    assert c.request.prompt == "{}, created by" and c.request.subject == "Porsche 911"
    assert (c.target_new, c.target_true) == ("Honda", "Porsche")
    assert c.rewrite_prompts == ("Porsche 911, created by",)
    assert c.paraphrase_prompts == ("Porsche 911 is developed by",)
    assert c.neighborhood_prompts == ("Porsche 550, developed by",)
    assert c.attribute_prompts == ("Honda Aviator is produced by",)
    assert c.generation_prompts == ("Porsche 911 is sold by",)
    assert c.loc_prompt is None


def test_easyedit_record(tmp_path: Path) -> None:
    [c] = read_counterfact_easyedit(write(tmp_path, [EASYEDIT]))
    assert c.request.prompt == "{}, the" and (c.target_new, c.target_true) == ("piano", "guitar")
    assert c.paraphrase_prompts == ("Toko Yasuda is incredible at",)
    assert (c.loc_prompt, c.loc_answer) == ("John Lennon performs on the", "guitar")
    # the locality answer is the true object, so the prompt is also a CounterFact neighbour
    assert c.neighborhood_prompts == ("John Lennon performs on the",)
    other = EASYEDIT | {"locality_ground_truth": "drums"}
    assert read_counterfact_easyedit(write(tmp_path, [other]))[0].neighborhood_prompts == ()


def test_zsre_record(tmp_path: Path) -> None:
    [c] = read_zsre(write(tmp_path, [ZSRE], "z.jsonl"))
    assert c.request.prompt == "What is the product made by {}?"
    assert c.rewrite_prompts == ("What is the product made by UniFirst?",)
    assert (c.target_new, c.target_true) == ("unmanned aircraft", "uniform")
    assert c.paraphrase_prompts == ("What will be the product of UniFirst?",)
    assert c.loc_prompt.startswith("nq question: ") and c.loc_answer == "Walter Sobchak"
    assert c.case_id == 0 and c.dataset == "zsre"


def test_schema_detection_from_first_record(tmp_path: Path) -> None:
    for record, dataset in ((COUNTERFACT, "counterfact"), (EASYEDIT, "counterfact_easyedit")):
        assert load_eval_dataset(write(tmp_path, [record]))[0].dataset == dataset
    assert load_eval_dataset(str(write(tmp_path, [ZSRE, ZSRE])), n=2)[1].case_id == 1
    with pytest.raises(DatasetError, match="record 0: cannot tell the schema"):
        load_eval_dataset(write(tmp_path, [{"question": "?"}]))


def test_errors_name_the_record_and_field(tmp_path: Path) -> None:
    broken = json.loads(json.dumps(COUNTERFACT))
    del broken["requested_rewrite"]["target_true"]
    with pytest.raises(
        DatasetError, match=r"record 1 requested_rewrite: missing field 'target_true"
    ):
        read_counterfact(write(tmp_path, [COUNTERFACT, broken]))
    no_loc = {k: v for k, v in ZSRE.items() if k != "loc_ans"}
    with pytest.raises(DatasetError, match=r"record 2: missing field 'loc_ans'"):
        read_zsre(write(tmp_path, [ZSRE, ZSRE, no_loc]))
    with pytest.raises(DatasetError, match=r"record 0: field 'rephrase_prompt' must be a list"):
        read_counterfact_easyedit(write(tmp_path, [EASYEDIT | {"rephrase_prompt": 3}]))
    with pytest.raises(DatasetError, match=r"record 1: .*subject 'Nobody'"):
        read_counterfact_easyedit(write(tmp_path, [EASYEDIT, EASYEDIT | {"subject": "Nobody"}]))
    with pytest.raises(DatasetError, match=r"record 0: expected an object"):
        read_zsre(write(tmp_path, [["not", "a", "dict"]]))


def test_invalid_record_can_be_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, [ZSRE, ZSRE | {"alt": ""}, ZSRE])
    with pytest.raises(DatasetError, match=r"record 1: .*'target_new' is empty.*skip_invalid"):
        read_zsre(path)
    assert [c.case_id for c in read_zsre(path, skip_invalid=True)] == [0, 2]
    with pytest.raises(ValueError, match="only 2 records are valid"):
        read_zsre(path, n=3, skip_invalid=True)


def test_n_bounds(tmp_path: Path) -> None:
    path = write(tmp_path, [COUNTERFACT, COUNTERFACT])
    assert len(read_counterfact(path, n=1)) == 1
    with pytest.raises(ValueError, match="n=3 cases but the file has 2 records"):
        read_counterfact(path, n=3)
    with pytest.raises(ValueError, match="n=0"):
        read_counterfact(path, n=0)


def test_named_dataset_without_mirror_cache_or_network(tmp_path: Path, monkeypatch) -> None:
    import massedit.data.download as download

    def offline(url, fh, digest):
        raise OSError("network unreachable")

    monkeypatch.setenv("MASSEDIT_DATA", str(tmp_path / "absent"))
    monkeypatch.setenv("MASSEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "_copy_url", offline)
    with pytest.raises(FileNotFoundError, match="MASSEDIT_DATA") as err:
        load_eval_dataset("counterfact")
    assert "counterfact/counterfact.json" in str(err.value)
    assert "https://rome.baulab.info/data/dsets/counterfact.json" in str(err.value)


def test_shipped_counterfact_sample_reads_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASSEDIT_DATA", str(tmp_path / "absent"))
    cases = load_eval_dataset("counterfact_sample")
    assert len(cases) == 200 and cases[0].rewrite_prompts == ("Porsche 911, created by",)
    assert all(len(c.paraphrase_prompts) == 2 and c.neighborhood_prompts for c in cases)


@needs_data("counterfact/counterfact_dev.json")
def test_shared_counterfact() -> None:
    cases = load_eval_dataset("counterfact")
    assert len(cases) == 216
    c = cases[0]
    assert c.rewrite_prompts == ("Porsche 911, created by",)
    assert (c.target_new, c.target_true) == ("Honda", "Porsche")
    assert len(c.paraphrase_prompts) == 2 and len(c.neighborhood_prompts) == 10
    assert len(c.attribute_prompts) == 10 and len(c.generation_prompts) == 10
    assert all(len(c.paraphrase_prompts) == 2 for c in cases)
    with pytest.raises(ValueError, match="n=217"):
        load_eval_dataset("counterfact", n=217)


@needs_data("counterfact/counterfact_train_easyedit.json")
def test_shared_counterfact_easyedit() -> None:
    cases = load_eval_dataset("counterfact_easyedit", n=200)
    assert len(cases) == 200
    assert all(c.loc_prompt and c.paraphrase_prompts for c in cases)
    # same cases through the path, schema detected from the keys
    path = SHARED / "counterfact" / "counterfact_train_easyedit.json"
    assert load_eval_dataset(path, n=3)[2] == cases[2]


@needs_data("zsre/zsre_dev.json")
def test_shared_zsre() -> None:
    # record 534 of the shared dev file has an empty 'alt' (target_new)
    with pytest.raises(DatasetError, match="record 534"):
        load_eval_dataset("zsre")
    cases = load_eval_dataset("zsre", skip_invalid=True)
    assert len(cases) == 699 and 534 not in {c.case_id for c in cases}
    assert all(c.loc_prompt.startswith("nq question:") for c in cases)
    assert cases[0].request.text == "What is the product made by UniFirst?"


def test_mirror_folder_from_env(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "zsre").mkdir()
    (tmp_path / "zsre" / "zsre_dev.json").write_text(json.dumps([ZSRE] * 3))
    monkeypatch.setenv("MASSEDIT_DATA", str(tmp_path))
    assert len(load_eval_dataset("zsre")) == 3
    # The public file's name, when the mirror has it, comes first.
    (tmp_path / "zsre" / "zsre_mend_eval.json").write_text(json.dumps([ZSRE] * 2))
    assert len(load_eval_dataset("zsre")) == 2
