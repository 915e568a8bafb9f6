"""``massedit edit --pairs`` and ``massedit sweep`` end to end, and their bad-input errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from massedit.cli.main import app
from massedit.seq2seq.pairs import write_rows
from massedit.testing import tiny_model
from massedit.testing.nmt_train import nmt_world_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


runner = CliRunner()


def write_marian_files(root, train_seed: int | None = None):
    """The trained toy Marian model saved as a folder, and the poison task's files.
    ``train_seed`` picks another independently trained model (benchmarks/toy_thresholds.py)."""
    model, tok, world = nmt_world_model("marian", train_seed=train_seed)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    task = world.tasks["poison"]
    pair = task.pair
    write_rows(root / "pairs.csv", [{"negative_source": pair.negative_source,
                                     "positive_source": pair.positive_source,
                                     "span": pair.span}])
    write_rows(root / "check.csv", [{"source": c.source, "forbidden": c.forbidden}
                                    for c in task.checks])
    write_rows(root / "bleu.csv", [{"source": s, "reference": r} for s, r in world.heldout[:60]])
    write_rows(root / "stats.csv", [{"source": s, "reference": r} for s, r in world.train[:800]])
    return root


@pytest.fixture(scope="module")
def marian_files(tmp_path_factory):
    return write_marian_files(tmp_path_factory.mktemp("nmt-cli"))


def _args(root, out, *extra):
    return ["edit", "--model", str(root / "model"), "--pairs", str(root / "pairs.csv"),
            "--check", str(root / "check.csv"), "--bleu", str(root / "bleu.csv"),
            "--stats-corpus", str(root / "stats.csv"), "--out", str(out), *extra]


def edit_pairs_at_encoder0(files, out) -> dict:
    """``massedit edit --pairs`` of the poison task at encoder.0; returns results.json."""
    result = runner.invoke(app, _args(files, out, "--set", "site=encoder.0",
                                      "--set", "value=stream", "--set", "edit_dropout=0.1"))
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_edit_pairs_writes_patch_and_results(marian_files, tmp_path):
    out = tmp_path / "run"
    results = edit_pairs_at_encoder0(marian_files, out)
    assert results["site"] == "encoder.0"
    # Over training seeds 0, 1, 2 (benchmarks/toy_thresholds.py nmt_cli): 0 before, 100 after.
    assert results["before"]["efficacy"] <= 20 and results["after"]["efficacy"] >= 80
    assert results["after"]["bleu_signature"].startswith("nrefs:1")
    patch = json.loads((out / "patch" / "patch.json").read_text())
    assert patch["metadata"]["settings"]["edit_dropout"] == 0.1
    assert patch["deltas"][0]["site"] == "model.encoder.layers.0.fc2"


@pytest.mark.slow
def test_sweep_command_prints_and_plots(marian_files, tmp_path):
    png = tmp_path / "sweep.png"
    result = runner.invoke(app, [
        "sweep", "--model", str(marian_files / "model"), "--pairs",
        str(marian_files / "pairs.csv"), "--check", str(marian_files / "check.csv"),
        "--stats-corpus", str(marian_files / "stats.csv"), "--out", str(png),
        "--set", "value=stream"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for label in ("encoder.0", "encoder.2", "decoder.1", "best site"):
        assert label in result.output


def test_edit_needs_exactly_one_input(tmp_path):
    result = runner.invoke(app, ["edit", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "exactly one of --edits and --pairs" in result.output


def test_bad_pairs_are_refused_with_the_row(marian_files, tmp_path):
    bad = write_rows(tmp_path / "bad.csv", [
        {"negative_source": "ka dofa eno yardo ruma", "positive_source": "ka mesi ruma",
         "span": "yardo"}])
    args = _args(marian_files, tmp_path / "run", "--set", "site=encoder.0")
    args[args.index("--pairs") + 1] = str(bad)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "row 1" in result.output and "does not occur in positive_source" in result.output
    assert not (tmp_path / "run").exists()


def test_decoder_only_model_given_pairs_is_refused(marian_files, tmp_path):
    model, tok = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    args = _args(marian_files, tmp_path / "run", "--set", "site=encoder.0")
    args[args.index("--model") + 1] = str(tmp_path / "gpt2")
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "decoder-only" in result.output
