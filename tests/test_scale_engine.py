"""The scale engine (issue 15): chunked keys and accumulated products, batches the objective
cannot solve refused before any work, prior keys as one (d_in, d_in) product, a cheap identity of
the weights, and targets kept on disk (docs/design.md §3, §5, §11, §12)."""

from __future__ import annotations

import logging

import pytest
import torch

import massedit.editing.editor as editor_module
from massedit import EditError, Editor, EditRequest, StatsSpec
from massedit.engine.hparams import EditHparams
from massedit.engine.identity import apply_patch, weights_identity
from massedit.engine.linalg import SingularProblemError, equality_factors, gram_products
from massedit.engine.problem import LayerProblem
from massedit.models.adapters import get_adapter, get_module, read_weight
from massedit.targets.store import TargetStore
from massedit.testing import tiny_model
from massedit.testing.conformance import synthetic_problem

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

# Random tiny models need large updates; the safety limit is tested elsewhere. Three prefixes
# per request and batch_rows = 3: every chunk of requests is a whole number of forward batches.
FAST = dict(v_num_grad_steps=3, context_lengths=((2, 4),), stats_tokens_per_width=30,
            max_update_ratio=1e9, batch_rows=3)
PLACES = ["Paris", "Rome", "London", "Berlin", "Madrid", "Tokyo", "Moscow", "Beijing", "Cairo",
          "Athens", "Vienna", "Dublin", "Lisbon", "Oslo"]
COUNTRIES = ["France", "Italy", "England", "Germany", "Spain", "Japan", "Russia", "China",
             "Egypt", "Greece", "Austria", "Ireland", "Portugal", "Norway", "Canada", "Brazil",
             "India", "Mexico", "Sweden", "Finland", "Poland"]


def many_requests(n: int) -> list[EditRequest]:
    """``n`` requests about different subjects (so no two share a key)."""
    subjects = [("The capital city of {} is", c, PLACES) for c in COUNTRIES] + [
        ("{} is located in", p, COUNTRIES) for p in PLACES]
    assert n <= len(subjects)
    return [EditRequest(prompt, subject, targets[(i * 5 + 3) % len(targets)],
                        case_id=f"r{i}") for i, (prompt, subject, targets) in
            enumerate(subjects[:n])]


def _editor(model, tok, corpus, stats_dir, method, **kw) -> Editor:
    stats = StatsSpec(corpus=str(corpus), cache_dir=str(stats_dir))
    return Editor(model, tok, method=method, stats=stats, keep_problems=True, progress=False,
                  **{**FAST, **kw})


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---- 1. chunked keys and accumulated products ------------------------------------------------
def test_products_accumulated_in_chunks_equal_the_direct_ones():
    g = torch.Generator().manual_seed(0)
    keys, residual = torch.randn(20, 37, generator=g), torch.randn(12, 37, generator=g)
    k, r = keys.double(), residual.double()
    for chunk in (1, 5, 37, 100):
        kk, rk = gram_products(keys, residual, chunk=chunk)
        assert kk.dtype == rk.dtype == torch.float64 and torch.equal(kk, kk.T)
        assert _rel(kk, k @ k.T) < 1e-12 and _rel(rk, r @ k.T) < 1e-12


@pytest.mark.parametrize("n_keys", [3, 15])  # factors (n < min(d_out, d_in) / 2) and dense ΔW
def test_least_squares_from_products_equals_the_closed_form(n_keys):
    from massedit.algorithms import LeastSquaresObjective

    hp = EditHparams(mom2_lambda=2.0)
    base = synthetic_problem(hp)  # W (12, 20)
    g = torch.Generator().manual_seed(1)
    problem = LayerProblem(base.weight, torch.randn(20, n_keys, generator=g),
                           torch.randn(12, n_keys, generator=g), base.moment, hp)
    delta = LeastSquaresObjective().solve(problem)
    assert (delta.dense is None) == (n_keys < 6)
    k, r = problem.keys.double(), problem.residual.double()
    a = 2.0 * base.moment.regularised(hp.moment_ridge) + k @ k.T
    closed = torch.linalg.solve(a, (r @ k.T).T).T  # ΔW = R Kᵀ A⁻¹, A symmetric
    ours = delta.dense if delta.dense is not None else delta.u @ delta.v.T
    assert _rel(ours, closed) < 1e-8


@pytest.mark.parametrize("method", ["memit", "emmet"])
def test_keys_read_in_chunks_give_the_update_of_reading_them_at_once(method, tiny_corpus,
                                                                    stats_dir):
    model, tok = tiny_model("gpt2")
    reqs = many_requests(20)  # ≥ min(d_out, d_in) / 2 = 16: MEMIT's dense path from products
    cache: dict = {}  # the same targets for both editors
    whole = _editor(model, tok, tiny_corpus, stats_dir, method, layers=(1, 2),
                    target_cache=cache, mu=1.0)
    patch = whole.edit(reqs)
    patch.revert(model)
    chunked = _editor(model, tok, tiny_corpus, stats_dir, method, layers=(1, 2),
                      target_cache=cache, key_chunk=3, mu=1.0)
    chunked.edit(reqs)
    assert len(whole.solved) == len(chunked.solved) == 2
    for (p1, d1), (p2, d2) in zip(whole.solved, chunked.solved, strict=True):
        assert p1.keys.shape == p2.keys.shape == (p1.weight.shape[1], 20)
        assert _rel(p2.keys, p1.keys) < 1e-8 and _rel(p2.residual, p1.residual) < 1e-8
        assert _rel(d2.matrix(), d1.matrix()) < 1e-8
    if method == "memit":
        assert all(d.dense is not None for _, d in whole.solved)  # solved from R Kᵀ, K Kᵀ


# ---- 2. batches the objective cannot solve -----------------------------------------------------
def _no_work(monkeypatch):
    """Statistics or targets would be work: make either one fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the batch was refused")

    monkeypatch.setattr(editor_module, "get_moments", refuse)
    monkeypatch.setattr(editor_module, "compute_targets", refuse)


def test_emmet_with_more_keys_than_the_site_width_is_refused_before_any_work(
        monkeypatch, tiny_corpus, stats_dir):
    model, tok = tiny_model("gpt2", width=4)  # MLP width d_in = 16
    d_in = read_weight(get_module(model, "transformer.h.1.mlp.c_proj"), "conv1d").shape[1]
    reqs = many_requests(d_in + 1)
    _no_work(monkeypatch)
    editor = _editor(model, tok, tiny_corpus, stats_dir, "emmet", layers=(1,), mu=0.0)
    with pytest.raises(EditError) as caught:
        editor.edit(reqs)
    message = str(caught.value)
    assert f"{d_in + 1} keys" in message and f"d_in = {d_in}" in message
    assert "mu > 0" in message and f"batch size of at most {d_in}" in message
    editor.check_batches(reqs, batch_size=d_in)  # batches of d_in keys are fine


def test_emmet_with_more_keys_than_the_site_width_and_mu_proceeds(monkeypatch, tiny_corpus,
                                                                  stats_dir):
    model, tok = tiny_model("gpt2", width=4)
    d_in = read_weight(get_module(model, "transformer.h.1.mlp.c_proj"), "conv1d").shape[1]
    editor = _editor(model, tok, tiny_corpus, stats_dir, "emmet", layers=(1,), mu=1.0)
    patch = editor.edit(many_requests(d_in + 2))
    (problem, delta), = editor.solved
    assert problem.keys.shape == (d_in, d_in + 2)
    assert torch.isfinite(delta.matrix()).all() and float(delta.matrix().norm()) > 0
    patch.revert(model)


def test_requests_sharing_a_key_are_refused_by_emmet_before_any_work(monkeypatch, tiny_corpus,
                                                                     stats_dir):
    model, tok = tiny_model("gpt2")
    reqs = [EditRequest("{} plays", "Michael Jordan", "tennis", case_id="a"),
            EditRequest("{} works as a", "Michael Jordan", "chef", case_id="b"),
            EditRequest("The {} is located in", "Eiffel Tower", "Rome", case_id="c")]
    _no_work(monkeypatch)
    editor = _editor(model, tok, tiny_corpus, stats_dir, "emmet", layers=(1,), mu=0.0)
    with pytest.raises(EditError, match="share a key.*: a, b;"):
        editor.edit(reqs)
    editor.check_batches(reqs, batch_size=1)  # in different batches they are fine
    memit = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1,))
    memit.check_batches(reqs)  # least squares writes them (in least squares)


def test_a_singular_batch_stops_before_its_layer_writes_and_says_why(tiny_corpus, stats_dir):
    model, tok = tiny_model("gpt2")
    reqs = [EditRequest("{} plays", "Michael Jordan", "tennis"),
            EditRequest("{} works as a", "Michael Jordan", "chef")]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor = _editor(model, tok, tiny_corpus, stats_dir, "emmet", layers=(1, 2), mu=0.0)
    editor.objective.check_batch = lambda plan: None  # as if the check had not seen it
    with pytest.raises(EditError, match=r"layer 1 .* cannot be solved: .* linearly dependent"):
        editor.edit(reqs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(SingularProblemError, match="8 equality constraints .* width 5"):
        equality_factors(torch.ones(3, 8), torch.randn(5, 8), torch.eye(5, dtype=torch.float64),
                         0.0)


# ---- 3. prior keys as a product ---------------------------------------------------------------
def test_prior_moment_gives_the_alphaedit_update_of_the_raw_prior_keys():
    from massedit_alphaedit import AlphaEditHparams, NullSpaceObjective

    hp = AlphaEditHparams(null_space_threshold=0.5, null_space_l2=0.3)
    raw = synthetic_problem(hp, corpus_rank=8, n_prior=30)  # (d_in, 30) raw keys
    kp = raw.prior_keys
    moment = LayerProblem(raw.weight, raw.keys, raw.residual, raw.moment, hp, raw.layer,
                          prior_moment=gram_products(kp)[0])  # (d_in, d_in)
    a, b = NullSpaceObjective().solve(raw), NullSpaceObjective().solve(moment)
    assert _rel(b.u @ b.v.T, a.u @ a.v.T) < 1e-10
    free = NullSpaceObjective().solve(LayerProblem(raw.weight, raw.keys, raw.residual,
                                                   raw.moment, hp, raw.layer))
    assert _rel(free.u @ free.v.T, a.u @ a.v.T) > 1e-3  # the prior keys do matter


def test_sequential_state_stays_one_product_per_layer_and_reads_old_checkpoints():
    model, tok = tiny_model("gpt2")
    editor = Editor(model, tok, "alphaedit", progress=False, layers=(1,))
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(128, 7, generator=g)  # an old checkpoint: raw keys of 7 facts
    editor.restore_sequential_state({"prior_keys.1": keys})
    state = editor.sequential_state()
    assert list(state) == ["prior_moment.1"] and state["prior_moment.1"].shape == (128, 128)
    assert _rel(state["prior_moment.1"], keys.double() @ keys.double().T) < 1e-12
    editor.restore_sequential_state(state)
    assert torch.equal(editor.sequential_state()["prior_moment.1"], state["prior_moment.1"])


# ---- 4. the weights' identity ------------------------------------------------------------------
def test_weights_identity_is_remembered_chained_through_edits_and_replayed_on_resume(
        monkeypatch, tiny_corpus, stats_dir):
    import massedit.engine.identity as identity

    model, tok = tiny_model("llama")
    base = weights_identity(model)
    assert base == weights_identity(model, memo=False)  # unedited: the content hashes
    hashed: list[int] = []
    real = identity.content_identity
    monkeypatch.setattr(identity, "content_identity", lambda p: hashed.append(1) or real(p))
    assert weights_identity(model) == base and hashed == []  # remembered: nothing hashed

    editor = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1, 2))
    patch = editor.edit(many_requests(2))
    edited = weights_identity(model)
    assert edited != base and hashed == []  # chained from the updates, no weight hashed
    fresh, _ = tiny_model("llama")
    apply_patch(patch, fresh)  # a resumed run: the same weights get the same name
    assert weights_identity(fresh) == edited
    assert weights_identity(fresh, memo=False) == weights_identity(model, memo=False)

    site = get_module(model, get_adapter(model).site_name(3)).weight
    kept = site.detach().clone()
    hashed.clear()
    with torch.no_grad():
        site.add_(1.0)  # a write massedit did not make: the version moves, the hash is taken
    assert weights_identity(model) not in (edited, base) and len(hashed) == 1
    with torch.no_grad():
        site.copy_(kept)
    patch.revert(model)
    assert weights_identity(model) == base  # the same bytes: the same name again


# ---- 5. targets on disk -----------------------------------------------------------------------
def _counted_targets(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = editor_module.compute_targets

    def counted(model, tok, requests, *args, **kwargs):
        calls.append(len(requests))
        return real(model, tok, requests, *args, **kwargs)

    monkeypatch.setattr(editor_module, "compute_targets", counted)
    return calls


def test_a_target_on_disk_is_read_not_recomputed_by_another_editor(monkeypatch, tmp_path,
                                                                   tiny_corpus, stats_dir):
    calls = _counted_targets(monkeypatch)
    reqs = many_requests(3)
    model, tok = tiny_model("gpt2")
    first = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1,),
                    target_store=tmp_path / "targets")
    block = "transformer.h.1"
    made = first._targets(reqs[:2], first.prefixes(), block)
    assert sum(calls) == 2 and len(list((tmp_path / "targets").rglob("*.safetensors"))) == 2
    # Another process in effect: a new model object, a new editor, an empty in-memory cache.
    model2, tok2 = tiny_model("gpt2")
    second = _editor(model2, tok2, tiny_corpus, stats_dir, "memit", layers=(1,),
                     target_store=TargetStore(tmp_path / "targets"))
    read = second._targets(reqs, second.prefixes(), block)
    assert calls == [2, 1]  # one call over the missing ones, then the new one
    assert torch.equal(read.z[:2], made.z) and torch.equal(read.nll[:2], made.nll)
    assert len(second.target_cache) == 3  # the first level holds them now
    # Other target settings are other targets.
    other = _editor(model2, tok2, tiny_corpus, stats_dir, "memit", layers=(1,),
                    target_store=tmp_path / "targets", v_lr=0.1)
    other._targets(reqs[:1], other.prefixes(), block)
    assert calls == [2, 1, 1]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupt_target_file_is_reported_and_recomputed(damage, monkeypatch, tmp_path, caplog,
                                                          tiny_corpus, stats_dir):
    calls = _counted_targets(monkeypatch)
    reqs = many_requests(1)
    model, tok = tiny_model("gpt2")
    editor = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1,),
                     target_store=tmp_path)
    good = editor._targets(reqs, editor.prefixes(), "transformer.h.1")
    (path,) = tmp_path.rglob("*.safetensors")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF  # inside the last tensor's bytes
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    fresh = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1,),
                    target_store=tmp_path)
    with caplog.at_level(logging.WARNING, logger="massedit.targets.store"):
        again = fresh._targets(reqs, fresh.prefixes(), "transformer.h.1")
    assert calls == [1, 1]  # recomputed
    assert "recomputing" in caplog.text and str(path) in caplog.text
    assert torch.equal(again.z, good.z)
    assert TargetStore(tmp_path).get(path.stem) is not None  # and stored intact again


def test_an_interrupted_target_pass_keeps_the_groups_it_finished(monkeypatch, tmp_path,
                                                                tiny_corpus, stats_dir):
    """Groups are stored as they finish: a failure in the second group leaves the first on
    disk, and the next editor computes only what is missing."""
    real = editor_module.compute_targets

    def failing_after_one_group(model, tok, requests, *args, on_group_done, **kwargs):
        def keep_then_fail(idx, part):
            on_group_done(idx, part)
            raise RuntimeError("stopped")

        return real(model, tok, requests, *args, on_group_done=keep_then_fail, **kwargs)

    monkeypatch.setattr(editor_module, "compute_targets", failing_after_one_group)
    reqs = many_requests(3)
    model, tok = tiny_model("gpt2")
    editor = _editor(model, tok, tiny_corpus, stats_dir, "memit", layers=(1,),
                     target_store=tmp_path / "targets")
    with pytest.raises(RuntimeError, match="stopped"):
        editor._targets(reqs, editor.prefixes(), "transformer.h.1")
    assert len(list((tmp_path / "targets").rglob("*.safetensors"))) == 1
    monkeypatch.setattr(editor_module, "compute_targets", real)
    calls = _counted_targets(monkeypatch)
    fresh = _editor(*tiny_model("gpt2"), tiny_corpus, stats_dir, "memit", layers=(1,),
                    target_store=tmp_path / "targets")
    fresh._targets(reqs, fresh.prefixes(), "transformer.h.1")
    assert calls == [2]
