"""Test helper: cancel_sm and replace_sm for smpplib's Client, which has neither.

The PDUs are declared with smpplib's own Command/Param machinery (fields per SMPP 3.4 4.9 and
4.10), so the bytes the gateway reads are encoded by smpplib, not by our codec. smpplib's table
of bind states allows cancel_sm on receivers and replace_sm on transmitters only; the spec
allows both on transmitters and transceivers, which `install()` sets.
"""

from __future__ import annotations

import time
from typing import Any

import smpplib.command
import smpplib.consts
import smpplib.smpp
from smpplib.command import Command, Param
from smpplib.ptypes import ostr

from tests.stack import SmpplibEsme


class CancelSM(Command):
    params = {
        "service_type": Param(type=str, max=6),
        "message_id": Param(type=str, max=65),
        "source_addr_ton": Param(type=int, size=1),
        "source_addr_npi": Param(type=int, size=1),
        "source_addr": Param(type=str, max=21),
        "dest_addr_ton": Param(type=int, size=1),
        "dest_addr_npi": Param(type=int, size=1),
        "destination_addr": Param(type=str, max=21),
    }
    params_order = ("service_type", "message_id", "source_addr_ton", "source_addr_npi",
                    "source_addr", "dest_addr_ton", "dest_addr_npi", "destination_addr")

    def __init__(self, command: str, **kwargs: Any) -> None:
        super().__init__(command, **kwargs)
        self._set_vars(**(dict.fromkeys(self.params)))


class ReplaceSM(Command):
    params = {
        "message_id": Param(type=str, max=65),
        "source_addr_ton": Param(type=int, size=1),
        "source_addr_npi": Param(type=int, size=1),
        "source_addr": Param(type=str, max=21),
        "schedule_delivery_time": Param(type=str, max=17),
        "validity_period": Param(type=str, max=17),
        "registered_delivery": Param(type=int, size=1),
        "sm_default_msg_id": Param(type=int, size=1),
        "sm_length": Param(type=int, size=1),
        "short_message": Param(type=ostr, max=254, len_field="sm_length"),
    }
    params_order = ("message_id", "source_addr_ton", "source_addr_npi", "source_addr",
                    "schedule_delivery_time", "validity_period", "registered_delivery",
                    "sm_default_msg_id", "sm_length", "short_message")

    def __init__(self, command: str, **kwargs: Any) -> None:
        super().__init__(command, **kwargs)
        self._set_vars(**(dict.fromkeys(self.params)))

    def prep(self) -> None:
        self.sm_length = len(self.short_message or b"")


class EmptyResp(Command):
    params: dict[str, Param] = {}
    params_order: tuple[str, ...] = ()

    def __init__(self, command: str, **kwargs: Any) -> None:
        super().__init__(command, need_sequence=False, **kwargs)


_OURS = {"cancel_sm": CancelSM, "replace_sm": ReplaceSM, "cancel_sm_resp": EmptyResp,
         "replace_sm_resp": EmptyResp}
_original_factory = smpplib.command.factory


def _factory(command_name: str, **kwargs: Any) -> Command:
    cls = _OURS.get(command_name)
    if cls is None:
        return _original_factory(command_name, **kwargs)
    return cls(command_name, **kwargs)


def install() -> None:
    """Teach smpplib the two commands (idempotent)."""
    smpplib.command.factory = _factory
    c = smpplib.consts
    for name in ("cancel_sm", "replace_sm"):
        c.COMMAND_STATES[name] = (c.SMPP_CLIENT_STATE_BOUND_TX, c.SMPP_CLIENT_STATE_BOUND_TRX)
        c.COMMAND_STATES[name + "_resp"] = c.COMMAND_STATES[name]


def request(esme: SmpplibEsme, command: str, timeout: float = 10.0, **fields: Any) -> int:
    """Send cancel_sm or replace_sm, read until its response; its command_status. Receipts
    read meanwhile go to esme.delivered (answered), submit_sm_resps to esme.resps."""
    install()
    client = esme.client
    pdu = smpplib.smpp.make_pdu(command, client=client, **fields)
    client.send_pdu(pdu)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = client.read_pdu()
        if got.command == command + "_resp" and got.sequence == pdu.sequence:
            return int(got.status)
        if got.command == "deliver_sm":
            esme.delivered.append(got)
            client.send_pdu(smpplib.smpp.make_pdu("deliver_sm_resp", client=client,
                                                  sequence=got.sequence))
        elif got.command == "submit_sm_resp":
            esme.resps.append(got)
    raise TimeoutError(f"no {command}_resp")
