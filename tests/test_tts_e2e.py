"""Text to speech for fixed lines, end to end: an account that allows voice ("omni", language
fr-FR) sends to a French fixed-line number; the rules' recipient rule finds its number type,
the routers send it to the [[voice]] connector, the built-in simulator's voice provider
calls it and posts its statuses to the gateway's /v1/voice/status/voice.

Rules protected: a French fixed line of a voice account is called (never sent as SMS or
RCS), in the account's language; the call's outcome is the message's, one receipt upstream;
a mobile number of the same account still goes RCS first; a busy line is UNDELIVERABLE.
"""

from __future__ import annotations

from pathlib import Path

from gateway.rbm_simulator import CAPABLE
from tests.omni import PHONE, omni_stack, receipt_stat

FIXED_LINE = "33123456789"  # +33 1 23 45 67 89: a Paris fixed line
RECIPIENT_RULE = {"pipeline": ["recipient"]}


async def test_a_french_fixed_line_of_a_voice_account_is_called_in_its_language(
        tmp_path: Path) -> None:
    async with omni_stack(tmp_path, rules=RECIPIENT_RULE) as omni:
        esme = await omni.send(b"Votre colis arrive demain", to=FIXED_LINE)
        assert receipt_stat(esme) == "DELIVRD" and len(esme.delivered) == 1
        assert omni.sim.rcs is not None
        (call,) = omni.sim.rcs.voice.calls.values()
        assert call.to == "+" + FIXED_LINE and call.text == "Votre colis arrive demain"
        assert (call.language, call.voice) == ("fr-FR", "Celine")
        assert omni.sms() == [] and omni.rbm.messages == {}
        assert ("attempt", "tts") in await omni.history(esme)


async def test_a_mobile_number_of_the_same_account_still_goes_rcs_first(
        tmp_path: Path) -> None:
    async with omni_stack(tmp_path, rules=RECIPIENT_RULE) as omni:
        omni.phone(CAPABLE)
        esme = await omni.send(to=PHONE)
        assert receipt_stat(esme) == "DELIVRD"
        assert omni.sim.rcs is not None and omni.sim.rcs.voice.calls == {}
        assert ("attempt", "rcs") in await omni.history(esme)


async def test_a_busy_fixed_line_is_undeliverable_with_one_receipt(tmp_path: Path) -> None:
    async with omni_stack(tmp_path, rules=RECIPIENT_RULE,
                          voice_numbers={"+" + FIXED_LINE: "busy"}) as omni:
        esme = await omni.send(to=FIXED_LINE)
        assert receipt_stat(esme) == "UNDELIV" and len(esme.delivered) == 1
        assert omni.sms() == []
