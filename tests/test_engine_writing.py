"""The one weight-writing path (massedit.engine.writing) shared by Editor and PairEditor."""

from __future__ import annotations

import pytest
import torch

from massedit import EditError, EditPatch
from massedit.engine.hparams import EditHparams
from massedit.engine.problem import Delta, SecondMoment
from massedit.engine.writing import check_update, edit_metadata, output_change, write_update
from massedit.models.adapters import get_adapter, get_module, read_weight
from massedit.seq2seq.pair_edit import PairEditor
from massedit.seq2seq.pairs import EditPair
from massedit.testing import TINY_WORDS, tiny_gpt2_pair
from massedit.testing.tiny_seq2seq import tiny_seq2seq_model
from massedit.version import library_versions

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def _site(model):
    adapter = get_adapter(model)
    return adapter, adapter.site_name(1)


@pytest.mark.parametrize("which", [0, 1])  # Conv1D GPT-2 and the same weights as Linear
def test_write_update_records_writes_and_reverts(which):
    model = tiny_gpt2_pair()[which]
    adapter, site = _site(model)
    before = read_weight(get_module(model, site), adapter.layout).detach().clone()  # (d_out, d_in)
    d_out, d_in = before.shape
    gen = torch.Generator().manual_seed(0)
    delta = Delta(torch.randn(d_out, 1, generator=gen) * 1e-2, torch.randn(d_in, 1, generator=gen))
    patch = EditPatch()
    ratio = write_update(model, site, 1, adapter.layout, delta, patch, max_update_ratio=10.0)
    after = read_weight(get_module(model, site), adapter.layout)
    assert torch.allclose(after, before + delta.matrix(), atol=1e-6)
    assert ratio == pytest.approx(float(delta.matrix().norm() / before.norm()), rel=1e-5)
    assert [(sd.site, sd.layer, sd.layout) for sd in patch.deltas] == [(site, 1, adapter.layout)]
    assert torch.equal(patch.originals[site], before)
    patch.revert(model)
    assert torch.equal(read_weight(get_module(model, site), adapter.layout), before)


@pytest.mark.parametrize("bad", ["nan", "huge"])
def test_write_update_refuses_before_writing(bad):
    model = tiny_gpt2_pair()[1]
    adapter, site = _site(model)
    before = read_weight(get_module(model, site), adapter.layout).detach().clone()
    dense = torch.full_like(before, float("nan")) if bad == "nan" else before * 100
    patch = EditPatch()
    with pytest.raises(EditError, match="non-finite" if bad == "nan" else "weight's own norm"):
        write_update(model, site, 1, adapter.layout, Delta(dense=dense), patch, 10.0)
    assert not patch.deltas and not patch.originals  # nothing recorded...
    assert torch.equal(read_weight(get_module(model, site), adapter.layout), before)  # or written


def test_pair_editor_writes_through_the_shared_path():
    """PairEditor's guard is the engine's: a refused update raises EditError, writes nothing;
    its metadata carries the engine's common fields."""
    model, tok = tiny_seq2seq_model("marian")
    words = list(TINY_WORDS)
    corpus = [(" ".join(words[i:i + 8]), " ".join(words[i + 1:i + 9])) for i in range(40)]
    pairs = [EditPair("The Eiffel Tower is located in Paris", "The Eiffel Tower is in Rome",
                      "Eiffel Tower")]
    editor = PairEditor(model, tok, corpus=corpus, max_update_ratio=1e-12)
    solution = editor.solve(pairs, "encoder.1")
    name = solution.site.name
    before = read_weight(get_module(model, name), "linear").detach().clone()
    patch = EditPatch()
    with pytest.raises(EditError, match="weight's own norm"):
        editor.write(solution, patch)
    assert not patch.deltas and torch.equal(read_weight(get_module(model, name), "linear"), before)
    meta = editor.metadata(pairs, solution.site)
    assert meta["versions"] == library_versions() and meta["kind"] == "pairs"
    assert meta["hparams"] == editor.hparams.to_dict()
    assert meta["model_type"] == "marian"


def test_edit_metadata_keeps_the_editor_fields():
    model = tiny_gpt2_pair()[0]
    meta = edit_metadata(model, EditHparams(layers=(1,)), method="x", n_requests=3)
    assert meta["method"] == "x" and meta["n_requests"] == 3
    assert list(meta["hparams"]["layers"]) == [1]
    assert set(meta) >= {"model_type", "model", "hparams", "versions"}


def test_the_guard_looks_at_the_layers_output_on_its_keys_before_refusing():
    """Past ``max_update_ratio`` × ‖W‖ the guard asks how much the update changes the layer's
    output on its statistics' keys (‖ΔW C½‖ / ‖W C½‖): an update along directions the keys
    hardly use is kept (small trained models: toy-world edits are 14-52× ‖W‖ but 0.3-0.7× on
    the keys), one that moves the output on the keys by as much is refused, and without
    statistics the weight's norm alone decides."""
    gen = torch.Generator().manual_seed(0)
    d_out, d_in = 6, 8
    weight = torch.randn(d_out, d_in, generator=gen)
    used = torch.tensor([1.0] * 4 + [1e-3] * 4, dtype=torch.float64)  # the keys' scale per axis
    keys = torch.randn(d_in, 500, generator=gen, dtype=torch.float64) * used[:, None]
    moment = SecondMoment(keys @ keys.T, 500)
    quiet, loud = torch.zeros(d_out, d_in), torch.zeros(d_out, d_in)
    quiet[:, 4:] = 20.0 * weight.norm() / 24 ** 0.5  # ‖ΔW‖ = 20 ‖W‖, on the unused axes
    loud[:, :4] = quiet[:, 4:]  # the same size on the used ones
    assert check_update(Delta(dense=quiet), weight, "s", 10.0, moment) == pytest.approx(20.0)
    assert output_change(quiet, weight, moment) < 0.1
    with pytest.raises(EditError, match="changes the layer's output on its statistics' keys"):
        check_update(Delta(dense=loud), weight, "s", 10.0, moment)
    with pytest.raises(EditError, match="weight's own norm"):
        check_update(Delta(dense=quiet), weight, "s", 10.0)
