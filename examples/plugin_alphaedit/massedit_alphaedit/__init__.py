"""AlphaEdit for massedit, as a plug-in package: ``pip install -e examples/plugin_alphaedit``.

Importing it registers the objective ``null_space`` and the method ``alphaedit``; massedit finds
both through the entry points in this package's ``pyproject.toml`` without any import.
"""

from massedit_alphaedit.method import ALPHAEDIT, AlphaEditHparams
from massedit_alphaedit.objective import NullSpaceObjective, null_space_basis

__all__ = ["ALPHAEDIT", "AlphaEditHparams", "NullSpaceObjective", "null_space_basis"]
