"""``massedit trace`` end to end on a tiny model saved to a folder."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from typer.testing import CliRunner

from massedit.cli.main import app
from massedit.testing import tiny_model

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "Eiffel Tower"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, tok = tiny_model("gpt2", n_layer=3)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def greedy(model_dir, prompt: str) -> str:
    from massedit.models.loading import load_model

    model, tok = load_model(str(model_dir))
    with torch.no_grad():
        logits = model(**tok(prompt, return_tensors="pt")).logits[0, -1]
    return tok.decode([int(logits.argmax())]).strip()


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_trace_one_fact_writes_tables_heatmap_and_preset_snippets(model_dir, tmp_path):
    out = tmp_path / "trace"
    result = invoke("trace", "--model", model_dir, "--prompt", PROMPT, "--subject", SUBJECT,
                    "--samples", "2", "--suggest", "--spread", "2", "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "trace.json").read_text())
    assert data["answer"] == greedy(model_dir, PROMPT) and data["answer_predicted"]
    assert set(data["kinds"]) == {"hidden", "mlp", "attn"}
    n_rows = len((out / "trace.csv").read_text().splitlines()) - 1
    assert n_rows == 3 * len(data["tokens"]) * 3  # kinds x tokens x layers
    assert (out / "heatmap.png").read_bytes()[:8] == PNG_MAGIC
    suggestion = json.loads((out / "suggestion.json").read_text())
    memit = yaml.safe_load((out / "presets" / "memit.yaml").read_text())
    assert tuple(memit["layers"]) == tuple(suggestion["memit_layers"]) and len(memit["layers"]) == 2
    assert "layers: [" in result.output and "strongest restoration" in result.output


def test_trace_known_facts_averages_the_predicted_ones_and_resumes(model_dir, tmp_path):
    prompts = [("The Eiffel Tower is located in", "Eiffel Tower"),
               ("Michael Jordan plays", "Michael Jordan"),
               ("The capital city of France is", "France")]
    facts = [{"known_id": i, "prompt": p, "subject": s, "attribute": greedy(model_dir, p)}
             for i, (p, s) in enumerate(prompts)]
    wrong = greedy(model_dir, "Lionel Messi plays")
    facts.insert(1, {"known_id": 9, "prompt": "Lionel Messi plays", "subject": "Lionel Messi",
                     "attribute": "chess" if wrong != "chess" else "piano"})  # not predicted
    known = tmp_path / "known.json"
    known.write_text(json.dumps(facts))
    out = tmp_path / "avg"
    args = ("trace", "--model", model_dir, "--known", known, "--n", "2", "--kind", "hidden,mlp",
            "--samples", "2", "--out", out)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1]  # the unpredicted fact (id 9) was left out
    avg = json.loads((out / "average.json").read_text())
    assert avg["n_facts"] == 2 and set(avg["kinds"]) == {"hidden", "mlp"}
    assert len(avg["kinds"]["mlp"]["indirect_effect"]) == 6  # ROME's six token categories
    assert (out / "average.png").read_bytes()[:8] == PNG_MAGIC
    # An earlier run's facts are reused when the settings match: mark one to see it kept.
    rows[0]["trace"]["clean_prob"] = 0.123456
    (out / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert invoke(*args).exit_code == 0
    reused = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert reused[0]["trace"]["clean_prob"] == 0.123456 and reused[1] == rows[1]
    assert invoke(*args, "--seed", "5").exit_code == 0  # other settings: traced afresh
    fresh = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert fresh[0]["trace"]["clean_prob"] != 0.123456


def test_bad_input_is_reported_clearly(model_dir, tmp_path, caplog):
    out = tmp_path / "bad"
    result = invoke("trace", "--model", model_dir, "--prompt", PROMPT, "--subject", "Big Ben",
                    "--out", out)
    assert result.exit_code == 1 and "Big Ben" in result.output and not out.exists()
    result = invoke("trace", "--model", model_dir, "--prompt", PROMPT, "--subject", SUBJECT,
                    "--kind", "residual", "--out", out)
    assert result.exit_code == 1 and "residual" in result.output
    result = invoke("trace", "--model", model_dir, "--out", out)
    assert result.exit_code == 1 and "--prompt" in result.output
    wrong = "Rome" if greedy(model_dir, PROMPT) != "Rome" else "Paris"
    with caplog.at_level(logging.WARNING, logger="massedit"):
        result = invoke("trace", "--model", model_dir, "--prompt", PROMPT, "--subject", SUBJECT,
                        "--target", wrong, "--kind", "hidden", "--samples", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert "does not predict" in caplog.text
    assert json.loads((out / "trace.json").read_text())["answer"] == wrong


def test_trace_cli_on_an_encoder_decoder_traces_its_encoder(tmp_path):
    from massedit.testing.tiny_seq2seq import tiny_seq2seq_model

    model, tok = tiny_seq2seq_model("t5", n_layer=3, n_dec_layer=2)
    path = tmp_path / "tiny-t5"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    out = tmp_path / "trace"
    result = invoke("trace", "--model", path, "--prompt", PROMPT, "--subject", SUBJECT,
                    "--kind", "hidden,mlp", "--samples", "2", "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "trace.json").read_text())
    assert set(data["kinds"]) == {"hidden", "mlp"}
    # Rows are the encoder's 3 layers (not the decoder's 2) for every source token.
    n_rows = len((out / "trace.csv").read_text().splitlines()) - 1
    assert n_rows == 2 * len(data["tokens"]) * 3
    assert len(data["tokens"]) == len(tok(PROMPT)["input_ids"])
    assert (out / "heatmap.png").read_bytes()[:8] == PNG_MAGIC
