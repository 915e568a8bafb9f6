"""Registered objectives, distributions and methods, plus entry-point plug-ins.

Third-party packages register through the entry-point groups ``massedit.objectives``,
``massedit.distributions`` and ``massedit.methods``. An entry point names the registered object
(an objective or distribution class, a :class:`MethodSpec`) or a module whose import registers it;
its name must be the registered name::

    [project.entry-points."massedit.objectives"]
    null_space = "massedit_alphaedit.objective:NullSpaceObjective"
    [project.entry-points."massedit.methods"]
    alphaedit = "massedit_alphaedit.method:ALPHAEDIT"

Plug-ins load lazily, on the first lookup. Bad registrations (a name that exists, a class missing
a required member, a method naming an unknown objective) raise :class:`RegistrationError` naming
the package; while plug-ins load, that error becomes a warning, the plug-in's registrations are
rolled back, and the built-ins are untouched.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import sys
import warnings
from collections.abc import Iterable
from contextvars import ContextVar
from importlib import metadata, resources
from typing import Any

from massedit.contracts import MethodSpec
from massedit.editing.presets import Preset, load_preset, preset_model_name
from massedit.engine.hparams import EditHparams

logger = logging.getLogger(__name__)

OBJECTIVES: dict[str, type] = {}
DISTRIBUTIONS: dict[str, type] = {}
METHODS: dict[str, MethodSpec] = {}
GROUPS = ("massedit.objectives", "massedit.distributions", "massedit.methods")
_TABLES = {"objective": OBJECTIVES, "distribution": DISTRIBUTIONS, "method": METHODS}
_KIND_OF_GROUP = dict(zip(GROUPS, ("objective", "distribution", "method"), strict=True))
# (kind, name) -> (package if known while loading plug-ins, module that registered it), to name
# the package in conflicts.
_ORIGINS: dict[tuple[str, str], tuple[str | None, str]] = {}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")  # no commas: `--methods memit,alphaedit`
_REQUIRED = {
    "objective": (("name", False), ("solve", True)),
    "distribution": (("name", False), ("layers", True), ("share", True)),
}

# The distribution (package) whose entry point is being imported right now, if any.
_loading_package: ContextVar[str | None] = ContextVar("massedit_loading_package", default=None)
_state = {"plugins_loaded": False}


class RegistrationError(ValueError):
    """A registration that cannot be accepted; the message names the package that made it."""


# ---- who is registering ----------------------------------------------------------------------
def _caller_module(depth: int) -> str:
    return sys._getframe(depth).f_globals.get("__name__", "?")


def package_of(module: str) -> str:
    """The installed distribution that provides ``module`` (its top-level name if none does)."""
    top = module.split(".")[0]
    try:
        found = metadata.packages_distributions().get(top)
    except Exception:  # broken metadata of some other package must not hide our message
        found = None
    return found[0] if found else top


def _registrant(module: str) -> str:
    return _loading_package.get() or package_of(module)


def _fail(kind: str, name: Any, module: str, problem: str) -> None:
    raise RegistrationError(
        f"plug-in package {_registrant(module)!r} (module {module}): {kind} {name!r} {problem}")


# ---- registration ----------------------------------------------------------------------------
def _check_class(kind: str, cls: Any) -> str:
    module = getattr(cls, "__module__", None) or _caller_module(3)
    if not isinstance(cls, type):
        _fail(kind, cls, module, "must be a class (registered with @register_" + kind + ")")
    missing = [m for m, call in _REQUIRED[kind]
               if not hasattr(cls, m) or (call and not callable(getattr(cls, m)))]
    if missing:
        _fail(kind, cls.__qualname__, module,
              f"is missing required member(s): {', '.join(missing)} (see docs/design.md §4 "
              f"contracts)")
    name = cls.name
    if not isinstance(name, str) or not _NAME.match(name):
        _fail(kind, name, module, "has an invalid name: use letters, digits, '_', '-', '.'")
    try:
        inspect.signature(cls).bind()
    except (TypeError, ValueError):
        _fail(kind, name, module, "must be constructible without arguments (the registry "
              "creates it as cls())")
    return module


def register_objective(cls: type) -> type:
    """Class decorator: register an objective (needs ``name`` and ``solve(problem) -> Delta``).

    Optional class attributes declare what the conformance kit checks
    (:mod:`massedit.testing.conformance`): ``exact``, ``normal_equations``,
    ``preserves_corpus_keys``, ``uses_prior_keys``.
    """
    module = _check_class("objective", cls)
    _add("objective", cls.name, cls, module)
    return cls


def register_distribution(cls: type) -> type:
    """Class decorator: register a distribution (needs ``name``, ``layers``, ``share``)."""
    module = _check_class("distribution", cls)
    _add("distribution", cls.name, cls, module)
    return cls


def register_method(spec: MethodSpec) -> MethodSpec:
    """Register a method; its objective and distribution must already be registered."""
    module = _caller_module(2)
    if not isinstance(spec, MethodSpec):
        _fail("method", spec, module, "must be a massedit.editing.registry.MethodSpec")
    if not isinstance(spec.name, str) or not _NAME.match(spec.name):
        _fail("method", spec.name, module, "has an invalid name: use letters, digits, '_', '-'")
    if not (isinstance(spec.hparams, type) and issubclass(spec.hparams, EditHparams)
            and dataclasses.is_dataclass(spec.hparams)):
        _fail("method", spec.name, module,
              f"has hparams {spec.hparams!r}; it must be a dataclass subclass of EditHparams")
    if spec.editor is not None:
        if not callable(spec.editor):
            _fail("method", spec.name, module, "has an editor that is not callable")
    else:
        _ensure_builtins()  # a plug-in imported before any lookup may name built-in parts
        for kind, part in (("objective", spec.objective), ("distribution", spec.distribution)):
            if part not in _TABLES[kind]:
                _fail("method", spec.name, module,
                      f"names unknown {kind} {part!r}; known: {sorted(_TABLES[kind])}")
    _add("method", spec.name, spec, module)
    return spec


def _add(kind: str, name: str, value: Any, module: str) -> None:
    table = _TABLES[kind]
    if name in table and not _same_definition(table[name], value):
        owner = _origin_package(kind, name)
        _fail(kind, name, module, f"is already registered by package {owner!r}; choose another "
              "name")
    table[name] = value
    _ORIGINS[(kind, name)] = (_loading_package.get(), module)


def _origin_package(kind: str, name: str) -> str:
    package, module = _ORIGINS.get((kind, name), (None, "?"))
    return package or package_of(module)


def _same_definition(old: Any, new: Any) -> bool:
    """The same object, an equal MethodSpec, or a class re-defined by the module that defined it
    (a re-run notebook cell, a reloaded module): those replace quietly instead of clashing."""
    if old is new or (isinstance(old, MethodSpec) and old == new):
        return True
    return (isinstance(old, type) and isinstance(new, type)
            and (old.__module__, old.__qualname__) == (new.__module__, new.__qualname__))


# ---- plug-ins --------------------------------------------------------------------------------
def _entry_points(group: str) -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=group)


def _package_of_entry_point(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else package_of(ep.module)


def load_plugins(*, force: bool = False) -> list[str]:
    """Import installed plug-ins' entry points once; a broken one only warns.

    Returns the warnings issued (empty when all loaded). ``force`` loads again (tests, or after
    installing a plug-in into a running process)."""
    if _state["plugins_loaded"] and not force:
        return []
    _state["plugins_loaded"] = True
    _ensure_builtins()
    problems = []
    for group in GROUPS:  # objectives and distributions first: methods name them
        for ep in _entry_points(group):
            package = _package_of_entry_point(ep)
            saved = {kind: dict(table) for kind, table in _TABLES.items()}
            token = _loading_package.set(package)
            try:
                _register_entry_point(_KIND_OF_GROUP[group], ep.name, ep.load())
            except Exception as err:  # a plug-in must never break the built-ins
                for kind, table in _TABLES.items():  # drop whatever it half-registered
                    table.clear()
                    table.update(saved[kind])
                message = (f"massedit plug-in {ep.name!r} ({group}) from package {package!r} "
                           f"failed to load and was skipped: {type(err).__name__}: {err}")
                problems.append(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
            finally:
                _loading_package.reset(token)
    return problems


def _register_entry_point(kind: str, ep_name: str, obj: Any) -> None:
    """Register what an entry point named (if its import did not already) and check its name."""
    table = _TABLES[kind]
    if inspect.ismodule(obj):  # the module's import registers; it must have registered ep_name
        if ep_name not in table:
            _fail(kind, ep_name, obj.__name__, "is named by the entry point, but importing the "
                  "module registered nothing under that name")
        return
    name = getattr(obj, "name", None)
    if name != ep_name:
        _fail(kind, ep_name, getattr(obj, "__module__", "?"),
              f"is the entry point's name, but the object it names is called {name!r}; use "
              "the same name in both places")
    if table.get(name) is obj:
        return  # registered by a decorator when the module was imported
    {"objective": register_objective, "distribution": register_distribution,
     "method": register_method}[kind](obj)


def _ensure_builtins() -> None:
    """Register the built-in objectives, distributions and methods (once). The built-in
    modules do not import the registry, so imports run one way (registry -> parts)."""
    if _state.get("builtins_loaded"):
        return
    _state["builtins_loaded"] = True
    from massedit.algorithms import EqualityObjective, LeastSquaresObjective
    from massedit.distribution import SingleLayer, Spread
    from massedit.editing.methods import BUILTIN_METHODS

    for objective in (EqualityObjective, LeastSquaresObjective):
        register_objective(objective)
    for distribution in (SingleLayer, Spread):
        register_distribution(distribution)
    for spec in BUILTIN_METHODS:
        register_method(spec)


# ---- lookups ---------------------------------------------------------------------------------
def _lookup(kind: str, name: str) -> Any:
    load_plugins()
    table = _TABLES[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known: {sorted(table)} (plug-ins register "
                         f"more through the entry-point group 'massedit.{kind}s')")
    return table[name]


def get_objective(name: str):
    return _lookup("objective", name)()


def get_distribution(name: str):
    return _lookup("distribution", name)()


def get_method(name: str) -> MethodSpec:
    return _lookup("method", name)


def registered_by(kind: str, name: str) -> str:
    """The package that registered ``name`` (``massedit-lm`` for the built-ins)."""
    _lookup(kind, name)
    return _origin_package(kind, name)


# ---- presets of plug-in methods --------------------------------------------------------------
def method_preset(method: str, model, *, spread: bool) -> Preset:
    """The method's hyper-parameters for ``model``, in the method's own hparams class.

    Built-in methods read ``massedit/presets/<method>/``; a plug-in method whose spec names a
    ``presets`` package reads ``<model>.yaml`` there, else its ``default.yaml`` on top of the
    depth-based default layers."""
    spec = get_method(method)
    if spec.presets is None:
        return load_preset(method, model, spread=spread, hparams_class=spec.hparams)
    root = resources.files(spec.presets)
    name = preset_model_name(model)
    if name is not None and (root / f"{name}.yaml").is_file():
        data = _read_yaml(root / f"{name}.yaml")
        hp = spec.hparams().replace(**data)
        return Preset(method, name, hp, source=f"{spec.presets}/{name}.yaml")
    base = load_preset(method, model, spread=spread)  # default layers, and the warning
    data = _read_yaml(root / "default.yaml") if (root / "default.yaml").is_file() else {}
    preset = _as_class(base, spec.hparams, f"{spec.presets}/default.yaml")
    return Preset(method, None, preset.hparams.replace(**data), source=preset.source)


def _as_class(preset: Preset, cls: type, source: str) -> Preset:
    if type(preset.hparams) is cls:
        return preset
    return Preset(preset.method, preset.model, cls(**preset.hparams.to_dict()), source=source)


def _read_yaml(path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def preset_models(method: str) -> list[str]:
    """The models with a preset file for ``method`` (a plug-in's from its presets package)."""
    spec = get_method(method)
    if spec.presets is None:
        from massedit.editing.presets import available_presets

        return available_presets().get(method, [])
    return sorted(p.name[: -len(".yaml")] for p in resources.files(spec.presets).iterdir()
                  if p.name.endswith(".yaml"))


def hparams_class(method: str) -> type:
    """The hyper-parameter class of ``method`` (checks ``--set`` keys before loading a model)."""
    return get_method(method).hparams


__all__ = [
    "DISTRIBUTIONS", "GROUPS", "METHODS", "OBJECTIVES", "MethodSpec", "RegistrationError",
    "get_distribution", "get_method", "get_objective", "hparams_class", "load_plugins",
    "method_preset", "package_of", "preset_models", "registered_by", "register_distribution",
    "register_method", "register_objective",
]
