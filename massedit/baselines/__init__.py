"""Baselines of the editing papers as whole-editor methods (docs/design.md §4): FT and FT-L.

They register as built-in methods through :mod:`massedit.editing.methods`; each is a callable
following the ``WholeEditor`` contract of :mod:`massedit.contracts`.
"""
