"""``massedit edit --pairs``: pair edits of an encoder-decoder model, measured before and after.

Writes into ``--out``: ``patch/`` (an EditPatch), ``results.json`` (efficacy on the check
inputs and BLEU on held-out pairs before and after, with the sacrebleu signature, the chosen site
and the sweep) and ``sweep.png`` when the site was chosen by a sweep. Everything is validated
(pairs, their tokenisation, the model type, the options) before any weight changes.

Pair-edit settings come through ``--set``: ``site=encoder.2`` (default ``auto``: sweep every FF
layer, needs ``--check``), ``reduce=mean|last``, ``value=site|stream``, ``edit_dropout=0.3``,
``dropout_rescale=exact|inverse|none``, ``dropout_seed=0``, ``stats_tokens_per_width``,
``sweep_tokens_per_width``, ``max_bleu_drop=2`` (with ``--bleu``, sites that cost more BLEU rank
last in the sweep); any other key is an ``EditHparams`` field (``mu``, ``moment_ridge``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from massedit.engine.requests import RequestError
from massedit.models.loading import DEFAULT_MODEL

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairJobOptions:
    pairs: str
    out: Path
    model: str = DEFAULT_MODEL
    check: str | None = None
    bleu: str | None = None
    objective: str = "equality"
    stats_corpus: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    dtype: str = "float32"
    device_map: str | None = None


def split_overrides(overrides: dict[str, Any]):
    """``(PairSettings, site, EditHparams overrides)`` from ``--set`` values."""
    import yaml

    from massedit.engine.hparams import EditHparams
    from massedit.seq2seq.pair_edit import PairSettings

    defaults = dataclasses.asdict(PairSettings())
    mine, rest, site = {}, {}, "auto"
    for key, value in overrides.items():
        if key == "site":
            site = str(value)
        elif key in defaults:
            parsed = yaml.safe_load(value) if isinstance(value, str) else value
            try:
                mine[key] = type(defaults[key])(parsed)  # the field's type, e.g. "0.3" -> 0.3
            except (TypeError, ValueError) as err:
                raise RequestError(f"--set {key}={value!r}: {err}") from err
        else:
            rest[key] = value
    EditHparams().replace(**rest)  # unknown keys fail here, before any model is loaded
    return PairSettings(**mine), site, rest


def run_pair_edit(opts: PairJobOptions, console) -> int:
    from massedit.jobs.runs import write_json_atomic
    from massedit.models.loading import load_model
    from massedit.seq2seq.pair_edit import PairEditor, require_seq2seq
    from massedit.seq2seq.pair_keys import tokenize_pair
    from massedit.seq2seq.pairs import load_checks, load_pairs, load_parallel
    from massedit.seq2seq.quality import bleu, efficacy
    from massedit.seq2seq.sweep import edit_at_best_site, plot_sweep

    pairs = load_pairs(opts.pairs)
    checks = load_checks(opts.check) if opts.check else []
    held_out = load_parallel(opts.bleu) if opts.bleu else []
    settings, site, hp_overrides = split_overrides(opts.overrides)
    if site == "auto" and not checks:
        raise RequestError("choosing the edit site needs check inputs: give --check FILE, or "
                           "--set site=encoder.N")
    corpus = opts.stats_corpus or opts.bleu
    if not corpus:
        raise RequestError("pair edits need parallel text for key statistics: give "
                           "--stats-corpus FILE (source,reference pairs or sources) or --bleu")
    if opts.out.exists() and any(opts.out.iterdir()):
        raise RequestError(f"{opts.out} exists and is not empty; choose another --out")
    model, tok = load_model(opts.model, dtype=opts.dtype, device_map=opts.device_map)
    require_seq2seq(model)
    problems = []
    for pair in pairs:
        try:
            tokenize_pair(tok, pair)
        except RequestError as err:
            problems.append(str(err))
    if problems:
        raise RequestError(f"{opts.pairs}: " + "; ".join(problems))
    editor = PairEditor(model, tok, corpus=corpus, objective=opts.objective, settings=settings,
                        **hp_overrides)
    before = _measure(model, tok, checks, held_out, efficacy, bleu)
    if site == "auto":
        patch, rows = edit_at_best_site(editor, pairs, checks, bleu_pairs=held_out or None)
    else:
        patch, rows = editor.edit(pairs, site), []
    after = _measure(model, tok, checks, held_out, efficacy, bleu)
    opts.out.mkdir(parents=True, exist_ok=True)
    patch.save(opts.out / "patch")
    results = {"site": patch.metadata["site"], "before": before, "after": after,
               "sweep": [r.__dict__ for r in rows], "settings": dataclasses.asdict(settings),
               "pairs": opts.pairs, "model": opts.model}
    write_json_atomic(opts.out / "results.json", results)
    if rows:
        plot_sweep(rows, opts.out / "sweep.png")
    _render(console, results)
    return 0


def _measure(model, tok, checks, held_out, efficacy, bleu) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if checks:
        eff = efficacy(model, tok, checks)
        out["efficacy"] = eff.rate
        out["outputs"] = eff.outputs
    if held_out:
        score = bleu(model, tok, held_out)
        out["bleu"] = score.score
        out["bleu_signature"] = score.signature
    return out


def _render(console, results: dict[str, Any]) -> None:
    from rich.table import Table

    if results["sweep"]:
        table = Table(title="location sweep")
        for col in ("site", "efficacy %", "BLEU", "|ΔW|/|W|"):
            table.add_column(col)
        for row in results["sweep"]:
            if row.get("refused"):
                table.add_row(row["site"], "refused", "-", "-")
                continue
            table.add_row(row["site"], f"{row['efficacy']:.0f}",
                          "-" if row["bleu"] is None else f"{row['bleu']:.2f}",
                          f"{row['update_ratio']:.4f}")
        console.print(table)
    table = Table(title=f"pair edit at {results['site']}")
    for col in ("", "efficacy %", "BLEU"):
        table.add_column(col)
    for name in ("before", "after"):
        m = results[name]
        table.add_row(name, "-" if "efficacy" not in m else f"{m['efficacy']:.0f}",
                      "-" if "bleu" not in m else f"{m['bleu']:.2f}")
    console.print(table)
    if "bleu_signature" in results["after"]:
        console.print(f"BLEU signature: {results['after']['bleu_signature']}")
