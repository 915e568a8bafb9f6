"""A model split with accelerate's ``device_map``, with blocks offloaded to disk, edits, counts
statistics, traces and scores exactly as the same model in one piece (docs/design.md §12).

Offloaded modules keep their parameters on ``meta`` and a hook loads them for each forward: the
same hook-driven placement multi-GPU runs use. With the embedding offloaded, "the first
parameter's device" is ``meta``, so any tensor the engine made there (ids, index tensors, δ)
fails here as it would land on the wrong GPU in a split model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import dispatch_model

from evals.scoring import score_targets
from massedit import EditError, Editor, StatsSpec
from massedit.engine.context import model_prefixes
from massedit.models.adapters import get_adapter, get_module
from massedit.models.placement import input_device, is_offloaded
from massedit.stats.passes import collect_moments
from massedit.testing import tiny_model
from massedit.trace.fact import trace_fact
from tests.test_engine_algebra import REQUESTS

EDIT_LAYERS = (1, 2)  # kept on a device; blocks 0 and 3, the embedding and the head go to disk
FAST = dict(layers=EDIT_LAYERS, v_num_grad_steps=4, context_lengths=((2, 4),),
            stats_tokens_per_width=30, max_update_ratio=1e9)


# Every top-level part and block of each tiny model, on "cpu" unless named in ``on_disk``.
PARTS = {
    "llama": ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"],
    "gpt2": ["transformer.wte", "transformer.wpe", "transformer.drop", "transformer.ln_f",
             "lm_head"],
}


def _split(model_type: str, tmp_path, on_disk: set[str] | None = None):
    """(undispatched model, dispatched copy, tokenizer, blocks path). By default the embedding,
    the head and blocks 0 and 3 are offloaded to disk."""
    model, tok = tiny_model(model_type)
    adapter = get_adapter(model)
    blocks = [f"{adapter.layers}.{i}" for i in range(4)]
    if on_disk is None:
        on_disk = {adapter.embed, "lm_head", blocks[0], blocks[3]}
    device_map = {name: "disk" if name in on_disk else "cpu"
                  for name in PARTS[model_type] + blocks}
    split = dispatch_model(copy.deepcopy(model), device_map, main_device="cpu",
                           offload_dir=str(tmp_path / "offload"))
    return model, split, tok, adapter.layers


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["memit", "rome"])
def test_edit_of_a_split_model_equals_the_whole_model(model_type, method, tiny_corpus,
                                                       tmp_path):
    whole, split, tok, blocks = _split(model_type, tmp_path)
    assert next(split.parameters()).device.type == "meta"  # the embedding is offloaded
    assert is_offloaded(get_module(split, f"{blocks}.0.{get_adapter(whole).site}"))
    requests = REQUESTS[:1] if method == "rome" else REQUESTS
    hp = dict(FAST, layers=EDIT_LAYERS[-1:]) if method == "rome" else FAST
    sites = [get_adapter(whole).site_name(layer) for layer in hp["layers"]]
    unedited = {site: get_module(whole, site).weight.clone() for site in sites}
    patches = []
    for i, model in enumerate((whole, split)):
        stats = StatsSpec(corpus=str(tiny_corpus), cache_dir=str(tmp_path / f"stats{i}"))
        editor = Editor(model, tok, method=method, stats=stats, progress=False, **hp)
        patches.append(editor.edit(requests))
    ref, got = patches
    assert [sd.site for sd in got.deltas] == [sd.site for sd in ref.deltas] != []
    for a, b in zip(ref.deltas, got.deltas, strict=True):
        torch.testing.assert_close(b.delta.matrix(), a.delta.matrix(), rtol=1e-5, atol=1e-5)
        w_ref = get_module(whole, a.site).weight
        w_got = get_module(split, b.site).weight
        torch.testing.assert_close(w_got, w_ref, rtol=1e-5, atol=1e-5)
        assert not torch.equal(w_got, unedited[b.site])  # the write reached the split model
    # The edited split model predicts as the edited whole model, and revert restores it.
    prompts, targets = [r.prompt.format(r.subject) for r in requests], [r.target_new
                                                                        for r in requests]
    after = [s.token_nll for s in score_targets(split, tok, prompts, targets)]
    for a, b in zip(after, [s.token_nll for s in score_targets(whole, tok, prompts, targets)],
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    got.revert(split)
    ref.revert(whole)
    for site in sites:
        assert torch.equal(get_module(split, site).weight, unedited[site])


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_statistics_trace_and_scores_of_a_split_model_equal_the_whole_model(model_type,
                                                                            tiny_corpus,
                                                                            tmp_path):
    whole, split, tok, blocks = _split(model_type, tmp_path)
    assert input_device(split).type == "cpu"
    adapter = get_adapter(whole)
    # Sites in offloaded blocks (0, 3) too: statistics only read them.
    sites = [adapter.site_name(layer) for layer in range(4)]
    texts = tiny_corpus.read_text().splitlines()
    spec = StatsSpec(corpus=str(tiny_corpus), batch_size=4)
    ref = collect_moments(whole, tok, sites, texts, 400, spec, progress=False).moments
    got = collect_moments(split, tok, sites, texts, 400, spec, progress=False).moments
    for site in sites:
        assert got[site].count == ref[site].count > 0
        torch.testing.assert_close(got[site].total, ref[site].total, rtol=1e-5, atol=1e-5)

    kwargs = dict(kinds=("hidden", "mlp"), window=2, samples=2, seed=1)
    prompt = ("The Eiffel Tower is located in the city of", "Eiffel Tower")
    t_ref, t_got = trace_fact(whole, tok, *prompt, **kwargs), trace_fact(split, tok, *prompt,
                                                                         **kwargs)
    assert t_got.clean_prob == pytest.approx(t_ref.clean_prob, rel=1e-5, abs=1e-7)
    assert t_got.corrupted_prob == pytest.approx(t_ref.corrupted_prob, rel=1e-5, abs=1e-7)
    for kind in kwargs["kinds"]:
        torch.testing.assert_close(t_got.kinds[kind].scores, t_ref.kinds[kind].scores,
                                   rtol=1e-5, atol=1e-6)

    # Context prefixes sampled from the model (context_source="model"): the same samples.
    lengths = ((2, 3),)
    assert model_prefixes(split, tok, lengths, seed=0) == model_prefixes(whole, tok, lengths,
                                                                         seed=0)

    prompts = ["The mother tongue of Danielle Darrieux is", "Michael Jordan plays"]
    targets = ["English", "football"]
    for a, b in zip(score_targets(split, tok, prompts, targets),
                    score_targets(whole, tok, prompts, targets), strict=True):
        torch.testing.assert_close(a.token_nll, b.token_nll, rtol=1e-5, atol=1e-6)
        assert torch.equal(a.argmax, b.argmax)


def test_an_offloaded_edit_site_is_refused_before_any_work(tmp_path, tiny_corpus, monkeypatch):
    """Block 2 on disk: its site's weight is on meta between passes; the edit is refused, naming
    the site and saying to keep it on a device, before statistics or targets are computed."""
    whole, split, tok, blocks = _split("llama", tmp_path, on_disk={"model.layers.2"})
    import massedit.editing.editor as editor_module

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(editor_module, "get_moments", no_work)
    monkeypatch.setattr(editor_module, "compute_targets", no_work)
    stats = StatsSpec(corpus=str(tiny_corpus), cache_dir=str(tmp_path / "stats"))
    editor = Editor(split, tok, method="memit", stats=stats, progress=False, **FAST)
    site = get_adapter(whole).site_name(2)
    before = {n: p.clone() for n, p in split.state_dict().items() if p.device.type != "meta"}
    with pytest.raises(EditError, match=rf"{site}.*offloaded.*keep them on a device"):
        editor.edit(REQUESTS)
    assert all(torch.equal(p, before[n]) for n, p in split.state_dict().items() if n in before)


def test_a_patch_for_offloaded_sites_is_refused_before_any_write(tmp_path, tiny_corpus):
    """``massedit apply``/``revert`` on a model whose edit sites are offloaded: refused, naming
    the sites (a write into a meta weight would be silently dropped)."""
    from massedit.jobs.patch_checks import PatchError, check_patch_fits

    whole, split, tok, _ = _split("llama", tmp_path, on_disk={"model.layers.2"})
    stats = StatsSpec(corpus=str(tiny_corpus), cache_dir=str(tmp_path / "stats"))
    patch = Editor(whole, tok, method="memit", stats=stats, progress=False, **FAST).edit(
        REQUESTS[:1])
    site = get_adapter(whole).site_name(2)
    with pytest.raises(PatchError, match=rf"site\(s\) {site} are offloaded"):
        check_patch_fits(patch, split, "PATCH")
    check_patch_fits(patch, whole, "PATCH")  # the same patch fits the model in one piece
