"""Plugin loading: one function, run once, that builds the registry of everything plugins provide.

Built-in plugins (``plugins/``) and third-party packages are found the same
way, through the ``nlpflow`` entry-point group. A plugin that fails to import,
implements an unknown hook, raises inside a registration hook or registers
something of the wrong type is recorded as a failure with its name and left
out whole (nothing it registered stays); the others keep working. Loading
fills the registry it returns and changes nothing outside it.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable

import pluggy

from nlpflow import hookspecs
from nlpflow.contract.errors import ConfigError, Location, PluginError, did_you_mean
from nlpflow.contract.types import HEADS, Backend, Executor, Head, Metric, Preprocessor, Reader, Reporter, Task

PROJECT = "nlpflow"
#: comma-separated plugin names to block, as ``--disable-plugin`` does
DISABLE_ENV = "NLPFLOW_DISABLE_PLUGINS"
#: set to 1 to print every hook call and its result to stderr
TRACE_ENV = "NLPFLOW_TRACE_HOOKS"

#: registration hook -> (kind shown to users, base class a registered object must subclass)
KINDS: dict[str, tuple[str, type]] = {
    "register_tasks": ("task", Task),
    "register_metrics": ("metric", Metric),
    "register_preprocessors": ("preprocessor", Preprocessor),
    "register_readers": ("reader", Reader),
    "register_reporters": ("reporter", Reporter),
    "register_backends": ("backend", Backend),
    "register_executors": ("executor", Executor),
}


@dataclass
class PluginInfo:
    name: str
    version: str | None
    hooks: list[str]
    #: shipped with nlpflow itself; built-ins register first, so no other plugin can take their names
    builtin: bool = False
    #: the installed distribution (package) that provides the plugin; None for plugins registered from Python
    distribution: str | None = None


@dataclass
class Registered:
    cls: type
    plugin: str


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    plugin_manager: pluggy.PluginManager
    entries: dict[str, dict[str, Registered]] = field(default_factory=lambda: {kind: {} for kind, _ in KINDS.values()})
    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[PluginError] = field(default_factory=list)
    #: installed plugins not loaded because --disable-plugin or $NLPFLOW_DISABLE_PLUGINS named them
    blocked: list[str] = field(default_factory=list)
    #: problems worth a line that do not stop anything (a disabled name that matches no installed plugin)
    warnings: list[str] = field(default_factory=list)
    #: hub name -> function returning the folder of a copy shipped in a package (resolving a pipeline looks its
    #: model up here)
    embedded_models: dict[str, Callable[[], Any]] = field(default_factory=dict)
    #: head name -> its declaration: nlpflow's built-in heads, then those plugins declared with register_heads
    heads: dict[str, Head] = field(default_factory=lambda: dict(HEADS))
    #: head name -> the plugin that declared it (absent for the built-in heads)
    head_plugins: dict[str, str] = field(default_factory=dict)

    def get(self, kind: str, name: str, location: Location | None = None, pipeline: str | None = None) -> type:
        """The class registered as ``name``; a ConfigError listing the choices if there is none."""
        try:
            return self.entries[kind][name].cls
        except KeyError:
            available = self.entries[kind]
            raise ConfigError(f"unknown {kind} {name!r}. {did_you_mean(name, available)}", location, pipeline) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def provider(self, kind: str, name: str) -> str:
        return self.entries[kind][name].plugin

    def plugin_info(self, plugin_name: str) -> PluginInfo:
        return next(info for info in self.plugins if info.name == plugin_name)


def make_plugin_manager() -> pluggy.PluginManager:
    """A PluginManager with nlpflow's hook specifications and nothing registered."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def disabled_from_env() -> list[str]:
    return [name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()]


def load_registry(
    disabled: Iterable[str] = (),
    extra_plugins: Iterable[tuple[str, object]] = (),
    trace: bool | None = None,
) -> Registry:
    """Load every ``nlpflow`` entry point (less the disabled ones) plus ``extra_plugins``, and collect registrations.

    ``extra_plugins`` are ``(name, plugin object)`` pairs, for plugins defined
    in Python (tests, notebooks) rather than installed.
    """
    manager = make_plugin_manager()
    registry = Registry(manager)
    for name in [*disabled, *disabled_from_env()]:
        manager.set_blocked(name)

    if trace if trace is not None else os.environ.get(TRACE_ENV) == "1":
        manager.trace.root.setwriter(lambda message: print(message, end="", file=sys.stderr))
        manager.enable_tracing()

    versions: dict[str, str | None] = {}
    distributions: dict[str, str] = {}
    builtins: set[str] = set()
    for entry_point in entry_points(group=PROJECT):
        if manager.is_blocked(entry_point.name) or manager.has_plugin(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
        except Exception as error:  # an import error in one plugin must not stop the others
            registry.failures.append(PluginError(f'Error importing plugin "{entry_point.name}": {type(error).__name__}: {error}', entry_point.name))
            continue
        versions[entry_point.name] = entry_point.dist.version if entry_point.dist else None
        if entry_point.dist is not None:
            distributions[entry_point.name] = entry_point.dist.name
        if entry_point.dist is not None and entry_point.dist.name == PROJECT:
            builtins.add(entry_point.name)
        _register(registry, entry_point.name, plugin)

    extra_plugins = list(extra_plugins)
    for name, plugin in extra_plugins:
        if not manager.is_blocked(name):
            _register(registry, name, plugin)

    installed = {entry_point.name for entry_point in entry_points(group=PROJECT)} | {name for name, _ in extra_plugins}
    for name in dict.fromkeys([*disabled, *disabled_from_env()]):
        if name in installed:
            registry.blocked.append(name)
        else:
            close = difflib.get_close_matches(name, sorted(installed), n=1, cutoff=0.6)
            registry.warnings.append(
                f"--disable-plugin/{DISABLE_ENV} names {name!r}, which is not an installed plugin (`nlpflow plugins` lists them)"
                + (f"; did you mean {close[0]!r}?" if close else "")
            )

    for info in registry.plugins:
        info.version = versions.get(info.name, info.version)
        info.distribution = distributions.get(info.name, info.distribution)
        info.builtin = info.name in builtins
    collection_order = sorted(registry.plugins, key=lambda info: not info.builtin)  # stable: built-ins first
    for hook_name, (kind, base) in KINDS.items():
        for info in collection_order:
            _collect(registry, info.name, hook_name, kind, base)
    for info in collection_order:
        _collect_heads(registry, info.name)
    for info in collection_order:
        _collect_embedded_models(registry, info.name)
    return registry


def _reject(registry: Registry, plugin_name: str, failure: PluginError) -> None:
    """Record why a plugin failed and leave it out whole: what it registered so far is removed, and its hooks are
    no longer called, so it is never both listed as loaded and as failed."""
    registry.failures.append(failure)
    for entries in registry.entries.values():
        for name in [name for name, entry in entries.items() if entry.plugin == plugin_name]:
            del entries[name]
    for head in [name for name, owner in registry.head_plugins.items() if owner == plugin_name]:
        del registry.heads[head], registry.head_plugins[head]
    registry.plugins[:] = [info for info in registry.plugins if info.name != plugin_name]
    if registry.plugin_manager.has_plugin(plugin_name):
        registry.plugin_manager.unregister(name=plugin_name)


def _register(registry: Registry, name: str, plugin: object) -> None:
    manager = registry.plugin_manager
    try:
        manager.register(plugin, name=name)
        manager.check_pending()
    except (pluggy.PluginValidationError, ValueError) as error:
        if manager.has_plugin(name):
            manager.unregister(name=name)
        registry.failures.append(PluginError(f"rejected: {error}", name))
        return
    hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
    registry.plugins.append(PluginInfo(name=name, version=None, hooks=hooks))


def _call_registration(registry: Registry, plugin_name: str, hook_name: str, register: Callable[..., None]) -> bool:
    """Call one plugin's implementation of one registration hook with ``register``; False when the plugin does not
    implement it or was rejected (a PluginError from ``register``, or anything the hook raised: left out whole)."""
    manager = registry.plugin_manager
    plugin = manager.get_plugin(plugin_name)
    if plugin is None or hook_name not in {c.name for c in manager.get_hookcallers(plugin) or []}:
        return False
    caller = manager.subset_hook_caller(hook_name, remove_plugins=[p for p in manager.get_plugins() if p is not plugin])
    try:
        caller(register=register)
    except PluginError as error:
        _reject(registry, plugin_name, error)
        return False
    except Exception as error:  # a plugin's bug must not stop the others
        _reject(registry, plugin_name, PluginError(f"raised in {hook_name}: {type(error).__name__}: {error}", plugin_name))
        return False
    return True


def _collect(registry: Registry, plugin_name: str, hook_name: str, kind: str, base: type) -> None:
    """Call one plugin's implementation of one registration hook and keep what it registers."""

    def register(cls: Any) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{hook_name} registered {cls!r}, which is not a subclass of nlpflow.{base.__name__}", plugin_name)
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{hook_name} registered {cls.__name__} without a 'name'", plugin_name)
        existing = registry.entries[kind].get(name)
        if existing is not None:
            raise PluginError(f"{kind} {name!r} is already registered by plugin {existing.plugin!r}", plugin_name)
        registry.entries[kind][name] = Registered(cls, plugin_name)

    _call_registration(registry, plugin_name, hook_name, register)


def _collect_heads(registry: Registry, plugin_name: str) -> None:
    """Call one plugin's ``register_heads`` and keep the heads it declares."""

    def register(head: Any) -> None:
        if not isinstance(head, Head):
            raise PluginError(f"register_heads registered {head!r}, which is not an nlpflow.Head", plugin_name)
        if head.name in registry.heads:
            declared_by = registry.head_plugins.get(head.name)
            by = f"plugin {declared_by!r}" if declared_by else "nlpflow itself"
            raise PluginError(f"head {head.name!r} is already declared by {by}", plugin_name)
        registry.heads[head.name] = head
        registry.head_plugins[head.name] = plugin_name

    _call_registration(registry, plugin_name, "register_heads", register)


def _collect_embedded_models(registry: Registry, plugin_name: str) -> None:
    """Call one plugin's ``register_embedded_models``; what it registers is kept only once the hook returns without
    a problem, so a rejected plugin leaves no embedded model behind."""
    registered: dict[str, Callable[[], Any]] = {}

    def register(hub_name: Any, locate: Any) -> None:
        if not isinstance(hub_name, str) or not callable(locate):
            raise PluginError(f"register_embedded_models expects register(hub_name: str, locate: callable), got {hub_name!r}, {locate!r}", plugin_name)
        registered.setdefault(hub_name, locate)

    if _call_registration(registry, plugin_name, "register_embedded_models", register):
        for hub_name, locate in registered.items():
            registry.embedded_models.setdefault(hub_name, locate)


_default: Registry | None = None


def default_registry(disabled: Iterable[str] = ()) -> Registry:
    """The registry of installed plugins, loaded once per process (per set of disabled names)."""
    global _default
    disabled = tuple(disabled)
    if _default is None or getattr(_default, "_disabled", None) != disabled:
        _default = load_registry(disabled)
        _default._disabled = disabled  # type: ignore[attr-defined]
    return _default
