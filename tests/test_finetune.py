"""FT and FT-L (massedit/baselines/finetune.py): the L∞ bound holds exactly, fine-tuning raises
the new target's probability, the loss it reports is the edited model's, presets parse, and the
patches pass the conformance kit's round trip (save, load, re-apply, revert bit for bit)."""

from __future__ import annotations

from importlib import resources

import pytest
import torch
import yaml

from massedit import Editor
from massedit.baselines.finetune import (
    ConstrainedFineTuneHparams,
    FineTuneHparams,
    linf_radius,
)
from massedit.engine.tokens import encode_target
from massedit.testing import check_method, tiny_model
from massedit.testing.conformance_edits import TINY_REQUESTS

pytestmark = pytest.mark.usefixtures("one_thread")
REQUESTS = list(TINY_REQUESTS)


@torch.no_grad()
def target_nll(model, tok, requests) -> torch.Tensor:
    """Each request's mean NLL of its target tokens after its prompt, one unpadded pass each
    (computed directly, not with the code under test): (n,)."""
    out = []
    for r in requests:
        prompt = tok(r.text)["input_ids"]
        target = encode_target(tok, r.target_new)
        ids = torch.tensor([prompt + target[:-1]])
        logp = model(input_ids=ids).logits[0].log_softmax(-1)  # (len, vocab)
        first = len(prompt) - 1
        out.append(-torch.stack([logp[first + j, t] for j, t in enumerate(target)]).mean())
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ft_l_update_respects_its_linf_bound_exactly(arch):
    model, tok = tiny_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eps = 1e-3
    editor = Editor(model, tok, "ft-l", progress=False, layers=(1, 2), ft_lr=1e-2,
                    ft_steps=8, norm_constraint=eps)
    patch = editor.edit(REQUESTS)
    for sd in patch.deltas:
        d = sd.delta.matrix().double()  # (d_out, d_in)
        assert float(d.abs().max()) <= eps  # exactly, in the patch
        assert float(d.abs().max()) == linf_radius(eps)  # and the bound was binding
        assert sd.delta.info["linf"] <= eps
        name = f"{sd.site}.weight"
        change = (model.state_dict()[name].double() - before[name].double()).abs().max()
        ulp = torch.finfo(torch.float32).eps * float(before[name].abs().max())
        assert float(change) <= eps + ulp  # the written weights: ε plus fp32 rounding of W
    # Unconstrained FT with the same steps moves past ε: the clamp is what held it.
    patch.revert(model)
    free = Editor(model, tok, "ft", progress=False, layers=(1, 2), ft_lr=1e-2, ft_steps=8)
    assert max(float(sd.delta.matrix().abs().max()) for sd in free.edit(REQUESTS).deltas) > eps


def test_ft_raises_the_new_targets_probability_and_reports_the_edited_models_loss():
    model, tok = tiny_model("llama")
    nll_before = target_nll(model, tok, REQUESTS)
    editor = Editor(model, tok, "ft", progress=False, layers=(1,), ft_lr=1e-2, ft_steps=10)
    patch = editor.edit(REQUESTS)
    nll_after = target_nll(model, tok, REQUESTS)
    assert (nll_after < nll_before - 0.05).all(), (nll_before, nll_after)
    info = patch.metadata["editor_info"][0]
    assert info["ft_steps"] == 10
    # The weights training ended on are the weights the patch wrote.
    assert info["ft_loss_last"] == pytest.approx(float(nll_after.mean()), abs=1e-4)
    assert info["ft_loss_first"] == pytest.approx(float(nll_before.mean()), abs=1e-4)
    patch.revert(model)


def test_ft_stops_early_once_the_loss_is_below_its_threshold():
    model, tok = tiny_model("gpt2")
    editor = Editor(model, tok, "ft", progress=False, layers=(1,), ft_stop_loss=100.0)
    patch = editor.edit(REQUESTS[:1])
    assert patch.metadata["editor_info"][0]["ft_steps"] == 0
    assert float(patch.deltas[0].delta.matrix().abs().max()) == 0.0


def test_presets_parse_and_ft_l_needs_a_bound():
    for method, cls in (("ft", FineTuneHparams), ("ft-l", ConstrainedFineTuneHparams)):
        root = resources.files("massedit") / "presets" / method
        files = sorted(p.name for p in root.iterdir() if p.name.endswith(".yaml"))
        assert {"gpt2-xl.yaml", "gpt-j-6b.yaml", "llama-2-7b.yaml",
                "smollm2-135m.yaml"} <= set(files)
        for name in files:
            hp = cls().replace(**yaml.safe_load((root / name).read_text()))
            assert len(hp.layers) == 1 and hp.context_lengths == ()
            assert (hp.norm_constraint > 0) == (method == "ft-l"), name
    with pytest.raises(ValueError, match="ft-l needs norm_constraint > 0"):
        ConstrainedFineTuneHparams().replace(norm_constraint=0)
    model, tok = tiny_model("gpt2")
    with pytest.raises(ValueError, match="ft-l needs norm_constraint > 0"):
        Editor(model, tok, "ft-l", norm_constraint=0)


@pytest.mark.parametrize("method", ["ft", "ft-l"])
def test_patch_round_trip_in_the_conformance_kit(method, tmp_path):
    report = check_method(method, toy_arch=None, workdir=tmp_path,
                          tiny_overrides={"ft_lr": 1e-2, "ft_steps": 3})
    assert report.passed, str(report)
