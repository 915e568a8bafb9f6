"""The Editor and what it composes: the registry of methods, objectives and distributions,
the built-in methods and the presets (docs/design.md §3–4)."""
