"""Kernel candidates from outside awqd: `--candidate-plugin MODULE:CLASS`, AWQD_CANDIDATE_PLUGINS and the
`awqd.candidates` entry-point group. See docs/plugins.md for the interface.

A plugin that does not import or does not implement the interface is kept as a Plugin with its error, so
Describe lists it as unsupported with the reason; it never stops a boot. Selection checks and times plugins
only in the isolated worker (awqd/kernels/isolation.py), like every candidate; the daemon runs a plugin's
kernel only once it passed there.
"""

import importlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata

from awqd.kernels.base import Candidate
from awqd.kernels.capability import FAMILIES
from awqd.node.devices import DeviceInfo

ENTRY_POINT_GROUP = "awqd.candidates"
ENV_VAR = "AWQD_CANDIDATE_PLUGINS"
INTERFACE = ("prepare", "forward", "eligible")


@dataclass(frozen=True)
class Plugin:
    spec: str  # MODULE:CLASS
    cls: type | None  # None when it failed to load
    error: str = ""

    @property
    def name(self) -> str:
        return self.cls.name if self.cls is not None else self.spec


def specs_from(flags: Sequence[str] = (), env: str | None = None, entry_points: bool = True) -> list[str]:
    """The plugin specs of every source, in order, without duplicates: flags, then the environment, then the
    installed entry points."""
    env = os.environ.get(ENV_VAR, "") if env is None else env
    specs = [*flags, *(part.strip() for part in env.split(","))]
    if entry_points:
        specs += [entry.value for entry in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    return list(dict.fromkeys(spec for spec in specs if spec))


def load(spec: str, builtin_names: Iterable[str]) -> Plugin:
    """Import and check one plugin. Never raises: any failure is the Plugin's error."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        return Plugin(spec, None, f"expected MODULE:CLASS, got {spec!r}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except BaseException as error:  # a plugin's import may even call sys.exit
        if isinstance(error, KeyboardInterrupt):
            raise
        return Plugin(spec, None, f"does not import: {type(error).__name__}: {error}")
    problem = interface_problem(cls, set(builtin_names))
    return Plugin(spec, None, problem) if problem else Plugin(spec, cls)


def interface_problem(cls: object, builtin_names: set[str]) -> str:
    if not isinstance(cls, type):
        return f"{cls!r} is not a class"
    missing = [method for method in INTERFACE if not callable(getattr(cls, method, None))]
    if missing:
        return f"{cls.__name__} lacks {', '.join(missing)} (see docs/plugins.md)"
    for attribute in ("name", "family", "layout"):
        if not isinstance(getattr(cls, attribute, None), str) or not getattr(cls, attribute):
            return f"{cls.__name__}.{attribute} must be a non-empty string"
    if cls.name in builtin_names:
        return f"name {cls.name!r} is taken by a built-in candidate"
    if cls.family not in FAMILIES:
        return f"family {cls.family!r} is not one of {', '.join(FAMILIES)}"
    if not issubclass(cls, Candidate):
        return f"{cls.__name__} must subclass awqd.kernels.base.Candidate"
    return ""


_active: dict[str, Plugin] = {}  # by candidate name (the spec for one that failed to load)


def activate(specs: Sequence[str], builtin_names: Iterable[str]) -> list[Plugin]:
    """Load `specs` and make the loaded ones buildable by name (registry.build). Replaces earlier plugins."""
    builtin = set(builtin_names)
    plugins: dict[str, Plugin] = {}
    for spec in dict.fromkeys(specs):
        plugin = load(spec, builtin)
        if plugin.cls is not None and plugin.name in plugins:
            plugin = Plugin(spec, None, f"name {plugin.name!r} is taken by plugin {plugins[plugin.name].spec}")
        plugins.setdefault(plugin.name, plugin)
    _active.clear()
    _active.update(plugins)
    return list(plugins.values())


def active() -> list[Plugin]:
    return list(_active.values())


def active_specs() -> list[str]:
    return [plugin.spec for plugin in _active.values()]


def candidate_class(name: str) -> type | None:
    plugin = _active.get(name)
    return plugin.cls if plugin is not None else None


def eligible(plugin: Plugin, device: DeviceInfo) -> tuple[bool, str]:
    """The plugin's own verdict on `device`, with its spec; a verdict that raises is a refusal."""
    if plugin.cls is None:
        return False, f"plugin {plugin.spec}: {plugin.error}"
    try:
        verdict, reason = plugin.cls().eligible(device)
    except Exception as error:
        return False, f"plugin {plugin.spec}: eligible() failed: {type(error).__name__}: {error}"
    return bool(verdict), f"plugin {plugin.spec}: {reason}"
