"""The registry: clear registration errors that name the package, entry-point plug-ins loaded
lazily, and broken plug-ins that warn without breaking the built-ins (issue 8)."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from massedit.editing import registry
from massedit.editing.registry import (
    DISTRIBUTIONS,
    METHODS,
    OBJECTIVES,
    MethodSpec,
    RegistrationError,
    get_method,
    get_objective,
    load_plugins,
    register_distribution,
    register_method,
    register_objective,
)


@pytest.fixture
def clean_registry(monkeypatch):
    """Registrations made by a test are forgotten afterwards, and plug-ins load afresh."""
    load_plugins()  # the real ones, so that the snapshot holds them
    saved = {k: dict(t) for k, t in registry._TABLES.items()}
    origins = dict(registry._ORIGINS)
    monkeypatch.setitem(registry._state, "plugins_loaded", False)
    yield
    for kind, table in registry._TABLES.items():
        table.clear()
        table.update(saved[kind])
    registry._ORIGINS.clear()
    registry._ORIGINS.update(origins)


def make_plugin(root: Path, dist: str, module: str, source: str, entry_points: str) -> None:
    """An installed distribution ``dist`` (dist-info on sys.path) providing ``module``."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    (info / "top_level.txt").write_text(module + "\n")


@pytest.fixture
def plugins(tmp_path, monkeypatch, clean_registry):
    """A folder on sys.path for fake plug-in distributions; their modules are unloaded after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("plug_"):
            del sys.modules[name]


# ---- registering in code ---------------------------------------------------------------------
def test_a_name_that_exists_is_refused_naming_both_packages(clean_registry):
    class Impostor:
        name = "equality"

        def solve(self, problem):
            return None

    with pytest.raises(RegistrationError) as err:
        register_objective(Impostor)
    message = str(err.value)
    assert "'equality' is already registered by package 'massedit-lm'" in message
    assert "plug-in package 'tests'" in message  # this module's top-level package
    assert OBJECTIVES["equality"] is not Impostor
    with pytest.raises(RegistrationError, match="method 'memit' is already registered"):
        register_method(MethodSpec("memit", "equality", "spread"))
    assert get_method("memit").objective == "least_squares"


def test_missing_members_invalid_names_and_constructors_are_refused(clean_registry):
    class NoSolve:
        name = "no_solve"

    class NoShare:
        name = "no_share"

        def layers(self, preset_layers):
            return preset_layers

    class BadName:
        name = "two words"

        def solve(self, problem):
            return None

    class NeedsArguments:
        name = "needs_args"

        def __init__(self, scale):
            self.scale = scale

        def solve(self, problem):
            return None

    with pytest.raises(RegistrationError, match=r"missing required member\(s\): solve"):
        register_objective(NoSolve)
    with pytest.raises(RegistrationError, match=r"missing required member\(s\): share"):
        register_distribution(NoShare)
    with pytest.raises(RegistrationError, match="invalid name"):
        register_objective(BadName)
    with pytest.raises(RegistrationError, match="constructible without arguments"):
        register_objective(NeedsArguments)
    with pytest.raises(RegistrationError, match="must be a class"):
        register_objective(NoSolve())
    for name in ("no_solve", "two words", "needs_args"):
        assert name not in OBJECTIVES
    assert "no_share" not in DISTRIBUTIONS


def test_a_method_naming_an_unknown_part_is_refused(clean_registry):
    with pytest.raises(RegistrationError, match="names unknown objective 'nope'") as err:
        register_method(MethodSpec("m1", "nope", "spread"))
    assert "'equality'" in str(err.value)  # lists what is known
    with pytest.raises(RegistrationError, match="names unknown distribution 'nowhere'"):
        register_method(MethodSpec("m2", "equality", "nowhere"))
    with pytest.raises(RegistrationError, match="dataclass subclass of EditHparams"):
        register_method(MethodSpec("m3", "equality", "spread", hparams=dict))
    assert not {"m1", "m2", "m3"} & set(METHODS)


def test_redefining_a_class_in_the_same_module_replaces_it(clean_registry):
    # A re-run notebook cell or a reloaded module defines the class again: not a clash.
    def define():
        class Twice:
            name = "twice"

            def solve(self, problem):
                return None

        return Twice

    first, second = define(), define()
    register_objective(first)
    register_objective(second)
    assert OBJECTIVES["twice"] is second
    spec = MethodSpec("twice_method", "twice", "spread")
    register_method(spec)
    register_method(MethodSpec("twice_method", "twice", "spread"))  # equal spec: accepted


# ---- plug-ins through entry points -----------------------------------------------------------
def test_plugins_load_lazily_and_register(plugins):
    make_plugin(plugins, "good-plugin", "plug_good", """
        from massedit.editing.registry import MethodSpec, register_objective
        from massedit.algorithms import LeastSquaresObjective

        class Doubled(LeastSquaresObjective):
            name = "doubled"

        METHOD = MethodSpec("good", "doubled", "spread", description="from good-plugin")
    """, """
        [massedit.objectives]
        doubled = plug_good:Doubled
        [massedit.methods]
        good = plug_good:METHOD
    """)
    assert "plug_good" not in sys.modules  # nothing is imported before the first lookup
    assert get_method("good").objective == "doubled"
    assert "plug_good" in sys.modules
    assert type(get_objective("doubled")).__name__ == "Doubled"
    assert registry.registered_by("method", "good") == "good-plugin"
    assert registry.registered_by("method", "memit") == "massedit-lm"


def test_broken_plugins_warn_name_the_package_and_spare_the_builtins(plugins):
    make_plugin(plugins, "broken-plugin", "plug_broken", """
        raise ImportError("needs a library that is not installed")
    """, """
        [massedit.objectives]
        broken = plug_broken:Broken
    """)
    make_plugin(plugins, "clash-plugin", "plug_clash", """
        from massedit.editing.registry import register_objective

        @register_objective
        class Equality:
            name = "equality"

            def solve(self, problem):
                return None
    """, """
        [massedit.objectives]
        equality = plug_clash:Equality
    """)
    make_plugin(plugins, "half-plugin", "plug_half", """
        from massedit.editing.registry import MethodSpec, register_method, register_objective
        from massedit.algorithms import EqualityObjective

        @register_objective
        class Half(EqualityObjective):
            name = "half"

        METHOD = register_method(MethodSpec("half_method", "half", "no_such_distribution"))
    """, """
        [massedit.methods]
        half_method = plug_half:METHOD
    """)
    make_plugin(plugins, "misnamed-plugin", "plug_misnamed", """
        from massedit.algorithms import EqualityObjective

        class Other(EqualityObjective):
            name = "other_name"
    """, """
        [massedit.objectives]
        entry_name = plug_misnamed:Other
    """)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problems = load_plugins()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == problems and len(problems) == 4
    by_package = {p.split("from package ")[1].split()[0].strip("'"): p for p in problems}
    assert set(by_package) == {"broken-plugin", "clash-plugin", "half-plugin", "misnamed-plugin"}
    assert "ImportError: needs a library that is not installed" in by_package["broken-plugin"]
    assert "'equality' is already registered by package 'massedit-lm'" in by_package[
        "clash-plugin"]
    assert "plug-in package 'clash-plugin'" in by_package["clash-plugin"]
    assert "names unknown distribution 'no_such_distribution'" in by_package["half-plugin"]
    assert "called 'other_name'" in by_package["misnamed-plugin"]
    # The half-registered objective was rolled back; the built-ins work as before.
    assert "half" not in OBJECTIVES and "other_name" not in OBJECTIVES
    assert type(get_objective("equality")).__module__ == "massedit.algorithms.equality"
    assert get_method("memit").objective == "least_squares"


def test_a_module_entry_point_must_register_its_name(plugins):
    make_plugin(plugins, "module-plugin", "plug_module", """
        from massedit.editing.registry import register_distribution
        from massedit.distribution import Spread

        @register_distribution
        class Registered(Spread):
            name = "registered_here"
    """, """
        [massedit.distributions]
        registered_here = plug_module
        promised = plug_module
    """)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problems = load_plugins()
    assert len(problems) == 1 and len(caught) == 1
    assert "'module-plugin'" in problems[0] and "'promised'" in problems[0]
    assert "registered nothing under that name" in problems[0]
    assert "registered_here" in DISTRIBUTIONS and "promised" not in DISTRIBUTIONS


def test_plugin_presets_use_the_method_hparams_class(plugins):
    (plugins / "plug_preset_presets").mkdir()
    (plugins / "plug_preset_presets" / "__init__.py").write_text("")
    (plugins / "plug_preset_presets" / "default.yaml").write_text("extra_knob: 7.5\nmu: 0.25\n")
    make_plugin(plugins, "preset-plugin", "plug_preset", """
        from dataclasses import dataclass
        from massedit.engine.hparams import EditHparams
        from massedit.editing.registry import MethodSpec

        @dataclass(frozen=True)
        class KnobHparams(EditHparams):
            extra_knob: float = 1.0

        METHOD = MethodSpec("knob", "equality", "spread", hparams=KnobHparams,
                            presets="plug_preset_presets")
    """, """
        [massedit.methods]
        knob = plug_preset:METHOD
    """)
    from massedit.testing import tiny_model

    model, _ = tiny_model("llama")
    preset = registry.method_preset("knob", model, spread=True)
    assert type(preset.hparams).__name__ == "KnobHparams"
    assert (preset.hparams.extra_knob, preset.hparams.mu) == (7.5, 0.25)
    assert preset.source == "plug_preset_presets/default.yaml"
    from massedit.editing.presets import default_layers

    # Shape-based defaults for a model without a preset.
    assert preset.hparams.layers == default_layers(True, model.config.num_hidden_layers)
    assert registry.hparams_class("knob") is type(preset.hparams)
    builtin = registry.method_preset("memit", model, spread=True)
    assert type(builtin.hparams).__name__ == "EditHparams" and builtin.source == "memit/default"
