"""massedit: closed-form knowledge editing (ROME, MEMIT, EMMET) for transformers."""

__version__ = "0.1.0"

from massedit.editor import EditError, Editor  # noqa: E402
from massedit.loading import load_model  # noqa: E402
from massedit.patch import EditPatch  # noqa: E402
from massedit.requests import EditRequest  # noqa: E402
from massedit.stats import StatsSpec  # noqa: E402

__all__ = ["EditError", "EditPatch", "EditRequest", "Editor", "StatsSpec", "load_model",
           "__version__"]
