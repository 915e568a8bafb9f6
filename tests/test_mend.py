"""MEND (massedit/baselines/mend*.py): the hypernetwork saved in the cache reloads to the same
updates bit for bit, training lowers the edit loss, the patch round trip is exact, the gradient
factors are the fine-tuning gradient's, and bad input is refused like other methods'.

Training data is written here in the tiny tokenizer's words (CounterFact's text is not in its
vocabulary), in the shared training file's EasyEdit form."""

from __future__ import annotations

import json
import random
from importlib import resources

import pytest
import torch
import yaml

from massedit import Editor
from massedit.baselines.mend import MendHparams
from massedit.baselines.mend_passes import edited_logits, gradient_factors, target_nll, token_rows
from massedit.baselines.mend_train import (
    cache_path,
    load_network,
    train_network,
    training_records,
    training_settings,
)
from massedit.engine.requests import RequestError
from massedit.models.adapters import get_adapter, get_module, read_weight
from massedit.testing import check_method, tiny_model
from massedit.testing.conformance_edits import KIT_TOY_MODELS, TINY_REQUESTS, ToyThresholds
from massedit.testing.mend_toyworld import MEND_TOY, kit_subjects, write_training_records
from massedit.testing.tiny_seq2seq import tiny_seq2seq_model
from massedit.testing.toyworld import toy_world_model
from tests.conftest import needs_data, shared_data

pytestmark = pytest.mark.usefixtures("one_thread")

SUBJECTS = ("Marie Curie", "Lionel Messi", "Albert Einstein", "Apple", "Microsoft", "Google",
            "Toyota", "Nokia", "Sony", "Big Ben", "Space Needle", "Louvre")
RELATIONS = (("{} works as a", "{} is a", ("chef", "pilot", "doctor", "farmer")),
             ("{} is located in", "{} is in", ("Paris", "Tokyo", "Cairo", "Oslo")),
             ("{} plays", "{} played", ("chess", "tennis", "piano", "hockey")))
# A tiny-model setting: the tiny models' MLP width (3-4 × 16-32) is far below a real model's.
TINY_MEND = dict(layers=(1, 2), mend_rank=16, mend_train_steps=40, mend_lr=1e-3,
                 mend_lr_lr=1e-3, mend_heldout=0, max_update_ratio=1e9)


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    rng = random.Random(0)
    records = []
    for i, subject in enumerate(SUBJECTS * 2):
        prompt, rephrase, targets = RELATIONS[i % len(RELATIONS)]
        other = SUBJECTS[(i + 5) % len(SUBJECTS)]
        records.append({"case_id": i, "prompt": prompt.format(subject), "subject": subject,
                        "target_new": rng.choice(targets),
                        "rephrase_prompt": rephrase.format(subject),
                        "locality_prompt": prompt.format(other)})
    path = tmp_path_factory.mktemp("mend-data") / "train.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MASSEDIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _setup(arch, records_file, **overrides):
    model, tok = tiny_model(arch)
    hp = MendHparams().replace(**{**TINY_MEND, "mend_train_data": str(records_file),
                                  **overrides})
    adapter = get_adapter(model)
    sites = [adapter.site_name(layer) for layer in hp.layers]
    weights = {s: read_weight(get_module(model, s), adapter.layout).detach() for s in sites}
    shape = tuple(next(iter(weights.values())).shape)
    return model, tok, hp, sites, weights, adapter.layout, training_settings(
        model, tok, hp, sites, shape)


def test_the_cached_network_reloads_to_the_same_updates_bit_for_bit(records_file, cache):
    model, tok = tiny_model("llama")
    settings = dict(TINY_MEND, mend_train_data=str(records_file), mend_train_steps=10)
    first = Editor(model, tok, "mend", progress=False, **settings)
    patch = first.edit(list(TINY_REQUESTS))  # trains, caches, edits with the network in memory
    files = list((cache / "mend").rglob("*.safetensors"))
    assert len(files) == 1
    edited = _state(model)
    patch.revert(model)
    # A new editor finds the cached file: its updates equal the in-memory network's exactly.
    again = Editor(model, tok, "mend", progress=False, **settings).edit(list(TINY_REQUESTS))
    assert [sd.site for sd in again.deltas] == [sd.site for sd in patch.deltas]
    for a, b in zip(patch.deltas, again.deltas, strict=True):
        assert torch.equal(a.delta.matrix(), b.delta.matrix())
    assert all(torch.equal(v, edited[k]) for k, v in model.state_dict().items())
    assert list((cache / "mend").rglob("*.safetensors")) == files  # not trained again
    again.revert(model)
    # Another setting is another network, cached beside the first.
    Editor(model, tok, "mend", progress=False, **{**settings, "mend_rank": 8}).edit(
        list(TINY_REQUESTS[:1])).revert(model)
    assert len(list((cache / "mend").rglob("*.safetensors"))) == 2


def test_a_cached_file_of_other_settings_is_not_used(records_file, cache):
    model, tok, hp, sites, weights, layout, settings = _setup("gpt2", records_file,
                                                              mend_train_steps=3)
    net, _ = train_network(model, tok, hp, sites, weights, layout, settings, progress=False)
    from massedit.atomic import write_safetensors_atomic

    path = cache_path(settings)
    write_safetensors_atomic(path, net.state_dict(), metadata={
        "settings": json.dumps({**settings, "mend_rank": 99})})
    assert load_network(path, settings) is None
    write_safetensors_atomic(path, net.state_dict(), metadata={
        "settings": json.dumps(settings, sort_keys=True)})
    loaded = load_network(path, settings)
    x, d = torch.randn(5, weights[sites[0]].shape[1]), torch.randn(5, weights[sites[0]].shape[0])
    for i in range(len(sites)):
        assert torch.equal(loaded.update(x, d, i), net.eval().update(x, d, i))


def _post_edit_nll(model, tok, net, sites, weights, layout) -> float:
    """Mean NLL of each TINY_REQUEST's new target after its own MEND edit (not trained on)."""
    from massedit.baselines.weights import weight_with_delta

    total = 0.0
    for r in TINY_REQUESTS:
        rows = token_rows(tok, [r.text], [r.target_new], "cpu")
        factors, _ = gradient_factors(model, sites, rows)
        with torch.no_grad():
            params = {f"{s}.weight": weight_with_delta(weights[s], net.update(*factors[s], i),
                                                       layout)
                      for i, s in enumerate(sites)}
            total += float(target_nll(edited_logits(model, rows, params), rows))
    return total / len(TINY_REQUESTS)


def test_training_lowers_the_edit_loss(records_file):
    model, tok, hp, sites, weights, layout, settings = _setup("llama", records_file)
    with torch.no_grad():
        rows = token_rows(tok, [r.text for r in TINY_REQUESTS],
                          [r.target_new for r in TINY_REQUESTS], "cpu")
        unedited = float(target_nll(model(**rows.batch).logits, rows))
    short = hp.replace(mend_train_steps=1)
    barely, _ = train_network(model, tok, short, sites, weights, layout,
                              {**settings, "mend_train_steps": 1}, progress=False)
    trained, report = train_network(model, tok, hp, sites, weights, layout, settings,
                                    progress=False)
    nll_barely = _post_edit_nll(model, tok, barely.eval(), sites, weights, layout)
    nll_trained = _post_edit_nll(model, tok, trained.eval(), sites, weights, layout)
    # Measured on edits the network never saw: unedited 5.50, after one training step 5.25,
    # after 40 steps 4.97 (a random 4-layer model: more steps or larger rates reach 4.9).
    assert nll_trained < nll_barely - 0.15, (unedited, nll_barely, nll_trained)
    assert nll_trained < unedited - 0.3
    assert report["last_tenth"]["nll_after"] < report["first_tenth"]["nll_after"]


def test_gradient_factors_are_the_fine_tuning_gradient(records_file):
    model, tok = tiny_model("gpt2")  # Conv1D sites: the factors are in Linear layout
    adapter = get_adapter(model)
    sites = [adapter.site_name(1), adapter.site_name(2)]
    rows = token_rows(tok, [r.text for r in TINY_REQUESTS], [r.target_new for r in TINY_REQUESTS],
                      "cpu")
    factors, _ = gradient_factors(model, sites, rows)
    params = [get_module(model, s).weight for s in sites]
    model.zero_grad()
    target_nll(model(**rows.batch).logits, rows, reduce="sum").backward()  # summed requests
    for site, p in zip(sites, params, strict=True):
        x, d = factors[site]  # (t, d_in), (t, d_out)
        direct = p.grad.T if adapter.layout == "conv1d" else p.grad  # (d_out, d_in)
        torch.testing.assert_close(d.T @ x, direct, rtol=1e-4, atol=1e-6)
    model.zero_grad()


def test_patch_round_trip_in_the_conformance_kit(records_file, cache, tmp_path):
    report = check_method("mend", toy_arch=None, workdir=tmp_path, tiny_overrides={
        **TINY_MEND, "mend_train_data": str(records_file), "mend_train_steps": 5})
    assert report.passed, str(report)


def test_mend_passes_its_own_toy_world_bars_and_the_report_says_so(tmp_path):
    # The toy model and the trained network live in the user cache: about 35 s the first time
    # (training), a few seconds after.
    _, _, world = toy_world_model("gpt2", spec=KIT_TOY_MODELS["gpt2"][0])
    path = write_training_records(world, tmp_path / "mend-toy-train.json")
    trained_on = {r["subject"] for r in json.loads(path.read_text())}
    assert trained_on and not trained_on & kit_subjects(world)  # nothing the kit measures
    report = check_method("mend", tiny_types=(), workdir=tmp_path,
                          overrides={**MEND_TOY, "mend_train_data": str(path)})
    assert report.passed, str(report)
    default = ToyThresholds()
    for metric, bar in MendHparams.toy_world_bars.items():
        assert (f"toy world {metric} ≥ {bar:.2f} (method's own; default "
                f"{getattr(default, metric):.2f})") in report.checks()


def test_bad_input_is_refused_before_any_work(records_file, cache):
    model, tok = tiny_model("gpt2")
    before = _state(model)
    settings = dict(TINY_MEND, mend_train_data=str(records_file))
    rows = [TINY_REQUESTS[0].to_dict(), {"prompt": "The city is in", "subject": "Paris",
                                         "target_new": "Rome"}]
    with pytest.raises(RequestError, match="request 1: field 'prompt'"):  # as memit says it
        Editor(model, tok, "mend", progress=False, **settings).edit(rows)
    assert not (cache / "mend").exists()  # refused before training
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        Editor(model, tok, "mend", mend_rnak=4)
    with pytest.raises(ValueError, match="mend needs"):
        Editor(model, tok, "mend", mend_train_steps=0)
    with pytest.raises(ValueError, match="whole editor.*--objective/--distribution"):
        Editor(model, tok, "mend", objective="equality")
    t5, t5_tok = tiny_seq2seq_model("t5")
    with pytest.raises(ValueError, match="method 'mend' cannot edit model type 't5': .*"
                                         "encoder-decoder"):
        Editor(t5, t5_tok, "mend")
    with pytest.raises(FileNotFoundError, match="no-such-file"):  # named, nothing written
        Editor(model, tok, "mend", progress=False,
               **{**settings, "mend_train_data": "no-such-file"}).edit(list(TINY_REQUESTS))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@needs_data("counterfact/counterfact_train_easyedit.json", "counterfact/counterfact_dev.json")
def test_training_never_sees_the_evaluation_records():
    dev = json.loads((shared_data() / "counterfact/counterfact_dev.json").read_text())
    dev_subjects = {r["requested_rewrite"]["subject"] for r in dev}
    dev_prompts = {r["requested_rewrite"]["prompt"].format(r["requested_rewrite"]["subject"])
                   for r in dev}
    records = training_records("counterfact_easyedit", 10**6, heldout=2000)
    # The shared training file holds all 216 dev records (by case id; 245 records share a
    # subject with one): none is left.
    assert len(records) == 10000 - 245
    assert not {r.subject for r in records} & dev_subjects
    assert not {r.prompt for r in records} & dev_prompts
    everything = training_records("counterfact_easyedit", 10**6, heldout=0)
    assert len(everything) == 10000 and len({r.prompt for r in everything} & dev_prompts) == 216


def test_presets_parse_and_edit_the_last_three_layers():
    root = resources.files("massedit") / "presets" / "mend"
    depths = {"gpt2-xl": 48, "gpt-j-6b": 28, "smollm2-135m": 30}
    for name, depth in depths.items():
        hp = MendHparams().replace(**yaml.safe_load((root / f"{name}.yaml").read_text()))
        assert hp.layers == tuple(range(depth - 3, depth)), name
        assert hp.mend_c_edit == 0.1 and hp.mend_c_loc == 1.0 and hp.context_lengths == ()
