"""The STOP mention: marketing sent from an alphanumeric sender (which cannot be replied to)
gets the account's opt-out instruction appended, e.g. "STOP au 36111", per destination
country. The SMS count is taken after it (GSM 160/153, UCS-2 70/67) and recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import phonenumbers

from gateway.model import Message
from rules.core import ESME_RINVMSGLEN, Change, Context, Decision
from rules.optout import fold
from rules.unsubscribe import make_token

TON_ALPHANUMERIC = 5
DEFAULT_TEMPLATES = {"FR": "STOP au 36111"}
SEPARATOR = "\n"
_ESM_UDHI = 0x40


def destination_country(message: Message) -> str | None:
    """The ISO 3166 code of an E.164 destination (None if unknown)."""
    try:
        number = phonenumbers.parse("+" + message.dest_addr.removeprefix("+"))
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.region_code_for_number(number)


class MentionRule:
    """Built-in rule ``mention``. Options: ``templates``, a table of country code (or
    "default") -> the text appended (default: FR = "STOP au 36111"); per account through
    [rules.account.<id>.options.mention]. Where the phone cannot reply (e.g. CH), a template
    holding "{link}" gets the account's unsubscribe link (settings unsubscribe_url and
    unsubscribe_secret)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"templates"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (expected: templates)")
        templates = options.get("templates", DEFAULT_TEMPLATES)
        if not isinstance(templates, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in templates.items()):
            raise ValueError('templates: expected a table of country = "text", e.g. '
                             '{FR = "STOP au 36111"}')
        self.templates: dict[str, str] = dict(templates)

    def apply(self, message: Message, context: Context) -> Decision:
        if message.traffic != "marketing":
            return Decision.accept()  # alerts need none
        country = destination_country(message) or "default"
        template = self.templates.get(country, self.templates.get("default"))
        if template is None:
            return Decision.accept(f"no STOP mention configured toward {country}",
                                   country=country)
        if message.source_ton != TON_ALPHANUMERIC and "{link}" not in template:
            return Decision.accept()  # a number or short code takes the STOP reply itself
        codec = context.codec
        text = None
        if codec is not None and not message.esm_class & _ESM_UDHI:
            text = codec.decode(message.body, message.data_coding)
        if codec is None or text is None:
            return Decision.reject(
                "mention-impossible", "marketing from an alphanumeric sender needs the STOP "
                "mention, which cannot be added to a binary or already segmented message",
                smpp_status=ESME_RINVMSGLEN, http_status=422, subject="text")
        if "{link}" not in template and fold(template) in fold(text):
            return Decision.accept("the STOP mention is already in the text",
                                   segments=codec.segments(message.body, message.data_coding))
        if "{link}" in template:  # replies impossible there: a link to unsubscribe
            token = make_token(str(context.setting("unsubscribe_secret")), message.account,
                               message.dest_addr.removeprefix("+"))
            template = template.replace("{link}",
                                        f"{context.setting('unsubscribe_url')}/{token}")
        data_coding, body = codec.encode(text + SEPARATOR + template)
        changes = [Change("body", message.body, body)]
        if data_coding != message.data_coding:
            changes.append(Change("data_coding", message.data_coding, data_coding))
        return Decision.modify(changes, f"STOP mention appended: {template}",
                               country=country, segments=codec.segments(body, data_coding))
