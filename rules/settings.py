"""The ``[rules]`` table of the gateway config: which rules run, in which order, with which
options, for every account and per account; and the Pipelines built from it.

Parsed here (rules/ owns its keys); gateway.config turns a RulesConfigError into its own error
naming the file. A loaded config has every rule already built once, so a bad plug-in or option
is reported at load time, not at the first message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rules.core import Pipeline
from rules.registry import RuleLoadError, build

_REGION = re.compile(r"[A-Z]{2}")
# Keys that may be set in [rules] (defaults for all accounts) and in [rules.account.<id>].
SETTING_KEYS = ("region", "allowed_senders", "authorised_senders", "traffic",
                "marketing_service_type", "optout", "stop_keywords", "start_keywords",
                "optout_confirmation", "max_segments", "unsubscribe_url", "unsubscribe_secret")
_CHOICES = {"traffic": ("alert", "marketing"), "optout": ("marketing", "all", "none")}
_LISTS = {"allowed_senders": "sender IDs", "authorised_senders": "sender IDs",
          "stop_keywords": "keywords", "start_keywords": "keywords"}
RULES_KEYS = ("pipeline", "options", "account", *SETTING_KEYS)  # the keys of [rules]
_ACCOUNT_KEYS = ("pipeline", "options", *SETTING_KEYS)


class RulesConfigError(Exception):
    """A bad key of [rules]: ``key`` is its dotted path below ``rules``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class AccountRules:
    """One account's rules: names in order, each rule's options, and its settings."""

    pipeline: tuple[str, ...] = ()
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RulesConfig:
    default: AccountRules = AccountRules()
    accounts: Mapping[str, AccountRules] = field(default_factory=dict)

    def of(self, account: str) -> AccountRules:
        return self.accounts.get(account, self.default)


def _show(value: object) -> str:
    return repr(value) if not isinstance(value, str) else f'"{value}"'


def _strings(key: str, value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RulesConfigError(key, f"expected an array of {what}, got {_show(value)}")
    return tuple(value)


def _settings(where: str, data: Mapping[str, Any], inherited: Mapping[str, Any]
              ) -> dict[str, Any]:
    out = dict(inherited)
    for key in SETTING_KEYS:
        if key not in data:
            continue
        value = data[key]
        path = f"{where}{key}"
        if key == "region":
            if not isinstance(value, str) or not _REGION.fullmatch(value):
                raise RulesConfigError(path, "expected an ISO 3166 country code of two capital "
                                             f'letters (e.g. "FR"), got {_show(value)}')
        elif key in _CHOICES:
            if value not in _CHOICES[key]:
                raise RulesConfigError(path, "expected one of " + ", ".join(
                    f'"{c}"' for c in _CHOICES[key]) + f", got {_show(value)}")
        elif key in _LISTS:
            value = _strings(path, value, _LISTS[key])
        elif key == "max_segments":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 255:
                raise RulesConfigError(path, "expected an integer from 1 to 255, got "
                                             + _show(value))
        elif key == "optout_confirmation" and isinstance(value, dict):
            if not value or not all(isinstance(k, str) and (k == "default" or _REGION.fullmatch(k))
                                    and isinstance(v, str) and v for k, v in value.items()):
                raise RulesConfigError(path, 'expected a text, or a table of country = "text" '
                                             '(ISO 3166 codes or "default"), got '
                                             + _show(value))
            value = dict(value)
        elif key == "unsubscribe_url":
            if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s?#]+/u", value):
                raise RulesConfigError(path, 'expected the public URL of the gateway\'s HTTP '
                                             'listener ending in "/u" (e.g. '
                                             '"https://sms.example.com/u"), got ' + _show(value))
        elif key == "unsubscribe_secret":
            if not isinstance(value, str) or len(value) < 16:
                raise RulesConfigError(path, "expected a secret of at least 16 characters")
        elif not isinstance(value, str) or (key == "marketing_service_type"
                                            and len(value) > 5):
            expected = ("a service_type of at most 5 characters" if key.startswith("marketing")
                        else "a text")
            raise RulesConfigError(path, f"expected {expected}, got {_show(value)}")
        out[key] = value
    return out


def _options(where: str, data: object) -> dict[str, Mapping[str, Any]]:
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise RulesConfigError(where.rstrip("."), "expected a table of tables, one per rule "
                                                  "([rules.options.<rule>]), got "
                                                  + _show(data))
    return dict(data)


def _unknown(where: str, data: Mapping[str, Any], known: Iterable[str]) -> None:
    allowed = tuple(known)
    for key in data:
        if key not in allowed:
            raise RulesConfigError(f"{where}{key}", "unknown key (expected one of "
                                                    + ", ".join(allowed) + ")")


def parse_rules(data: object, accounts: Iterable[str]) -> RulesConfig:
    """The [rules] table (``data``, None when absent) for the configured ``accounts``."""
    if data is None:
        return RulesConfig()
    if not isinstance(data, dict):
        raise RulesConfigError("", f"expected a table ([rules]), got {_show(data)}")
    _unknown("", data, RULES_KEYS)
    pipeline = _strings("pipeline", data.get("pipeline", []), "rule names")
    options = _options("options.", data.get("options"))
    default = AccountRules(pipeline, options, _settings("", data, {}))
    per_account: dict[str, AccountRules] = {}
    known = set(accounts)
    raw_accounts = data.get("account", {})
    if not isinstance(raw_accounts, dict):
        raise RulesConfigError("account", "expected a table of accounts "
                                          "([rules.account.<system_id>]), got "
                                          + _show(raw_accounts))
    for name, table in raw_accounts.items():
        where = f"account.{name}."
        if name not in known:
            raise RulesConfigError(where.rstrip("."), "expected the system_id of an "
                                                      "[[account]], got an unknown account")
        if not isinstance(table, dict):
            raise RulesConfigError(where.rstrip("."), f"expected a table, got {_show(table)}")
        _unknown(where, table, _ACCOUNT_KEYS)
        own = (_strings(where + "pipeline", table["pipeline"], "rule names")
               if "pipeline" in table else pipeline)
        merged = dict(options)
        for rule, opts in _options(where + "options.", table.get("options")).items():
            merged[rule] = {**options.get(rule, {}), **opts}
        per_account[name] = AccountRules(own, merged, _settings(where, table, default.settings))
    config = RulesConfig(default, per_account)
    build_pipelines(config)  # every rule built once: a bad one is reported now
    for where, rules in (("", default), *((f"account.{n}.", r) for n, r in per_account.items())):
        templates = rules.options.get("mention", {}).get("templates", {})
        links = "mention" in rules.pipeline and isinstance(templates, dict) and any(
            "{link}" in str(t) for t in templates.values())
        if links and not (rules.settings.get("unsubscribe_url")
                          and rules.settings.get("unsubscribe_secret")):
            raise RulesConfigError(f"{where}unsubscribe_url", "a STOP mention template holds "
                                   "{link}: set unsubscribe_url and unsubscribe_secret")
    return config


def _pipeline(where: str, rules: AccountRules) -> Pipeline:
    built = []
    for i, name in enumerate(rules.pipeline):
        try:
            built.append((name, build(name, rules.options.get(name, {}))))
        except RuleLoadError as exc:
            raise RulesConfigError(f"{where}pipeline[{i}]", str(exc)) from None
    return Pipeline(built)


@dataclass(frozen=True, slots=True)
class Pipelines:
    """Each account's Pipeline and settings (accounts not named in [rules.account] share the
    default one)."""

    default: Pipeline
    default_settings: Mapping[str, Any]
    accounts: Mapping[str, tuple[Pipeline, Mapping[str, Any]]]

    def of(self, account: str) -> tuple[Pipeline, Mapping[str, Any]]:
        return self.accounts.get(account, (self.default, self.default_settings))

    def all(self) -> list[Pipeline]:
        """Every pipeline: the default, then each account's own."""
        return [self.default, *(pipeline for pipeline, _ in self.accounts.values())]


def build_pipelines(config: RulesConfig) -> Pipelines:
    default = _pipeline("", config.default)
    per_account = {name: (_pipeline(f"account.{name}.", rules), rules.settings)
                   for name, rules in config.accounts.items()}
    return Pipelines(default, config.default.settings, per_account)
