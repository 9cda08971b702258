"""Where a user router named in the config comes from: an entry point of the group
``smsgw.routers`` (an installed plug-in package) or a dotted path ``package.module:Class``.

The class is called with the router's options (a mapping) and must make a Router: an object
with ``plan(message, context) -> RoutePlan | None``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from routing.core import Router

ENTRY_POINT_GROUP = "smsgw.routers"


class RouterLoadError(Exception):
    """A plug-in router that cannot be loaded or made; the message says what would do."""


def _entry_point(name: str) -> object | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                loaded: object = ep.load()
            except Exception as exc:
                raise RouterLoadError(f"entry point {name!r} of group {ENTRY_POINT_GROUP} "
                                      f"({ep.value}) failed to load: {type(exc).__name__}: "
                                      f"{exc}") from None
            return loaded
    return None


def _dotted(path: str) -> object:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise RouterLoadError(f"{path!r} is not a dotted path 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise RouterLoadError(f"router {path!r}: no module named {exc.name or module_name!r}"
                              ) from None
    except Exception as exc:
        raise RouterLoadError(f"router {path!r}: cannot import module {module_name!r}: "
                              f"{type(exc).__name__}: {exc}") from None
    found: object = module
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise RouterLoadError(f"router {path!r}: module {module_name!r} has no "
                                  f"{attr!r}") from None
    return found


def resolve(spec: str) -> type:
    """The router class ``spec`` names: a dotted path when it holds ':', else an entry point
    name of the group smsgw.routers."""
    if ":" in spec:
        found = _dotted(spec)
    else:
        found = _entry_point(spec)
        if found is None:
            installed = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
            known = ", ".join(installed) if installed else "none installed"
            raise RouterLoadError(f"router {spec!r}: no entry point of that name in group "
                                  f"{ENTRY_POINT_GROUP} ({known}), and not a dotted path "
                                  "'package.module:Class'")
    if not isinstance(found, type):
        raise RouterLoadError(f"router {spec!r} is a {type(found).__name__}, not a class")
    if not callable(getattr(found, "plan", None)):
        raise RouterLoadError(f"router {spec!r}: class {found.__qualname__} is not a Router "
                              "(it has no plan(message, context) method)")
    return found


def load_router(spec: str, options: Mapping[str, Any] | None = None) -> Router:
    """An instance of the router ``spec`` names, made with ``options``; RouterLoadError if it
    cannot be."""
    cls = resolve(spec)
    try:
        router = cls(dict(options or {}))
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise RouterLoadError(f"router {spec!r} refused its options: {type(exc).__name__}: "
                              f"{exc}") from None
    if not isinstance(router, Router):
        raise RouterLoadError(f"router {spec!r}: {cls.__qualname__}(options) made a "
                              f"{type(router).__name__}, which has no plan(message, context)")
    return router
