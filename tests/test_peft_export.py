"""A patch as a PEFT LoRA adapter: ``PeftModel.from_pretrained(base, folder)`` computes exactly
what the edited model computes (docs/design.md §14)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from massedit import Editor, EditPatch, EditRequest, StatsSpec
from massedit.engine.problem import Delta
from massedit.export import AdapterTooLargeError, ExportError
from massedit.export.card import read_card_header
from massedit.export.lora import site_lora
from massedit.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Ten facts in the tiny tokenizer's words (massedit.testing.TINY_WORDS).
FACTS = [
    EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris"),
    EditRequest("{} plays", "Michael Jordan", "football", "basketball"),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditRequest("The {} is located in", "Colosseum", "London", "Rome"),
    EditRequest("{} plays", "Lionel Messi", "tennis", "soccer"),
    EditRequest("{} works as a", "Barack Obama", "chef", "politician"),
    EditRequest("{} was born in", "Marie Curie", "Japan", "Poland"),
    EditRequest("{} is a famous", "Albert Einstein", "pilot", "scientist"),
    EditRequest("The headquarters of {} is in", "Toyota", "Berlin", "Tokyo"),
    EditRequest("{} was created by", "iPhone", "Nokia", "Apple"),
]
# Random tiny models need large updates; the safety limit is tested elsewhere.
FAST = dict(v_num_grad_steps=4, context_lengths=((2, 4),), stats_tokens_per_width=30,
            max_update_ratio=1e9)
PROBES = ["The Eiffel Tower is located in", "Michael Jordan plays", "Toyota was founded in",
          "The capital city of France is"]


def _logits(model, tok, texts=PROBES) -> torch.Tensor:
    """Logits at the real tokens of each text, one text at a time (padding positions' logits
    mean nothing): (total tokens, vocab)."""
    with torch.no_grad():
        return torch.cat([model(**tok(t, return_tensors="pt")).logits[0] for t in texts])


def _memit(model, tok, corpus, stats_dir, batch_size=None, **kw) -> EditPatch:
    stats = StatsSpec(corpus=str(corpus), cache_dir=str(stats_dir))
    editor = Editor(model, tok, method="memit", stats=stats, progress=False,
                    **{**FAST, "layers": (1, 2), **kw})
    return editor.edit(FACTS, batch_size=batch_size)


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "gptj"])
def test_adapter_equals_edited_model(model_type, tiny_corpus, stats_dir, tmp_path):
    model, tok = tiny_model(model_type)
    patch = _memit(model, tok, tiny_corpus, stats_dir)
    edited = _logits(model, tok)
    out = patch.to_peft(model, tmp_path / "adapter")

    base, _ = tiny_model(model_type)  # a fresh copy of the base model
    before = _logits(base, tok)
    assert (edited - before).abs().max() > 1e-3  # the edit changed the outputs
    peft_model = PeftModel.from_pretrained(base, str(out.path)).eval()
    assert torch.allclose(_logits(peft_model, tok), edited, atol=1e-5, rtol=0)

    config = json.loads((out.path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["fan_in_fan_out"] is (model_type == "gpt2")  # GPT-2's Conv1D sites
    assert sorted(config["target_modules"]) == sorted(patch.sites)
    assert set(out.ranks.values()) == {len(FACTS)}  # one rank per fact, per site
    for pattern, r in config["rank_pattern"].items():
        assert config["alpha_pattern"][pattern] == r  # LoRA scale 1
    # Merging gives the edited weights (to fp32 rounding): the adapter is the patch's ΔW.
    merged = peft_model.merge_and_unload()
    assert torch.allclose(_logits(merged, tok), edited, atol=1e-5, rtol=0)
    # The adapter's card names the base model and says it is a PEFT adapter.
    header = read_card_header(out.path)
    assert header["library_name"] == "peft" and "base_model" in header


def test_sequential_batches_add_up_and_two_adapters_switch(tiny_corpus, stats_dir, tmp_path):
    """Two batches at each site: their factors side by side are one exact adapter; two adapters
    on one base switch with set_adapter."""
    model, tok = tiny_model("llama")
    patch = _memit(model, tok, tiny_corpus, stats_dir, batch_size=5)
    assert len(patch.deltas) == 4  # 2 batches x 2 sites
    edited = _logits(model, tok)
    patch.revert(model)
    first = _memit(model, tok, tiny_corpus, stats_dir, layers=(2,))
    edited_first = _logits(model, tok)
    patch.to_peft(model, tmp_path / "both")
    first.to_peft(model, tmp_path / "first")

    base, _ = tiny_model("llama")
    served = PeftModel.from_pretrained(base, str(tmp_path / "both"), adapter_name="both")
    served.load_adapter(str(tmp_path / "first"), adapter_name="first")
    served.eval()
    assert torch.allclose(_logits(served, tok), edited, atol=1e-5, rtol=0)
    served.set_adapter("first")
    assert torch.allclose(_logits(served, tok), edited_first, atol=1e-5, rtol=0)


def test_dense_delta_is_factored_at_its_exact_rank():
    torch.manual_seed(0)
    u, v = torch.randn(32, 3, dtype=torch.float64), torch.randn(96, 3, dtype=torch.float64)
    dense = Delta(dense=(u @ v.T).float())
    lora = site_lora("s", [dense])
    assert lora.rank == 3 and lora.via_svd  # numerically zero singular values dropped only
    assert torch.allclose(lora.b @ lora.a, dense.dense, atol=1e-5)
    full = Delta(dense=torch.randn(32, 96))
    big = site_lora("s", [full])
    assert big.rank == 32 and not big.saves_space  # 32 (96 + 32) >= 96 x 32


def test_no_space_saved_is_refused_then_allowed(tiny_corpus, stats_dir, tmp_path):
    model, tok = tiny_model("llama")
    patch = _memit(model, tok, tiny_corpus, stats_dir, layers=(2,))
    site = patch.deltas[0].site
    full = Delta(dense=torch.randn(32, 96) * 1e-3)  # a full-rank update: LoRA saves nothing
    patch.deltas[0].delta = full
    with pytest.raises(AdapterTooLargeError, match="dense patch|massedit apply"):
        patch.to_peft(model, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # nothing written
    out = patch.to_peft(model, tmp_path / "allowed", allow_large=True)
    tensors = load_file(str(out.path / "adapter_model.safetensors"))
    b = tensors[f"base_model.model.{site}.lora_B.weight"]
    a = tensors[f"base_model.model.{site}.lora_A.weight"]
    assert torch.allclose(b @ a, full.dense, atol=1e-6)


def test_sites_lora_cannot_wrap_are_refused(tiny_corpus, stats_dir, tmp_path):
    model, tok = tiny_model("llama")
    patch = _memit(model, tok, tiny_corpus, stats_dir, layers=(2,))
    other, _ = tiny_model("gpt2")  # no module of that name
    with pytest.raises(ExportError, match="no such module"):
        patch.to_peft(other, tmp_path / "a")
    patch.deltas[0].site = "model.layers.2.mlp.act_fn"  # exists, but not a Linear
    with pytest.raises(ExportError, match="cannot wrap"):
        patch.to_peft(model, tmp_path / "b")
    assert not any(tmp_path.iterdir())


def test_export_from_config_alone(tiny_corpus, stats_dir, tmp_path):
    """Only the structure is needed: a config builds it on the meta device."""
    model, tok = tiny_model("gpt2")
    patch = _memit(model, tok, tiny_corpus, stats_dir, layers=(1,))
    edited = _logits(model, tok)
    out = patch.to_peft(model.config, tmp_path / "adapter")
    base, _ = tiny_model("gpt2")
    peft_model = PeftModel.from_pretrained(base, str(out.path)).eval()
    assert torch.allclose(_logits(peft_model, tok), edited, atol=1e-5, rtol=0)


def test_smollm2_adapter_equals_edited_model(tmp_path):
    """The embedded SmolLM2-135M after a 10-fact MEMIT edit (its preset's five layers; a small
    statistics budget and two target steps keep it to seconds on one core)."""
    from massedit import load_model
    from massedit.jobs.edit_files import load_edits
    from tests.conftest import REPO

    model, tok = load_model("smollm2-135m")
    facts = load_edits(str(REPO / "examples" / "facts.csv"), {}, "train").requests[:10]
    stats = StatsSpec(corpus="wikitext-excerpt", tokens=3000, cache_dir=str(tmp_path / "cache"))
    editor = Editor(model, tok, method="memit", stats=stats, progress=False,
                    v_num_grad_steps=2, context_lengths=())
    probes = [f.text for f in facts[:4]]
    before = _logits(model, tok, probes)
    patch = editor.edit(facts)
    edited = _logits(model, tok, probes)
    out = patch.to_peft(model, tmp_path / "adapter")
    patch.revert(model)  # the model is the base again
    assert (edited - before).abs().max() > 1e-2
    peft_model = PeftModel.from_pretrained(model, str(out.path)).eval()
    gap = (_logits(peft_model, tok, probes) - edited).abs().max()
    # Logits reach ~30 here: 1e-5 of their scale is fp32 rounding of W x + B (A x) against
    # (W + ΔW) x over 30 layers.
    assert gap <= 1e-5 * edited.abs().max(), gap
    assert set(out.ranks) == set(patch.sites) and set(out.ranks.values()) == {10}
