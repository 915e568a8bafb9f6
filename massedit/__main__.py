"""``python -m massedit``: the same command line as the ``massedit`` script."""

from massedit.cli import app

app(prog_name="massedit")
