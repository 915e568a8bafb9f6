"""Half precision end to end (docs/design.md §1): a model in bfloat16 or float16 is edited with
fp32 keys, targets and statistics and fp64 solves, the write is cast to the weight's dtype,
revert gives back its bits, and float16 overflow in the target optimisation stops the edit with
a message naming the cause and the remedy, before anything is written."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from massedit import EditError, Editor, StatsSpec
from massedit.engine.patch import EditPatch
from massedit.engine.precision import HalfPrecisionOverflowError
from massedit.models.adapters import get_adapter, get_module, read_weight
from massedit.testing import tiny_model
from tests.test_cli import FACTS, invoke, write_csv
from tests.test_engine_algebra import FAST, REQUESTS

pytestmark = pytest.mark.usefixtures("one_thread")
HALF = [torch.bfloat16, torch.float16]
LAYERS = [1, 2]


def _editor(model, tok, corpus, tmp_path, **hp):
    stats = StatsSpec(corpus=str(corpus), cache_dir=str(tmp_path / "stats"))
    return Editor(model, tok, "memit", stats=stats, progress=False,
                  **{**FAST, "layers": LAYERS, **hp})


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_edit_writes_in_the_weights_dtype_and_reverts_bit_exact(
        model_type, dtype, tiny_corpus, tmp_path):
    model, tok = tiny_model(model_type)
    model = model.to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor = _editor(model, tok, tiny_corpus, tmp_path)
    patch = editor.edit(REQUESTS)
    assert editor.moments()[LAYERS[0]].total.dtype == torch.float32  # sums in fp32
    sites = {get_adapter(model).site_name(layer) for layer in LAYERS}
    assert {sd.site for sd in patch.deltas} == sites
    for sd in patch.deltas:
        w = read_weight(get_module(model, sd.site), get_adapter(model).layout)  # (d_out, d_in)
        assert w.dtype == dtype and patch.originals[sd.site].dtype == dtype
        d = sd.delta.matrix()
        assert d.dtype == torch.float32 and torch.isfinite(d).all()
        # The write is W + ΔW formed in fp32 and cast once to the weight's dtype.
        expected = (patch.originals[sd.site].float() + d).to(dtype)  # originals: (d_out, d_in)
        if len(patch.deltas) == len(sites):  # one delta per site: the weight is exactly that
            assert torch.equal(w, expected)
        assert not torch.equal(w, patch.originals[sd.site])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{site}.weight" for site in sites}
    patch.revert(model)
    for name, value in model.state_dict().items():
        assert value.dtype == before[name].dtype and torch.equal(value, before[name]), name


def _overflow_above(model, layer: int):
    """A hook that scales block ``layer``'s output by 1e8: float16 (max 65,504) turns it into
    inf, float32 carries it. Blocks at and below the edit layers are untouched, so statistics
    and keys are finite and only the target optimisation (which runs the blocks above) meets
    it."""
    block = get_module(model, f"{get_adapter(model).layers}.{layer}")

    def scale(_module, _inputs, output):
        if isinstance(output, tuple):
            return (output[0] * 1e8, *output[1:])
        return output * 1e8

    return block.register_forward_hook(scale)


def test_float16_overflow_in_targets_is_named_and_nothing_is_written(tiny_corpus, tmp_path):
    model, tok = tiny_model("llama")
    model = model.half()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hook = _overflow_above(model, LAYERS[-1] + 1)
    editor = _editor(model, tok, tiny_corpus, tmp_path)
    with pytest.raises(HalfPrecisionOverflowError) as caught:
        editor.edit(REQUESTS)
    message = str(caught.value)
    assert isinstance(caught.value, EditError)  # the CLI reports it as a failed edit (exit 1)
    for words in ("float16 overflow in the target optimisation", "nothing was written",
                  "--dtype bfloat16", "65504"):  # cause, state, remedy, the range it hit
        assert words in message, message
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    # The same hook in float32 is only large numbers, not an overflow: the edit goes through,
    # so what stopped the float16 edit is its range.
    hook.remove()
    model32, tok = tiny_model("llama")
    _overflow_above(model32, LAYERS[-1] + 1)
    patch = _editor(model32, tok, tiny_corpus, tmp_path).edit(REQUESTS)
    assert len(patch.deltas) == len(LAYERS)


def test_cli_edit_in_bfloat16_saves_bf16_and_reverts_bit_exact(tiny_corpus, stats_dir,
                                                              tmp_path, monkeypatch):
    monkeypatch.setenv("MASSEDIT_CACHE", str(stats_dir))
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "base")  # float32 on disk; --dtype casts on load
    tok.save_pretrained(tmp_path / "base")
    run = tmp_path / "run"
    result = invoke("edit", "--model", tmp_path / "base", "--edits",
                    write_csv(tmp_path / "facts.csv", FACTS[:2]), "--out", run, "--method",
                    "memit", "--dtype", "bfloat16", "--save-model", "--stats-corpus",
                    tiny_corpus, "--set", "v_num_grad_steps=4", "--set", "layers=[1,2]",
                    "--set", "max_update_ratio=1e9", "--stats-tokens", "2000")
    assert result.exit_code == 0, result.output
    patch = EditPatch.load(run / "patch")
    assert {t.dtype for t in patch.originals.values()} == {torch.bfloat16}
    saved = load_file(run / "model" / "model.safetensors")
    base16 = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    edited = {f"{sd.site}.weight" for sd in patch.deltas}
    assert len(edited) == 2
    for name, value in saved.items():
        assert value.dtype == torch.bfloat16, name
        assert torch.equal(value, base16[name]) == (name not in edited), name
    result = invoke("revert", run, "--dtype", "bfloat16", "--out", tmp_path / "reverted")
    assert result.exit_code == 0, result.output
    reverted = load_file(tmp_path / "reverted" / "model.safetensors")
    assert reverted.keys() == saved.keys()
    for name, value in reverted.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, base16[name]), name


def test_float16_overflow_in_statistics_is_named_and_nothing_is_cached(tiny_corpus, tmp_path):
    """Block 0 overflows: the statistics pass (which runs it) stops with the named error, and
    no statistics file is written (a cached inf sum would poison later edits)."""
    model, tok = tiny_model("llama")
    model = model.half()
    _overflow_above(model, 0)
    editor = _editor(model, tok, tiny_corpus, tmp_path)
    with pytest.raises(HalfPrecisionOverflowError, match="float16 overflow in the statistics "
                                                         "pass: the key sums"):
        editor.moments()
    assert not list((tmp_path / "stats").rglob("*.safetensors"))
