"""Registered objectives, distributions and methods, plus entry-point plug-ins.

Third-party packages register through the entry-point groups ``massedit.objectives``,
``massedit.distributions`` and ``massedit.methods``; each entry point names an object (class or
function) whose import performs the registration or which is registered under its ``name``.
Plug-ins load lazily, on the first lookup; a broken one is reported and skipped.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

logger = logging.getLogger(__name__)

OBJECTIVES: dict[str, type] = {}
DISTRIBUTIONS: dict[str, type] = {}
METHODS: dict[str, MethodSpec] = {}
_GROUPS = {
    "massedit.objectives": OBJECTIVES,
    "massedit.distributions": DISTRIBUTIONS,
    "massedit.methods": METHODS,
}
_plugins_loaded = False


@dataclass(frozen=True)
class MethodSpec:
    """A method: a closed-form composition (objective + distribution) or a whole editor."""

    name: str
    objective: str | None = None
    distribution: str | None = None
    editor: Any = None  # callable (model, tok, requests, hparams) -> EditPatch for other kinds
    description: str = ""


def _check_members(kind: str, cls: type, members: tuple[str, ...]) -> None:
    missing = [m for m in members if not hasattr(cls, m)]
    if missing:
        raise TypeError(f"{kind} {cls!r} is missing required member(s): {', '.join(missing)}")


def register_objective(cls: type) -> type:
    """Class decorator: register an objective (needs ``name`` and ``solve(problem)``)."""
    _check_members("objective", cls, ("name", "solve"))
    _add(OBJECTIVES, "objective", cls.name, cls)
    return cls


def register_distribution(cls: type) -> type:
    """Class decorator: register a distribution (needs ``name``, ``layers``, ``share``)."""
    _check_members("distribution", cls, ("name", "layers", "share"))
    _add(DISTRIBUTIONS, "distribution", cls.name, cls)
    return cls


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.editor is None:
        for kind, table, name in (
            ("objective", OBJECTIVES, spec.objective),
            ("distribution", DISTRIBUTIONS, spec.distribution),
        ):
            if name not in table:
                raise ValueError(f"method {spec.name!r} names unknown {kind} {name!r}")
    _add(METHODS, "method", spec.name, spec)
    return spec


def _add(table: dict, kind: str, name: str, value: Any) -> None:
    if name in table and table[name] is not value:
        raise ValueError(f"{kind} {name!r} is already registered")
    table[name] = value


def load_plugins() -> None:
    """Import the entry points of installed plug-ins once; a broken one only warns."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    _ensure_builtins()
    for group, table in _GROUPS.items():
        for ep in entry_points(group=group):
            package = ep.dist.name if ep.dist is not None else ep.value
            try:
                obj = ep.load()
                if group == "massedit.methods" and isinstance(obj, MethodSpec):
                    if obj.name not in METHODS:
                        register_method(obj)
                elif isinstance(obj, type) and getattr(obj, "name", None) not in table:
                    (register_objective if group == "massedit.objectives"
                     else register_distribution)(obj)
            except Exception as err:  # a plug-in must never break the built-ins
                warnings.warn(
                    f"massedit plug-in {ep.name!r} from package {package!r} failed to load: {err}",
                    stacklevel=2,
                )


def _ensure_builtins() -> None:
    # Importing the packages runs their registrations.
    import massedit.algorithms  # noqa: F401
    import massedit.distribution  # noqa: F401
    import massedit.methods  # noqa: F401


def get_objective(name: str):
    load_plugins()
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]()


def get_distribution(name: str):
    load_plugins()
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; known: {sorted(DISTRIBUTIONS)}")
    return DISTRIBUTIONS[name]()


def get_method(name: str) -> MethodSpec:
    load_plugins()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]
