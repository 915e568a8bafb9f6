"""Model adapters (where each architecture keeps its layers and edit sites) and loading.

Importing this package registers every built-in adapter: the decoder-only ones in
:mod:`massedit.models.adapters` and the encoder-decoder ones in :mod:`massedit.models.seq2seq`.
"""

from massedit.models import seq2seq as _seq2seq  # noqa: F401  (registers t5, bart, marian)
from massedit.models.adapters import (
    Layout,
    ModelAdapter,
    get_adapter,
    get_module,
    read_weight,
    register_adapter,
    write_weight,
)

__all__ = ["Layout", "ModelAdapter", "get_adapter", "get_module", "read_weight",
           "register_adapter", "write_weight"]
