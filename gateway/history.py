"""A message's history: the Events that record each thing done to it.

The state machine (the TRANSITIONS table and move(), the one way to change a state) is in
gateway/transitions.py; transition() and note() here are its move() and note(). accepted()
makes a message's first event; iso() formats the times in events' details.
"""

from __future__ import annotations

import datetime as dt

from gateway.model import Event, Message, State
from gateway.transitions import NOTES, TRANSITIONS, IllegalTransition, note
from gateway.transitions import move as transition

__all__ = ["NOTES", "TRANSITIONS", "IllegalTransition", "accepted", "iso", "note",
           "transition"]


def accepted(msg: Message, interface: str) -> Event:
    """The first event of a message just taken from upstream (stored in the commit of its
    insertion): ACCEPTED -> its stored state."""
    if msg.state not in TRANSITIONS[(State.ACCEPTED, "accepted")]:
        raise IllegalTransition(f"message {msg.id}: accepted as {msg.state.value}")
    detail: dict[str, object] = {"interface": interface}
    if msg.state is State.SCHEDULED:
        detail["send_at"] = iso(msg.not_before)
    return Event(msg.id, msg.created_at, "accepted", State.ACCEPTED, msg.state, detail)


def iso(ts: float) -> str:
    """A time in an event's detail: ISO 8601, UTC, to the millisecond."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="milliseconds")
