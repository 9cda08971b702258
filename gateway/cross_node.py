"""Cancels and replacements of a message another node works on (nodes sharing a store): the
node the upstream asked checks the request against the stored message and writes it to the
database for the owner, whose dispatcher applies it as its own and writes the answer back;
the asker answers the upstream with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import structlog
import trio

from gateway import metrics
from gateway.dispatcher import ChangeRefused, Dispatcher
from gateway.intake import Replacement
from gateway.model import Message, State
from gateway.store import Store, StoreError

log = structlog.get_logger("gateway.cross_node")

POLL_INTERVAL = 0.5  # seconds: a request or answer whose notification was lost waits this
UNTAKEN_WAIT = 5.0  # seconds before a request the owner has not taken is withdrawn
ANSWER_WAIT = 30.0  # seconds before a taken request still unanswered is given up
TAKE_BATCH = 500  # requests taken (and answered) at a time


def _busy(message_id: str, why: str, state: State | None = None) -> ChangeRefused:
    return ChangeRefused("busy", f"message {message_id}: {why}: try again", state)


class CrossNode:
    """This node's side of both: asking other nodes (cancel, replace, cancel_matching) and
    serving what they ask of it (run)."""

    def __init__(self, store: Store, dispatcher: Dispatcher) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self._asked = trio.Event()
        self._answered = trio.Event()

    def _on_asked(self) -> None:
        self._asked.set()

    def _on_answered(self) -> None:
        event, self._answered = self._answered, trio.Event()
        event.set()

    # -- asking --------------------------------------------------------------------------------
    async def _owner(self, message_id: str, account: str | None) -> tuple[Message, int]:
        """The stored message and the node working on it, or ChangeRefused as this node's
        dispatcher would say it."""
        found = await self.store.message_owner(message_id)
        if found is None or (account is not None and found[0].account != account):
            raise ChangeRefused("unknown", f"no message {message_id[:80]!r}"
                                + ("" if account is None else f" for account {account}"))
        msg, owner = found
        if msg.state.final or owner is None:
            raise ChangeRefused("too_late", f"message {msg.id} is {msg.state.value}: too late",
                                msg.state)
        if not owner or owner == self.store.epoch:
            raise _busy(msg.id, "being accepted or taken over by a node", msg.state)
        return msg, owner

    async def _ask(self, asks: Sequence[tuple[int, str, dict[str, Any]]]
                   ) -> list[dict[str, Any]]:
        """Ask each (owner, message id, request) of its owner; the answers, in order. A
        request the owner does not take within UNTAKEN_WAIT is withdrawn (never applied) and
        answered busy; one taken but unanswered after ANSWER_WAIT too (the owner may have
        died after applying it)."""
        ids = await self.store.ask_changes(
            [(owner, message_id, json.dumps(request)) for owner, message_id, request in asks])
        answers: dict[int, dict[str, Any]] = {}
        pending = set(ids)
        started = trio.current_time()
        while pending:
            answered = self._answered  # before the read: an answer after it wakes the wait
            waited = trio.current_time() - started
            got, withdrawn = await self.store.collect_changes(list(pending),
                                                              withdraw=waited >= UNTAKEN_WAIT)
            answers.update((i, json.loads(a)) for i, a in got.items())
            for i in withdrawn:
                answers[i] = {"busy": "the node working on it did not take the request"}
            pending -= got.keys() | withdrawn
            if pending and waited >= ANSWER_WAIT:
                for i in pending:
                    answers[i] = {"busy": "the node working on it did not answer"}
                break
            if pending:
                with trio.move_on_after(POLL_INTERVAL):
                    await answered.wait()
        return [answers[i] for i in ids]

    async def _outcome(self, action: str, msg: Message, answer: dict[str, Any]) -> Message:
        """The message as changed, or the refusal the owner gave (ChangeRefused, StoreError)."""
        outcome = "done" if answer.get("ok") else next(
            (k for k in ("refused", "busy", "error") if k in answer), "error")
        metrics.child(metrics.CROSS_NODE_CHANGES, action, outcome).inc()
        if answer.get("ok"):
            changed = await self.store.get_message(msg.id)
            return changed if changed is not None else msg
        if "refused" in answer:
            state = answer.get("state")
            raise ChangeRefused(answer["refused"], answer["detail"],
                                State(state) if state else None)
        if "busy" in answer:
            raise _busy(msg.id, answer["busy"], msg.state)
        raise StoreError(f"the node working on message {msg.id} failed: {answer.get('error')}")

    async def cancel(self, message_id: str, account: str | None, by: str,
                     check: Callable[[Message], None] | None) -> Message:
        """Dispatcher.cancel of a message another node works on."""
        msg, owner = await self._owner(message_id, account)
        if check is not None:
            check(msg)
        [answer] = await self._ask([(owner, msg.id, {"action": "cancel", "account": account,
                                                     "by": by})])
        return await self._outcome("cancel", msg, answer)

    async def replace(self, message_id: str, account: str, by: str,
                      plan: Callable[[Message], Replacement]) -> Message:
        """Dispatcher.replace of a message another node works on: planned here on the stored
        message, applied by its owner (which checks it is still unsent)."""
        msg, owner = await self._owner(message_id, account)
        new = plan(msg)
        [answer] = await self._ask([(owner, msg.id, {
            "action": "replace", "account": account, "by": by, "replacement": {
                "body": new.body.hex(), "registered_delivery": new.registered_delivery,
                "expires_at": new.expires_at, "not_before": new.not_before}})])
        return await self._outcome("replace", msg, answer)

    async def cancel_matching(self, account: str, dest_addrs: Sequence[str],
                              match: Callable[[Message], bool], by: str
                              ) -> tuple[list[Message], list[Message]]:
        """Dispatcher.cancel_matching's share of the other nodes: (cancelled, too late or
        busy) among the account's messages to these addresses that they work on."""
        chosen = [(msg, owner) for msg, owner in
                  await self.store.unfinished_elsewhere(account, dest_addrs) if match(msg)]
        left = [msg for msg, owner in chosen if not owner]  # nobody's yet: busy
        asked = [(msg, owner) for msg, owner in chosen if owner]
        answers = await self._ask([(owner, msg.id, {"action": "cancel", "account": account,
                                                    "by": by}) for msg, owner in asked])
        cancelled = []
        for (msg, _), answer in zip(asked, answers, strict=True):
            try:
                cancelled.append(await self._outcome("cancel", msg, answer))
            except (ChangeRefused, StoreError):
                left.append(msg)
        return cancelled, left

    # -- answering -----------------------------------------------------------------------------
    async def _apply(self, message_id: str, request: dict[str, Any]) -> dict[str, Any]:
        account, by = request["account"], request["by"]
        try:
            if request["action"] == "cancel":
                await self.dispatcher.cancel(message_id, account=account, by=by,
                                             here_only=True)
            else:
                r = request["replacement"]
                new = Replacement(bytes.fromhex(r["body"]), r["registered_delivery"],
                                  r["expires_at"], r["not_before"])
                await self.dispatcher.replace(message_id, account=account, by=by,
                                              plan=lambda _msg: new, here_only=True)
        except ChangeRefused as exc:
            return {"refused": exc.reason, "detail": exc.detail,
                    "state": exc.state.value if exc.state is not None else None}
        except StoreError as exc:
            return {"error": str(exc)}
        log.info("cross_node.applied", message_id=message_id, action=request["action"], by=by)
        return {"ok": True}

    async def _answer(self, answers: list[tuple[int, str]]) -> None:
        """Write the answers; the changes are made: try until the askers give up."""
        with trio.move_on_after(ANSWER_WAIT):
            while True:
                try:
                    await self.store.answer_changes(answers)
                    return
                except StoreError:  # counted and logged by the store
                    await trio.sleep(POLL_INTERVAL)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Take and apply the requests other nodes ask of this one, as they come (notified,
        or polled), and answer them."""
        self.store.follow_changes(self._on_asked, self._on_answered)
        task_status.started()
        while True:
            with trio.move_on_after(POLL_INTERVAL * 2):
                await self._asked.wait()
            self._asked = trio.Event()
            try:
                taken = await self.store.take_changes(TAKE_BATCH)
            except StoreError:
                continue
            if taken:
                await self._answer([(i, json.dumps(await self._apply(m, json.loads(r))))
                                    for i, m, r in taken])
                self._asked.set()  # more may wait beyond the batch


__all__ = ["CrossNode"]
