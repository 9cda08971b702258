"""Where a rule named in the config comes from: a built-in name, an entry point of the group
``smsgw.rules`` (an installed plug-in package), or a dotted path ``package.module:Factory``.

A factory is called with the rule's options (a mapping) and returns an object with ``apply``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from rules.core import Rule

ENTRY_POINT_GROUP = "smsgw.rules"


class RuleLoadError(Exception):
    """A rule name that cannot be turned into a rule: ``expected`` says what would do."""


def builtins() -> dict[str, Callable[[Mapping[str, Any]], Rule]]:
    """The rules shipped with the gateway, by the name the config uses."""
    from rules.content import DuplicateRule, SegmentsRule, UrlRule
    from rules.hours import HoursRule
    from rules.mention import MentionRule
    from rules.optout import OptOutRule
    from rules.recipient import RecipientRule
    from rules.sender import SenderRule

    return {"recipient": RecipientRule, "sender": SenderRule, "optout": OptOutRule,
            "mention": MentionRule, "hours": HoursRule, "urls": UrlRule,
            "segments": SegmentsRule, "duplicates": DuplicateRule}


def _entry_point(name: str) -> Callable[[Mapping[str, Any]], Rule] | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                loaded: Callable[[Mapping[str, Any]], Rule] = ep.load()
            except Exception as exc:
                raise RuleLoadError(f"entry point {name!r} of group {ENTRY_POINT_GROUP} "
                                    f"({ep.value}) failed to load: {exc}") from None
            return loaded
    return None


def _dotted(path: str) -> Callable[[Mapping[str, Any]], Rule]:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise RuleLoadError(f"{path!r} is not a dotted path 'package.module:Factory'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RuleLoadError(f"cannot import module {module_name!r} for rule {path!r}: "
                            f"{type(exc).__name__}: {exc}") from None
    try:
        found: Callable[[Mapping[str, Any]], Rule] = getattr(module, attr)
    except AttributeError:
        raise RuleLoadError(f"module {module_name!r} has no {attr!r} (rule {path!r})") from None
    return found


def factory(name: str) -> Callable[[Mapping[str, Any]], Rule]:
    """The factory of the rule ``name``: built-in, then entry point, then dotted path."""
    found = builtins().get(name)
    if found is not None:
        return found
    found = _entry_point(name)
    if found is not None:
        return found
    if "." in name or ":" in name:
        return _dotted(name)
    known = ", ".join(sorted(builtins()))
    raise RuleLoadError(f"unknown rule {name!r}: expected a built-in rule ({known}), an entry "
                        f"point of group {ENTRY_POINT_GROUP} or a dotted path "
                        "'package.module:Factory'")


def build(name: str, options: Mapping[str, Any]) -> Rule:
    """An instance of rule ``name`` made with ``options``; RuleLoadError if it cannot be."""
    make = factory(name)
    try:
        rule = make(options)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise RuleLoadError(f"rule {name!r} refused its options: {exc}") from None
    if not callable(getattr(rule, "apply", None)):
        raise RuleLoadError(f"rule {name!r}: its factory returned {type(rule).__name__}, "
                            "which has no apply(message, context) method")
    return rule
