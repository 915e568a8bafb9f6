"""KN (massedit/baselines/knowledge_neurons.py): integrated-gradients attributions equal a
direct computation (and add up to the probability they explain), the selection keeps what its
thresholds say, the edit moves exactly the selected value vectors by λ (e_new − e_true), the
patch round trip is exact, and model types without the needed hook points are refused first."""

from __future__ import annotations

import pytest
import torch

from massedit import Editor
from massedit.baselines.knowledge_neurons import (
    KnowledgeNeuronHparams,
    integrated_gradients,
    select_neurons,
)
from massedit.engine.tokens import encode_target
from massedit.models.adapters import get_adapter, get_module
from massedit.testing import ToyThresholds, check_method, tiny_model
from massedit.testing.conformance_edits import TINY_REQUESTS
from massedit.testing.tiny_seq2seq import tiny_seq2seq_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _prob_with(model, site: str, ids: list[int], target: int, x: torch.Tensor) -> torch.Tensor:
    """P(target | ids) with the site's input at the last position replaced by ``x`` (d_in,)."""
    def hook(_mod, args):
        h = args[0].clone()
        h[0, -1] = x
        return (h,)

    handle = get_module(model, site).register_forward_pre_hook(hook)
    try:
        logits = model(input_ids=torch.tensor([ids])).logits  # (1, len, vocab)
    finally:
        handle.remove()
    return logits[0, -1].float().softmax(-1)[target]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_attributions_equal_a_direct_integrated_gradients_computation(arch):
    model, tok = tiny_model(arch)
    req = TINY_REQUESTS[0]
    ids = list(tok(req.text)["input_ids"])
    target = encode_target(tok, req.target_true)[0]
    site = get_adapter(model).site_name(1)
    seen = {}
    handle = get_module(model, site).register_forward_hook(
        lambda _m, args, _o: seen.update(a=args[0][0, -1].detach().clone()))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    handle.remove()
    a = seen["a"]  # (d_in,)
    steps = 7
    grads = []
    for j in range(1, steps + 1):  # one point at a time, unbatched
        x = (j / steps * a).requires_grad_(True)
        (g,) = torch.autograd.grad(_prob_with(model, site, ids, target, x), x)
        grads.append(g)
    direct = a * torch.stack(grads).mean(0)  # (d_in,)
    got = integrated_gradients(model, site, ids, target, steps)
    torch.testing.assert_close(got, direct, atol=1e-7, rtol=1e-4)
    # Completeness: with many points the attributions add up to P(a) − P(0).
    fine = integrated_gradients(model, site, ids, target, 400)
    with torch.no_grad():
        gap = _prob_with(model, site, ids, target, a) - _prob_with(model, site, ids, target,
                                                                   torch.zeros_like(a))
    assert float(fine.sum()) == pytest.approx(float(gap), rel=0.02, abs=1e-6)


def test_selection_keeps_neurons_above_the_threshold_shared_by_enough_prompts():
    t = torch.tensor
    prompts = [{0: t([1.0, 0.3, 0.1]), 1: t([0.25, 0.0, -2.0])},
               {0: t([0.5, 0.05, 0.4]), 1: t([0.0, 1.0, 0.0])},
               {0: t([-1.0, -1.0, -1.0]), 1: t([-1.0, -1.0, -1.0])}]  # nothing positive
    # threshold 0.2: prompt 0 -> (0,0), (0,1), (1,0); prompt 1 -> (0,0), (0,2), (1,1)
    assert select_neurons(prompts, 0.2, 0.5) == [(0, 0)]  # in 2 of 3 prompts
    assert select_neurons(prompts, 0.2, 0.3) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert select_neurons(prompts[:1], 0.5, 1.0) == [(0, 0)]


def test_the_edit_moves_exactly_the_selected_value_vectors():
    model, tok = tiny_model("gpt2")
    embed = model.get_input_embeddings().weight.detach().clone()  # (vocab, d)
    editor = Editor(model, tok, "kn", progress=False, layers=(1, 2), kn_steps=5,
                    kn_scale=0.5, max_update_ratio=1e9)
    patch = editor.edit(list(TINY_REQUESTS[:2]))
    chosen = patch.metadata["editor_info"][0]["kn_neurons"]  # per request: [layer, neuron]
    assert all(chosen)
    d_out, d_in = patch.deltas[0].delta.matrix().shape
    expected = {layer: torch.zeros(d_out, d_in) for layer in (1, 2)}  # ΔW per layer
    for req, neurons in zip(TINY_REQUESTS[:2], chosen, strict=True):
        new, true = (encode_target(tok, t)[0] for t in (req.target_new, req.target_true))
        for layer, i in neurons:
            expected[layer][:, i] += 0.5 * (embed[new] - embed[true])
    got = {sd.layer: sd.delta.matrix() for sd in patch.deltas}
    assert set(got) == {layer for layer, m in expected.items() if m.any()}
    for layer, delta in got.items():
        torch.testing.assert_close(delta, expected[layer], atol=0, rtol=0)
    patch.revert(model)


def test_patch_round_trip_in_the_conformance_kit(tmp_path):
    report = check_method("kn", toy_arch=None, workdir=tmp_path,
                          tiny_overrides={"kn_steps": 4})
    assert report.passed, str(report)


def test_kn_passes_its_own_toy_world_bars_and_the_report_says_so(tmp_path, stats_dir):
    report = check_method("kn", tiny_types=(), workdir=tmp_path, stats_cache_dir=stats_dir)
    assert report.passed, str(report)
    default = ToyThresholds()
    for metric, bar in KnowledgeNeuronHparams.toy_world_bars.items():
        assert (f"toy world {metric} ≥ {bar:.2f} (method's own; default "
                f"{getattr(default, metric):.2f})") in report.checks()


@pytest.mark.parametrize("build, model_type, reason", [
    (lambda: tiny_model("gemma2"), "gemma2", "passes through 'post_feedforward_layernorm'"),
    (lambda: tiny_seq2seq_model("t5"), "t5", "this model is encoder-decoder"),
])
def test_model_types_without_the_hook_points_are_refused_before_any_work(build, model_type,
                                                                        reason, monkeypatch):
    import massedit.baselines.knowledge_neurons as kn

    model, tok = build()
    calls = []
    monkeypatch.setattr(kn, "integrated_gradients", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match=f"method 'kn' cannot edit model type '{model_type}'") \
            as err:
        Editor(model, tok, "kn", progress=False, layers=(1,))
    assert reason in str(err.value)
    assert not calls


def test_presets_attribute_every_layer_of_the_published_models():
    from importlib import resources

    import yaml

    root = resources.files("massedit") / "presets" / "kn"
    depths = {"gpt2-xl": 48, "gpt-j-6b": 28, "llama-2-7b": 32, "smollm2-135m": 30}
    for name, depth in depths.items():
        hp = KnowledgeNeuronHparams().replace(**yaml.safe_load((root / f"{name}.yaml").read_text()))
        assert hp.layers == tuple(range(depth)) and hp.kn_steps == 20 and hp.kn_share == 0.4
    with pytest.raises(ValueError, match="kn needs"):
        KnowledgeNeuronHparams(kn_share=0)
