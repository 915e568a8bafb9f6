"""``massedit sweep``: load, validate, sweep, print the table and write the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from massedit.engine.requests import RequestError


def run_sweep(*, pairs: str, check: str, out: Path, model: str, bleu: str | None,
              stats_corpus: str | None, overrides: dict[str, Any], dtype: str,
              device_map: str | None, console) -> list:
    from rich.table import Table

    from massedit.models.loading import load_model
    from massedit.seq2seq.pair_edit import PairEditor, require_seq2seq
    from massedit.seq2seq.pair_job import split_overrides
    from massedit.seq2seq.pair_keys import tokenize_pair
    from massedit.seq2seq.pairs import load_checks, load_pairs, load_parallel
    from massedit.seq2seq.sweep import best_site, plot_sweep, sweep_sites

    edit_pairs, checks = load_pairs(pairs), load_checks(check)
    held_out = load_parallel(bleu) if bleu else None
    settings, _site, hp = split_overrides(overrides)
    corpus = stats_corpus or bleu
    if not corpus:
        raise RequestError("the sweep needs parallel text for key statistics: give "
                           "--stats-corpus FILE or --bleu FILE")
    loaded, tok = load_model(model, dtype=dtype, device_map=device_map)
    require_seq2seq(loaded)
    for pair in edit_pairs:
        tokenize_pair(tok, pair)  # bad spans fail before any work
    editor = PairEditor(loaded, tok, corpus=corpus, settings=settings, **hp)
    rows = sweep_sites(editor, edit_pairs, checks, bleu_pairs=held_out)
    table = Table(title="pair edit per FF layer")
    for col in ("site", "efficacy %", "BLEU", "|ΔW|/|W|"):
        table.add_column(col)
    for row in rows:
        if row.refused:
            table.add_row(row.site, "refused", "-", "-")
            continue
        table.add_row(row.site, f"{row.efficacy:.0f}",
                      "-" if row.bleu is None else f"{row.bleu:.2f}", f"{row.update_ratio:.4f}")
    console.print(table)
    console.print(f"best site: {best_site(rows)}; plot: {plot_sweep(rows, out)}")
    return rows
