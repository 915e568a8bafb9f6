"""Presets of the ``alphaedit`` method: ``<model>.yaml`` (numbers only) and ``default.yaml``."""
