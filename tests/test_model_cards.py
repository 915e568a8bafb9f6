"""Model cards (docs/design.md §14): written by ``edit --save-model``, ``apply`` and ``export
--peft``; the YAML header parses and names the base model; facts only with ``--card-facts``;
``massedit export`` writes an adapter equal to the run's edited model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from massedit.cli import app
from massedit.export.card import CardInfo, model_card, read_card_header

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--set", "v_num_grad_steps=4", "--set", "layers=[1,2]", "--set",
        "max_update_ratio=1e9", "--stats-tokens", "2000"]
FACTS = [
    ("The {} is located in", "Eiffel Tower", "Rome", "Paris"),
    ("{} plays", "Michael Jordan", "tennis", "basketball"),
    ("The mother tongue of {} is", "Marie Curie", "English", "French"),
]
SECRET = "Eiffel Tower"  # a fact's text that must not leak into a card by default


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_corpus, stats_dir):
    """A tiny GPT-2 saved as a folder and a finished ``edit --save-model`` run on it."""
    import os

    from massedit.testing import tiny_model

    root = tmp_path_factory.mktemp("cards")
    model, tok = tiny_model("gpt2")
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    with (root / "facts.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "subject", "target_new", "target_true"])
        writer.writerows(FACTS)
    old = os.environ.get("MASSEDIT_CACHE")
    os.environ["MASSEDIT_CACHE"] = str(stats_dir)
    try:
        result = invoke("edit", "--model", root / "base", "--edits", root / "facts.csv",
                        "--out", root / "run", "--save-model", "--stats-corpus", tiny_corpus,
                        *FAST)
    finally:
        if old is None:
            os.environ.pop("MASSEDIT_CACHE")
        else:
            os.environ["MASSEDIT_CACHE"] = old
    assert result.exit_code == 0, result.output
    return root


def test_card_header_parses_and_names_base_model():
    info = CardInfo(base_model="org/base", method="memit", objective="least_squares",
                    distribution="spread", n_facts=3, layers=[1, 2],
                    stats={"corpus": "wikitext", "tokens_requested": 1000},
                    summary={"efficacy_success": {"before": 0.0, "after": 100.0}},
                    facts=[{"subject": "A|B", "prompt": "p", "target_new": "x"}])
    text = model_card(info)
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["base_model"] == "org/base" and header["library_name"] == "massedit"
    assert "memit" in header["tags"]
    assert "| efficacy_success | 0.0 | 100.0 |" in text
    assert "A\\|B" in text  # a pipe in a fact does not break the table
    adapter = yaml.safe_load(model_card(info.for_adapter("org/base")).split("---\n")[1])
    assert adapter["library_name"] == "peft" and "lora" in adapter["tags"]


def test_save_model_writes_a_card_without_facts(run):
    header = read_card_header(run / "run" / "model")
    assert Path(header["base_model"]) == (run / "base").resolve()
    assert header["library_name"] == "massedit"
    text = (run / "run" / "model" / "README.md").read_text()
    assert "Facts: 3" in text and "Layers: 1, 2" in text and "corpus `file:" in text
    assert "## Before and after" in text and "efficacy_success" in text
    assert "massedit revert" in text  # how to revert
    assert SECRET not in text


def test_apply_writes_a_card_with_facts_when_asked(run, tmp_path):
    result = invoke("apply", run / "run", "--model", run / "base", "--out", tmp_path / "m",
                    "--card-facts")
    assert result.exit_code == 0, result.output
    header = read_card_header(tmp_path / "m")
    assert Path(header["base_model"]) == (run / "base").resolve()
    text = (tmp_path / "m" / "README.md").read_text()
    assert SECRET in text and "## Facts" in text


def test_export_cli_writes_an_adapter_equal_to_the_edited_model(run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = invoke("export", run / "run", "--peft", tmp_path / "adapter")
    assert result.exit_code == 0, result.output
    header = read_card_header(tmp_path / "adapter")
    assert header["library_name"] == "peft"
    assert Path(header["base_model"]) == (run / "base").resolve()
    assert SECRET not in (tmp_path / "adapter" / "README.md").read_text()

    tok = AutoTokenizer.from_pretrained(run / "base")
    batch = tok("The Eiffel Tower is located in", return_tensors="pt")
    edited = AutoModelForCausalLM.from_pretrained(run / "run" / "model")
    base = AutoModelForCausalLM.from_pretrained(run / "base")
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        want, got = edited(**batch).logits, adapted(**batch).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0)

    again = invoke("export", run / "run", "--peft", tmp_path / "adapter")
    assert again.exit_code == 1 and "already exists" in again.output  # never overwritten
    bad = invoke("export", run / "run", "--peft", tmp_path / "x", "--push-to-hub", "no/t/valid")
    assert bad.exit_code == 1 and "repository id" in bad.output
    assert not (tmp_path / "x").exists()
