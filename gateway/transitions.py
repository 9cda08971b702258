"""The message life cycle as one table, and the one function every state change goes through.

TRANSITIONS maps (state now, event kind) to the states that event may move a message to (a
set where the event's outcome picks the state: a receipt ends DELIVERED or UNDELIVERABLE...).
move() applies one: it refuses an illegal move, changes the state, queues the Event recording
it into the message's pending history (written in the same store call as the change; the
store counts each move by (from, to) once that call commits) and logs it.
"""

from __future__ import annotations

import logging

import structlog

from gateway.logs import LevelGate
from gateway.model import FINAL_STATES, Event, Message, State

log = structlog.get_logger("gateway.transitions")

_OPEN_BEFORE_SEND = (State.ACCEPTED, State.SCHEDULED, State.QUEUED)
_OPEN = (*_OPEN_BEFORE_SEND, State.IN_FLIGHT)

# (state now, event kind) -> the states that event may move a message to.
TRANSITIONS: dict[tuple[State, str], frozenset[State]] = {
    # Taken from upstream (stored QUEUED, or SCHEDULED until its send time).
    (State.ACCEPTED, "accepted"): frozenset({State.QUEUED, State.SCHEDULED}),
    # Handed to a connector (its parts submitted to an operator).
    **{(s, "attempt"): frozenset({State.IN_FLIGHT}) for s in _OPEN_BEFORE_SEND},
    # A temporary refusal (throttled, queue full, timeout, bind lost): tried again later.
    (State.IN_FLIGHT, "retry"): frozenset({State.QUEUED}),
    # The channel cannot reach the recipient (RCS: no RCS phone): the plan's next attempt.
    (State.IN_FLIGHT, "not_capable"): frozenset({State.QUEUED}),
    # No outcome within the attempt's timeout: revoked (where the channel can), next attempt.
    (State.IN_FLIGHT, "timeout"): frozenset({State.QUEUED}),
    # ... unless the revoke found it delivered already: that is its outcome.
    (State.IN_FLIGHT, "revoke"): FINAL_STATES,
    # An attempt cut by a restart: its unanswered parts go again.
    (State.IN_FLIGHT, "resumed"): frozenset({State.QUEUED}),
    # The operator's receipt that completes the message's outcome (IN_FLIGHT, or QUEUED when
    # a part waits for a retry; from any open state so that no receipt is ever refused).
    **{(s, "receipt"): FINAL_STATES for s in _OPEN},
    # Any other end: validity over, permanent operator refusal, no route, unsplittable...
    **{(s, "final"): FINAL_STATES for s in _OPEN},
    # Cancelled (cancel_sm, DELETE, smsgw message cancel) before any part reached an operator.
    **{(s, "cancelled"): frozenset({State.CANCELLED}) for s in _OPEN_BEFORE_SEND},
    # Its text, times or receipt request replaced (replace_sm) before any part was sent.
    **{(s, "replaced"): frozenset({State.SCHEDULED, State.QUEUED}) for s in _OPEN_BEFORE_SEND},
    # A step that failed on a bug: the message is tried again.
    **{(s, "error"): frozenset({State.QUEUED}) for s in _OPEN},
}
# Event kinds that change no state (note()).
NOTES = frozenset({
    "submitted",  # the operator answered every part of the attempt OK (its message ids)
    "receipt",  # an operator receipt for one part, the message not complete yet
    "waiting",  # no connector of its route is up: waits for one (or its expiry)
    "revoke",  # a timed-out attempt's revoke found a unit delivered: no further attempt
    "retry_now",  # an operator asked for an attempt now (smsgw message retry)
    "report_delivered",  # its receipt was delivered to the upstream
    "report_expired",  # its receipt was not taken by the upstream within the report expiry
    "error",  # a step failed on a bug, nothing changed
    "rule",  # a rule's decision at intake (rules/, gateway/screening.py)
    "webhook",  # what became of its receipt webhook (outcome, status, tries)
    "late_receipt",  # a receipt for an attempt it left (RCS delivered after the SMS fallback)
    "unsendable",  # a channel of its plan cannot carry it (RCS: a UDH): the next one is tried
})




class IllegalTransition(Exception):
    """An event that the state machine does not allow from the message's state."""


def allowed(state: State, kind: str, to: State) -> bool:
    return to in TRANSITIONS.get((state, kind), ())


# move() logs each transition at debug: on a hot path (two moves per message), so it asks
# the gate (gateway.logs.LevelGate) only while the logger may log debug at all.
_DEBUG = LevelGate(log, logging.DEBUG)


def move(msg: Message, kind: str, to: State, at: float,
         detail: dict[str, object] | None = None, *, into: list[Event] | None = None) -> Event:
    """Move msg to state `to` by an event of this kind: the Event recording it, appended to
    `into` (the message's history not yet written, stored with its next write, where the
    store counts it). Raises IllegalTransition for a move the table does not allow."""
    state = msg.state
    if to not in TRANSITIONS.get((state, kind), ()):  # allowed(), inlined: a hot path
        raise IllegalTransition(f"message {msg.id}: {kind!r} cannot move it from "
                                f"{state.value} to {to.value}")
    event = Event(msg.id, at, kind, state, to, detail or {})
    msg.state = to
    if into is not None:
        into.append(event)
    if log.bind is not _DEBUG.quiet and (bound := _DEBUG.bound()) is not None:
        bound.debug("message.transition", message_id=msg.id, kind=kind, from_state=state,
                    to_state=to)
    return event


def note(msg: Message, kind: str, at: float, detail: dict[str, object] | None = None, *,
         into: list[Event] | None = None) -> Event:
    """An Event that changes no state (appended to `into` like move's)."""
    if kind not in NOTES:
        raise IllegalTransition(f"message {msg.id}: {kind!r} is not an event without a "
                                "state change")
    event = Event(msg.id, at, kind, None, None, detail or {})
    if into is not None:
        into.append(event)
    return event
