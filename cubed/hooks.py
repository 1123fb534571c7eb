"""Hooks from ``cube.py`` in the project directory, written the way Cube's Python config is::

    from cubed import config

    @config('query_rewrite')
    def query_rewrite(query: dict, ctx: dict) -> dict:
        query['filters'].append({'member': 'Orders.tenant', 'operator': 'equals',
                                 'values': [ctx['securityContext']['tenant']]})
        return query

Hooks may be plain functions, ``async def`` coroutines, or return Deferreds. The request
context ``ctx`` they receive is a dict with ``securityContext`` (and ``authInfo``, its legacy
name), ``requestId``, and whatever ``extend_context`` added; ``driver_factory`` also gets
``dataSource``.

Marking a function only sets an attribute on it: the hooks are found by reading ``cube.py``'s
module, so nothing global is kept.
"""
from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred

from cubed.errors import ConfigError, CubedError, InternalError

HOOK_NAMES = (
    "check_auth", "query_rewrite", "context_to_app_id", "context_to_orchestrator_id", "driver_factory",
    "repository_factory", "scheduled_refresh_contexts", "pre_aggregations_schema", "context_to_api_scopes",
    "extend_context", "scheduled_refresh_time_zones",
)
MARK = "__cubed_hook__"
F = TypeVar("F", bound=Callable[..., Any])


def config(name: str) -> Callable[[F], F]:
    """Return a decorator marking a function of ``cube.py`` as the hook ``name``."""
    if name not in HOOK_NAMES:
        raise ValueError(f"unknown cubed hook {name!r}; known hooks: {', '.join(HOOK_NAMES)}")

    def mark(function: F) -> F:
        setattr(function, MARK, name)
        return function

    return mark


@dataclass(frozen=True)
class Hooks:
    """The hooks a project defines (None where it defines none)."""

    check_auth: Callable[..., Any] | None = None
    query_rewrite: Callable[..., Any] | None = None
    context_to_app_id: Callable[..., Any] | None = None
    context_to_orchestrator_id: Callable[..., Any] | None = None
    driver_factory: Callable[..., Any] | None = None
    repository_factory: Callable[..., Any] | None = None
    scheduled_refresh_contexts: Callable[..., Any] | None = None
    pre_aggregations_schema: Callable[..., Any] | None = None
    context_to_api_scopes: Callable[..., Any] | None = None
    extend_context: Callable[..., Any] | None = None
    scheduled_refresh_time_zones: Callable[..., Any] | None = None

    @property
    def multi_tenant(self) -> bool:
        """Return whether models or data depend on the tenant (Cube's non-standalone mode)."""
        return bool(self.context_to_app_id or self.repository_factory or self.driver_factory)

    def defined(self) -> list[str]:
        """Return the names of the hooks defined."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


def load_hooks(project_dir: Path) -> Hooks:
    """Return the hooks of ``<project_dir>/cube.py`` (no hooks when there is no such file).

    Raises ConfigError with one line when the file does not import or defines a hook twice.
    """
    path = project_dir / "cube.py"
    if not path.is_file():
        return Hooks()
    name = f"cubed_project_config_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        where = traceback.extract_tb(error.__traceback__)[-1]
        raise ConfigError(f"{path}: {type(error).__name__}: {error} (line {where.lineno})") from None
    finally:
        sys.modules.pop(name, None)
    found: dict[str, Callable[..., Any]] = {}
    for attribute in vars(module).values():
        hook = getattr(attribute, MARK, None)
        if hook is None or not callable(attribute):
            continue
        if hook in found and found[hook] is not attribute:
            raise ConfigError(f"{path}: the hook '{hook}' is defined twice")
        found[hook] = attribute
    return Hooks(**found)


class HookError(InternalError):
    """A hook raised: a 500 with a clean message (the traceback goes to the log)."""


async def call_hook(name: str, hook: Callable[..., Any], *args: Any) -> Any:
    """Return what ``hook(*args)`` returns, awaiting coroutines and Deferreds.

    CubedErrors a hook raises (e.g. ``cubed.errors.AuthError`` from check_auth) pass through;
    any other exception becomes a HookError naming the hook.
    """
    try:
        result = hook(*args)
        if inspect.isawaitable(result) or isinstance(result, Deferred):
            result = await result
        return result
    except CubedError:
        raise
    except Exception as error:
        raise HookError(f"{name} hook failed: {type(error).__name__}: {error}") from error
