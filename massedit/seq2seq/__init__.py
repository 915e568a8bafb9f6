"""Encoder-decoder models: adapters, pair edits (Raunak & Menezes), sweeps, edit-dropout, BLEU.

Only the adapters are imported here (``massedit.models`` registers them on import); the rest is
imported from its own module: :mod:`massedit.seq2seq.pair_edit`, :mod:`~massedit.seq2seq.sweep`...
"""

from massedit.seq2seq.adapters import Seq2SeqAdapter, Site, edit_sites, find_site

__all__ = ["Seq2SeqAdapter", "Site", "edit_sites", "find_site"]
