"""The ``massedit`` command line: one module per command group, all on one Typer ``app``."""

from massedit.cli import main, seq2seq, stats, stream, study, trace  # noqa: F401  (register commands)
from massedit.cli.common import app

__all__ = ["app"]
