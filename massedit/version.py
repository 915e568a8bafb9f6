"""The package version, in a module of its own so that any module may read it without a cycle."""

import platform

__version__ = "0.1.0"


def library_versions() -> dict[str, str]:
    """Versions that decide an edit's numbers, recorded in every patch's metadata."""
    import torch
    import transformers

    return {"massedit": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
