"""The package version, in a module of its own so that any module may read it without a cycle."""

import platform

__version__ = "0.1.0"


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions that decide an edit's numbers, recorded in every patch's metadata; ``extra``
    names more installed distributions to record (evaluations add theirs), each as its
    installed version or ``"not installed"``."""
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    out = {"massedit": __version__, "torch": torch.__version__,
           "transformers": transformers.__version__, "python": platform.python_version()}
    for name in extra:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
