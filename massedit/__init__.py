"""massedit: closed-form knowledge editing (ROME, MEMIT, EMMET) for transformers."""

from massedit.editing.editor import EditError, Editor
from massedit.engine.patch import EditPatch
from massedit.engine.requests import EditRequest
from massedit.models.loading import load_model
from massedit.stats.moments import StatsSpec
from massedit.version import __version__

__all__ = ["EditError", "EditPatch", "EditRequest", "Editor", "StatsSpec", "load_model",
           "__version__"]
