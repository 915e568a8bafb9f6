"""The ``massedit`` command line: one module per command group, all on one Typer ``app``."""

from massedit.cli import (  # noqa: F401  (register commands)
    export,
    main,
    seq2seq,
    stats,
    stream,
    study,
    trace,
    tune,
)
from massedit.cli.common import app

__all__ = ["app"]
