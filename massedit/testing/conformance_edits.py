"""Method conformance (see :mod:`massedit.testing.conformance`): real edits through the Editor.

- tiny models (random, built from configs): two sequential batches, then the patch round trip —
  only the patch's sites changed, save/load, re-apply to a fresh copy bit for bit, refuse an
  already edited model, revert bit for bit;
- the cached toy-world model: 10 facts must flip (efficacy), carry to the other phrasings
  (paraphrase) and leave other subjects' facts alone (locality), and revert must restore it.
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from massedit.baselines.ike import in_context_memory
from massedit.editing.editor import Editor
from massedit.editing.registry import DISTRIBUTIONS, OBJECTIVES, get_method, registered_by
from massedit.engine.patch import EditPatch
from massedit.engine.requests import EditRequest
from massedit.stats.moments import StatsSpec
from massedit.testing.conformance import (
    ConformanceReport,
    check_distribution,
    check_objective,
    default_devices,
    run_check,
)
from massedit.testing.tiny import TINY_WORDS, tiny_model
from massedit.testing.toyworld import (
    TOY_EDIT_LAYERS,
    WIDE_GPT2_EDIT_LAYERS,
    WIDE_GPT2_SPEC,
    TrainSpec,
    recall,
    toy_world_model,
)

logger = logging.getLogger(__name__)

TINY_REQUESTS = (
    EditRequest("The {} is located in", "Eiffel Tower", "Rome", "Paris"),
    EditRequest("{} plays", "Michael Jordan", "football", "basketball"),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditRequest("{} works as a", "Barack Obama", "chef", "politician"),
)
# Random tiny models know nothing: their MLPs output noise far smaller than any target, so the
# updates dwarf the weights (up to 460x ‖W‖ on tiny gemma3_text) and no bound relative to the
# model applies; only the mechanics are checked.
TINY_SETTINGS: dict[str, Any] = dict(
    layers=(1, 2), v_num_grad_steps=4, context_lengths=((2, 4),), stats_tokens_per_width=30,
    max_update_ratio=1e9)
# Hyper-parameters for the toy-world models, as a preset holds them for a real model (λ and the
# number of target steps do not carry over between models, docs/design.md §5): every method gets
# TOY_SETTINGS and the edit layers of KIT_TOY_MODELS, a built-in also its line of TOY_PRESETS; a
# plug-in passes its own as ``overrides``. tests/test_toyworld_edits.py edits with the same.
TOY_SETTINGS: dict[str, Any] = dict(v_num_grad_steps=60)
TOY_PRESETS: dict[str, dict[str, Any]] = {
    "rome": dict(v_num_grad_steps=80),  # its one layer must carry each fact alone
    "memit": dict(mom2_lambda=10.0),  # the toy model's C has another scale than a real model's
}
TOY_BATCH_SIZES: dict[str, int] = {"rome": 1}  # ROME writes one fact at a time
# Which toy model the kit edits per architecture, and at which layers: for gpt2 the wide model,
# whose subjects' keys are distinct enough for batch edits to stay specific (see toyworld.py).
KIT_TOY_MODELS: dict[str, tuple[TrainSpec | None, tuple[int, ...]]] = {
    "gpt2": (WIDE_GPT2_SPEC, WIDE_GPT2_EDIT_LAYERS),
    "llama": (None, TOY_EDIT_LAYERS["llama"]),
}
N_TOY_EDITS = 10  # facts the kit writes: world.requests(10, seed=1), as the acceptance test
N_UNRELATED = 100  # other subjects' facts whose recall must survive the edit


def toy_settings(method: str, arch: str = "gpt2",
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The hyper-parameters the kit edits the toy model of ``arch`` with: its edit layers,
    :data:`TOY_SETTINGS`, the method's line of :data:`TOY_PRESETS`, then ``overrides``."""
    return {"layers": KIT_TOY_MODELS[arch][1], **TOY_SETTINGS, **TOY_PRESETS.get(method, {}),
            **(overrides or {})}


@dataclass(frozen=True)
class ToyThresholds:
    """What a method must reach on the kit's toy-world edit (shares of prompts, 0-1).

    The defaults are what the built-ins meet, with margin: over toy models of training seeds 0,
    1 and 2 (benchmarks/toy_thresholds.py kit) ROME, MEMIT and EMMET flip 0.9-1.0 of the 10 facts
    and of their other phrasings, and keep 0.91-0.97 of the other facts.

    A method that honestly reaches less (the papers' baselines) declares its own bars as
    ``toy_world_bars`` on its hparams class (:func:`declared_bars`); the kit then holds it to
    those and says so in every bar's line of the report, never lowering the defaults silently.
    """

    efficacy: float = 0.8  # edited prompts now give target_new
    paraphrase: float = 0.8  # the other phrasings of the edited facts too
    locality: float = 0.8  # other subjects' facts recalled before are still recalled


TOY_METRICS = ("efficacy", "paraphrase", "locality")


def declared_bars(spec: Any) -> dict[str, float]:
    """The toy-world bars a method declares for itself: ``toy_world_bars``, a class attribute
    (``ClassVar``) of its hparams class mapping some of :data:`TOY_METRICS` to shares 0-1.
    Missing metrics keep the kit's defaults. Refuses unknown names and values outside 0-1."""
    bars = dict(getattr(spec.hparams, "toy_world_bars", None) or {})
    unknown = sorted(set(bars) - set(TOY_METRICS))
    if unknown:
        raise ValueError(f"method {spec.name!r}: toy_world_bars names unknown metric(s) "
                         f"{unknown}; known: {list(TOY_METRICS)}")
    for metric, bar in bars.items():
        if not 0.0 <= float(bar) <= 1.0:
            raise ValueError(f"method {spec.name!r}: toy_world_bars[{metric!r}] = {bar} is "
                             "not a share in [0, 1]")
    return {k: float(v) for k, v in bars.items()}


def toy_bars(spec: Any, thresholds: ToyThresholds | None) -> dict[str, tuple[float, str]]:
    """Each metric's bar and where it comes from: the caller's ``thresholds`` when given
    (``"given by the caller"``), else the method's own declared bar (``"method's own; default
    0.80"``), else the kit's default (``"default"``)."""
    if thresholds is not None:
        return {m: (getattr(thresholds, m), "given by the caller") for m in TOY_METRICS}
    default, own = ToyThresholds(), declared_bars(spec)
    return {m: (own[m], f"method's own; default {getattr(default, m):.2f}") if m in own
            else (getattr(default, m), "default") for m in TOY_METRICS}


def check_method(
    name: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    tiny_overrides: Mapping[str, Any] | None = None,
    tiny_types: Sequence[str] = ("gpt2", "llama"),
    toy_arch: str | None = "gpt2",
    n_edits: int = N_TOY_EDITS,
    batch_size: int | None = None,
    thresholds: ToyThresholds | None = None,
    devices: Sequence[str] | None = None,
    workdir: str | Path | None = None,
    stats_cache_dir: str | Path | None = None,
    raise_on_failure: bool = True,
) -> ConformanceReport:
    """Check a registered method: its objective and distribution, tiny-model edits and the
    patch round trip, and toy-world efficacy/locality.

    ``overrides`` are the method's hyper-parameters for the toy-world model, over
    :func:`toy_settings` (the built-ins need none); ``batch_size`` defaults to
    :data:`TOY_BATCH_SIZES` (else all facts in one batch); ``toy_arch=None`` skips the toy world.
    The toy-world bars are ``thresholds`` when given; otherwise the kit's defaults
    (:class:`ToyThresholds`, which ROME, MEMIT and EMMET pass), except where the method declares
    its own (``toy_world_bars`` on its hparams class, :func:`declared_bars`): each bar's check
    names its origin, e.g. ``toy world efficacy ≥ 0.25 (method's own; default 0.80)``.
    Patches and corpora go to ``workdir`` (a temporary folder by default), key statistics to
    massedit's fingerprinted cache (``stats_cache_dir``, default ``$MASSEDIT_CACHE`` or the user
    cache), so later runs reuse them. About 10 s on a CPU once the toy model and statistics are
    cached, 20 s for ROME (one fact per batch); training the wide toy model the first time takes
    about five minutes on one thread.
    """
    report = ConformanceReport(f"method {name!r}")
    found: list[Any] = []

    def registered() -> str:
        found.append(get_method(name))
        return f"from package {registered_by('method', name)!r}"

    run_check(report, "registered (entry points loaded)", registered)
    if not found:
        return report.raise_for_failures() if raise_on_failure else report
    spec = found[0]
    if spec.editor is None:
        report.include(check_objective(OBJECTIVES[spec.objective], hparams=spec.hparams(),
                                       devices=devices, raise_on_failure=False),
                       f"objective {spec.objective!r}")
        report.include(check_distribution(DISTRIBUTIONS[spec.distribution], devices=devices,
                                          raise_on_failure=False),
                       f"distribution {spec.distribution!r}")
    with tempfile.TemporaryDirectory(prefix="massedit-conformance-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        corpus = _tiny_corpus(root / "tiny.txt")
        runs = [(t, "cpu") for t in tiny_types]
        runs += [(tiny_types[-1], d) for d in (devices or default_devices()) if d != "cpu"]
        for model_type, device in runs:
            def tiny(model_type=model_type, device=device) -> str:
                return _tiny_round_trip(name, model_type, device, corpus, root, stats_cache_dir,
                                        {**TINY_SETTINGS, **(tiny_overrides or {})})

            run_check(report, f"tiny {model_type} on {device}: two sequential batches, patch "
                      "save/load/apply/revert", tiny)
        if toy_arch is not None:
            if batch_size is None:
                batch_size = TOY_BATCH_SIZES.get(name)
            bars: dict[str, tuple[float, str]] = {}

            def read_bars() -> str:  # a malformed declaration is a failed check, not a crash
                bars.update(toy_bars(spec, thresholds))
                return _describe_bars(name, bars)

            run_check(report, "toy world bars", read_bars)
            if bars:
                _toy_world_checks(report, name, toy_arch, n_edits, batch_size,
                                  dict(overrides or {}), bars, root, stats_cache_dir)
    return report.raise_for_failures() if raise_on_failure else report


def _tiny_corpus(path: Path) -> Path:
    """Random sentences over the tiny vocabulary, so the keys span every direction."""
    rng = random.Random(0)
    words = list(TINY_WORDS)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) + " ."
             for _ in range(600)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(lines))
    return path


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the parameters that differ (bitwise) from ``state``."""
    return [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]


def _tiny_round_trip(method: str, model_type: str, device: str, corpus: Path, root: Path,
                     stats_cache_dir: str | Path | None, settings: Mapping[str, Any]) -> str:
    model, tok = tiny_model(model_type)
    fresh, _ = tiny_model(model_type)
    model.to(device)
    original = _state(model)
    stats = StatsSpec(corpus=str(corpus), cache_dir=_str(stats_cache_dir))
    editor = Editor(model, tok, method=method, stats=stats, progress=False, **settings)
    patch = editor.edit(list(TINY_REQUESTS), batch_size=2)
    assert patch.metadata.get("method") == method, "the patch does not record its method"
    if in_context_memory(patch) is not None:  # IKE: the edit is in the prompt, not the weights
        return _in_context_round_trip(model, tok, patch, original, root / f"patch-{method}-"
                                      f"{model_type}-{device}")
    changed = _same(model, original)
    assert changed, "the edit changed no weight"
    outside = [k for k in changed if k.rsplit(".", 1)[0] not in patch.sites]
    assert not outside, f"weights outside the patch's sites changed: {outside}"
    edited = _state(model)
    loaded = EditPatch.load(patch.save(root / f"patch-{method}-{model_type}-{device}"))
    fresh.to(device)
    loaded.apply(fresh)
    differ = _same(fresh, edited)
    assert not differ, f"a saved patch re-applied to a fresh base model differs at {differ}"
    try:
        loaded.apply(model)
    except ValueError:
        pass
    else:
        raise AssertionError("applying the patch to an already edited model was not refused")
    patch.revert(model)
    differ = _same(model, original)
    assert not differ, f"revert did not restore {differ} bit for bit"
    layers = sorted({sd.layer for sd in patch.deltas})
    return f"{len(patch.deltas)} updates at layers {layers}"


def _describe_bars(method: str, bars: Mapping[str, tuple[float, str]]) -> str:
    """Where the bars come from, e.g. ``ft: toy efficacy bar 0.25 (method's own; default
    0.80)`` for each bar that is not the kit's default; ``"the kit's defaults"`` otherwise."""
    special = [f"{method}: toy {m} bar {bar:.2f} ({origin})"
               for m, (bar, origin) in bars.items() if origin != "default"]
    if special:
        logger.info("%s", "; ".join(special))
    return "; ".join(special) or "the kit's defaults"


def _in_context_round_trip(model, tok, patch: EditPatch, original: Mapping[str, torch.Tensor],
                           folder: Path) -> str:
    """An in-context patch (massedit.baselines.ike): no weight changed, bit for bit; its memory
    holds every request, survives save/load, and gives each request's prompt a context."""
    differ = _same(model, original)
    assert not differ, f"an in-context edit changed weights: {differ}"
    memory = in_context_memory(patch)
    statements = [f"{r.text} {r.target_new}" for r in TINY_REQUESTS]
    assert [f.statement for f in memory.facts] == statements, "the memory lost requests"
    loaded = EditPatch.load(patch.save(folder))
    assert in_context_memory(loaded) == memory, "the memory changed through save/load"
    assert not loaded.deltas, "an in-context patch holds weight deltas"
    shown = memory.prepend(model, tok, [r.text for r in TINY_REQUESTS])
    for text, req in zip(shown, TINY_REQUESTS, strict=True):
        assert text.endswith(f"\nPrompt: {req.text}"), f"no context before {req.text!r}"
        assert any(f"New Fact: {s}\nPrompt: {req.text}" in text for s in statements)
    patch.revert(model)
    differ = _same(model, original)
    assert not differ, f"revert changed {differ}"
    return f"no weight changed; {len(memory.facts)} facts in context, save/load kept them"


def _toy_world_checks(report: ConformanceReport, method: str, arch: str, n_edits: int,
                      batch_size: int | None, overrides: dict[str, Any],
                      bars: Mapping[str, tuple[float, str]], root: Path,
                      stats_cache_dir: str | Path | None) -> None:
    measured: dict[str, float] = {}

    def edit() -> str:
        measured.update(toy_world_edit(method, arch, n_edits, batch_size, overrides, root,
                                       stats_cache_dir=stats_cache_dir))
        return ", ".join(f"{k} {v:.2f}" for k, v in measured.items())

    run_check(report, f"toy world ({arch}, {n_edits} facts): edit, measure, revert bit for bit",
              edit)
    report.measures.update(measured)
    for metric, (floor, origin) in bars.items():
        def at_least(metric=metric, floor=floor) -> str:
            assert metric in measured, "not measured (the edit failed)"
            assert measured[metric] >= floor, f"{metric} {measured[metric]:.2f} < {floor:.2f}"
            return f"{measured[metric]:.2f}"

        where = "" if origin in ("default", "given by the caller") else f" ({origin})"
        run_check(report, f"toy world {metric} ≥ {floor:.2f}{where}", at_least)


def toy_world_edit(method: str, arch: str = "gpt2", n_edits: int = N_TOY_EDITS,
                   batch_size: int | None = None, overrides: Mapping[str, Any] | None = None,
                   workdir: str | Path | None = None, *, stats_cache_dir: str | Path | None = None,
                   seed: int = 1, train_seed: int | None = None) -> dict[str, float]:
    """Edit ``n_edits`` toy-world facts with ``method``, measure, revert; returns efficacy,
    paraphrase and locality (shares, 0-1). Raises if revert is not bit-exact. The settings are
    :func:`toy_settings` with ``overrides``; ``batch_size=None`` writes all facts in one batch.
    ``seed`` draws the facts; ``train_seed`` picks another independently trained toy model (the
    kit's own is that of the default)."""
    spec, _ = KIT_TOY_MODELS[arch]
    model, tok, world = toy_world_model(arch, spec=spec, train_seed=train_seed)
    with tempfile.TemporaryDirectory(prefix="massedit-toy-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        corpus = root / f"toyworld-{arch}.txt"
        corpus.parent.mkdir(parents=True, exist_ok=True)
        corpus.write_text(world.corpus_text())
        requests = world.requests(n_edits, seed=seed)
        edited = {r.subject for r in requests}
        others = [f for f in world.facts if f["subject"] not in edited][:N_UNRELATED]
        other_prompts = [f["templates"][0].format(f["subject"]) for f in others]
        other_answers = [f["object"] for f in others]
        with torch.no_grad():
            known = recall(model, tok, other_prompts, other_answers)[0]  # (N_UNRELATED,) bool
        original = _state(model)
        settings = toy_settings(method, arch, overrides)
        stats = StatsSpec(corpus=str(corpus), cache_dir=_str(stats_cache_dir))
        editor = Editor(model, tok, method=method, stats=stats, progress=False, **settings)
        patch = editor.edit(requests, batch_size=batch_size)
        try:
            with torch.no_grad():
                efficacy = recall(model, tok, [r.text for r in requests],
                                  [r.target_new for r in requests])[0]
                para = [(p, r.target_new) for r in requests for p in r.paraphrases]
                paraphrase = recall(model, tok, [p for p, _ in para], [a for _, a in para])[0]
                kept = recall(model, tok, other_prompts, other_answers)[0]
        finally:
            patch.revert(model)
    differ = _same(model, original)
    assert not differ, f"revert did not restore {differ} bit for bit"
    return {"efficacy": efficacy.float().mean().item(),
            "paraphrase": paraphrase.float().mean().item(),
            "locality": (kept & known).sum().item() / max(int(known.sum()), 1)}
