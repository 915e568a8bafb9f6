"""Encoder-decoder models: adapters, pair edits (Raunak & Menezes), sweeps, edit-dropout, BLEU.

The adapters live in :mod:`massedit.models.seq2seq` (registered on import); the rest is
imported from its own module: :mod:`massedit.seq2seq.pair_edit`, :mod:`~massedit.seq2seq.sweep`...
"""

from massedit.models.seq2seq import Seq2SeqAdapter, Site, edit_sites, find_site

__all__ = ["Seq2SeqAdapter", "Site", "edit_sites", "find_site"]
