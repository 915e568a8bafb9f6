"""EditPatch round trip: save, load, revert bit-exactly, re-apply to a fresh base model."""

from __future__ import annotations

import pytest
import torch

from massedit import EditPatch
from massedit.testing import tiny_model
from tests.test_engine_algebra import REQUESTS, _editor


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_patch_round_trip(model_type, tiny_corpus, stats_dir, tmp_path):
    model, tok = tiny_model(model_type)
    before = _weights(model)
    patch = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1, 2)).edit(
        REQUESTS, batch_size=2)  # two sequential batches: two deltas per site
    edited = _weights(model)
    changed = [k for k in before if not torch.equal(before[k], edited[k])]
    assert changed and all("mlp" in k for k in changed)
    assert len(patch.deltas) == 4

    patch.save(tmp_path / "patch")
    loaded = EditPatch.load(tmp_path / "patch")
    assert loaded.metadata["method"] == "memit"
    assert loaded.metadata["requests_digest"] == patch.metadata["requests_digest"]
    assert "versions" in loaded.metadata and loaded.metadata["stats"]["tokens_requested"] > 0

    loaded.revert(model)
    assert all(torch.equal(before[k], v) for k, v in _weights(model).items())

    fresh, _ = tiny_model(model_type)  # same seed: the same base model
    loaded.apply(fresh)
    assert all(torch.equal(edited[k], v) for k, v in _weights(fresh).items())

    with pytest.raises(ValueError, match="another base model"):
        loaded.apply(fresh)  # already edited: no longer the base
    other, _ = tiny_model(model_type, seed=1)
    with pytest.raises(ValueError, match="another base model"):
        loaded.apply(other)
