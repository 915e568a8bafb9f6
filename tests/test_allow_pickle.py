"""``--allow-pickle`` (docs/design.md §12): every command that loads a model takes it; without
it a model with only pickled weights is refused, naming the flag; with it the command runs."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from massedit.cli.main import app
from massedit.engine.patch import EditPatch
from massedit.models.loading import ALLOW_PICKLE_ENV
from massedit.testing import tiny_model
from tests.test_cli import FACTS, invoke, write_csv

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL_COMMANDS = ["edit", "apply", "revert", "stats", "trace", "tune", "sweep", "stream", "eval",
                  "compare"]


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_loading_command_takes_allow_pickle(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "--allow-pickle" in result.output


def test_edit_of_a_pickled_model_needs_allow_pickle(tiny_corpus, stats_dir, tmp_path,
                                                   monkeypatch):
    monkeypatch.setenv("MASSEDIT_CACHE", str(stats_dir))
    # "0" refuses; the flag sets it to "1" for the process, and monkeypatch restores it after.
    monkeypatch.setenv(ALLOW_PICKLE_ENV, "0")
    model, tok = tiny_model("gpt2")
    folder = tmp_path / "pickled"
    model.save_pretrained(folder)  # safetensors (transformers 5 writes nothing else) ...
    tok.save_pretrained(folder)
    (folder / "model.safetensors").unlink()  # ... replaced by a pickle of the same weights
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert not list(folder.glob("*.safetensors")) and list(folder.glob("*.bin"))
    args = ["edit", "--model", folder, "--edits", write_csv(tmp_path / "f.csv", FACTS[:1]),
            "--method", "memit", "--stats-corpus", tiny_corpus, "--stats-tokens", "2000",
            "--set", "v_num_grad_steps=2", "--set", "layers=[1]"]
    refused = invoke(*args, "--out", tmp_path / "refused")
    assert refused.exit_code == 1
    assert "no safetensors weights" in refused.output and "--allow-pickle" in refused.output
    done = invoke(*args, "--out", tmp_path / "run", "--allow-pickle")
    assert done.exit_code == 0, done.output
    patch = EditPatch.load(tmp_path / "run" / "patch")
    assert [sd.site for sd in patch.deltas] == ["transformer.h.1.mlp.c_proj"]
    assert torch.equal(patch.originals["transformer.h.1.mlp.c_proj"],
                       model.transformer.h[1].mlp.c_proj.weight.T)  # read from the pickle
