"""The HTTP API's OpenAPI 3.1 document, served at /openapi.json.

Built from the same constants the request parser and the views use; tests validate every
documented request and response against it and drive the API from it (schemathesis).
"""

from __future__ import annotations

from typing import Any

from gateway import http_requests as rq
from gateway.model import PartState, State

_STR_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}


def _obj(properties: dict[str, Any], required: list[str] | None = None, *,
         closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "required": list(properties) if required is None else required}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _problem_response(description: str, *, retry_after: bool = False,
                      authenticate: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    headers: dict[str, Any] = {}
    if retry_after:
        headers["Retry-After"] = {"description": "Seconds to wait before sending again",
                                  "required": True, "schema": {"type": "string",
                                                               "pattern": "^[0-9]+$"}}
    if authenticate:
        headers["WWW-Authenticate"] = {"description": "Bearer challenge", "required": True,
                                       "schema": {"type": "string"}}
    if headers:
        response["headers"] = headers
    return response


def _schemas(max_batch: int) -> dict[str, Any]:
    message_request = _obj({
        "to": {"type": "string", "pattern": rq.TO_PATTERN,
               "description": "Recipient, international form without or with '+'",
               "examples": ["33612345678"]},
        "from": {"type": "string", "minLength": 1, "maxLength": 20,
                 "description": "Sender: a number, or a name of at most 11 characters",
                 "examples": ["ACME"]},
        "text": {"type": "string", "minLength": 1, "maxLength": rq.MAX_TEXT,
                 "description": "Sent as GSM 7-bit when every character has a code there, "
                                "else UCS-2; long texts are sent in several SMS parts, up to "
                                "the account's max_parts"},
        "channel": {"enum": list(rq.CHANNELS), "default": "sms",
                    "description": "Preferred channel"},
        "traffic": {"enum": list(rq.TRAFFIC),
                    "description": "alert: transactional; marketing: promotional (opt-out "
                                   "list, STOP mention and hours apply). Default: the "
                                   "account's ([rules] traffic), else alert"},
        "validity": {
            "description": "How long to try: seconds, or an ISO 8601 duration of days, hours, "
                           "minutes, seconds; capped by the gateway's and the account's "
                           "validity",
            "oneOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": rq.MAX_VALIDITY},
                {"type": "string", "pattern": r"^P(\d+(\.\d+)?D)?(T(\d+(\.\d+)?H)?"
                                              r"(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?$",
                 "examples": ["PT4H"]},
            ]},
        "send_at": {"type": "string", "format": "date-time",
                    "description": "RFC 3339 time to send at (the message is SCHEDULED until "
                                   "then)"},
        "callback_url": {"type": ["string", "null"], "format": "uri",
                         "maxLength": rq.MAX_URL,
                         "description": "http(s) URL the message's final receipt is posted "
                                        "to (the receipt webhook), instead of the account's "
                                        "webhook_url; refused (422) for an account without a "
                                        "webhook_secret, or outside its callback_url_prefixes"},
        "client_ref": {"type": ["string", "null"], "maxLength": rq.MAX_CLIENT_REF,
                       "description": "Your own reference, given back with the message"},
    }, list(rq.REQUIRED))
    accepted = _obj({
        "id": {"type": "string", "description": "The gateway's message id"},
        "state": {"enum": [State.QUEUED.value, State.SCHEDULED.value]},
        "to": {"type": "string"},
        "client_ref": _STR_OR_NULL,
    })
    part = _obj({
        "part_no": {"type": "integer", "minimum": 1},
        "connector": {"type": "string"},
        "operator_message_id": _STR_OR_NULL,
        "state": {"enum": [s.value for s in PartState]},
        "error": {"type": "integer"},
        "submitted_at": _TIME_OR_NULL,
        "done_at": _TIME_OR_NULL,
    })
    receipt = _obj({
        "part_no": {"type": "integer", "minimum": 1},
        "connector": {"type": "string"},
        "operator_message_id": {"type": "string"},
        "state": {"enum": [s.value for s in PartState]},
        "error": {"type": "integer"},
        "at": _TIME_OR_NULL,
    })
    attempt = _obj({
        "at": _TIME_OR_NULL,
        "channel": {"type": "string"},
        "connector": _STR_OR_NULL,
        "outcome": {**_STR_OR_NULL, "description": "submitted (the operator took every "
                    "part), retry (refused for now: tried again later), resumed (cut by a "
                    "restart), the final state it ended in, or null (not answered yet)"},
        "detail": {"type": "object"},
    })
    state_or_null = {"enum": [*(s.value for s in State), None]}
    event = _obj({
        "at": _TIME,
        "kind": {"type": "string", "description": "accepted, attempt, submitted, retry, "
                 "receipt, final, waiting, resumed, retry_now, report_delivered, "
                 "report_expired, webhook (its receipt webhook: outcome, status, tries), "
                 "cancelled, replaced, rule, error (see the README's 'Message history')"},
        "from_state": state_or_null,
        "to_state": state_or_null,
        "detail": {"type": "object"},
    })
    status = _obj({
        "id": {"type": "string"},
        "state": {"enum": [s.value for s in State]},
        "to": {"type": "string"},
        "from": {"type": "string"},
        "text": _STR_OR_NULL,
        "origin": {"enum": ["smpp", "http", "rules"],
                   "description": "rules: sent by the gateway for the account (a STOP "
                                  "confirmation)"},
        "channel": {"type": "string"},
        "traffic": {"type": "string"},
        "number_type": {"type": ["string", "null"],
                        "description": "The recipient's number type as the rules found it "
                                       "(mobile, fixed_line, fixed_line_or_mobile, toll_free, "
                                       "...; routes may take some only); null when the "
                                       "account runs no recipient rule"},
        "country": {"type": ["string", "null"],
                    "description": "The recipient's country (ISO 3166 alpha-2, e.g. FR) as "
                                   "the rules found it; null when the account runs no "
                                   "recipient rule"},
        "client_ref": _STR_OR_NULL,
        "callback_url": _STR_OR_NULL,
        "created_at": _TIME,
        "send_at": _TIME,
        "expires_at": _TIME,
        "done_at": _TIME_OR_NULL,
        "error": {"type": "integer", "description": "Last operator error (0: none)"},
        "connector": _STR_OR_NULL,
        "parts": {"type": "array", "items": {"$ref": "#/components/schemas/Part"}},
        "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/Attempt"}},
        "receipts": {"type": "array", "items": {"$ref": "#/components/schemas/Receipt"}},
        "history": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
    })
    problem = _obj({
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What is wrong and what to change"},
        "state": {"enum": [s.value for s in State],
                  "description": "409 of a cancel: the message's state"},
        "errors": {"type": "array", "description": "Each field refused (422)",
                   "items": _obj({"pointer": {"type": "string"},
                                  "detail": {"type": "string"},
                                  "rule": {"type": "string",
                                           "description": "The rule that refused it"},
                                  "reason": {"type": "string",
                                             "description": "The rule's reason code, e.g. "
                                                            "invalid-recipient"}},
                                 ["pointer", "detail"])},
    }, ["type", "title", "status", "detail"])
    return {
        "MessageRequest": message_request,
        "BatchRequest": _obj({"messages": {
            "type": "array", "minItems": 1, "maxItems": max_batch,
            "items": {"$ref": "#/components/schemas/MessageRequest"}}}),
        "Accepted": _obj({"messages": {"type": "array", "minItems": 1,
                                       "items": {"$ref": "#/components/schemas/AcceptedMessage"}}}),
        "AcceptedMessage": accepted,
        "MessageStatus": status,
        "Part": part,
        "Receipt": receipt,
        "Attempt": attempt,
        "Event": event,
        "Problem": problem,
        "ReceiptEvent": _obj({
            "event_id": {"type": "string", "description": "The same on every retry: "
                                                          "deduplicate on it"},
            "type": {"const": "receipt"},
            "account": {"type": "string"},
            "created_at": _TIME,
            "message_id": {"type": "string", "description": "The id the 202 gave"},
            "client_ref": _STR_OR_NULL,
            "to": {"type": "string"},
            "from": {"type": "string"},
            "state": {"enum": [s.value for s in State if s.final]},
            "stat": {"type": ["string", "null"],
                     "description": "The SMPP receipt word: DELIVRD, UNDELIV, EXPIRED, REJECTD"},
            "error": {"type": "integer", "description": "The operator's error code, 0 if none"},
            "submitted_at": _TIME_OR_NULL,
            "done_at": _TIME,
        }),
        "MoEvent": _obj({
            "event_id": {"type": "string"},
            "type": {"const": "mo"},
            "account": {"type": "string"},
            "created_at": _TIME,
            "message_id": {"type": "string", "description": "The gateway's id of the MO"},
            "from": {"type": "string", "description": "The phone that sent it"},
            "to": {"type": "string", "description": "The account's number it was sent to"},
            "text": {"type": "string"},
            "optout": {"enum": ["stop", "start", None],
                       "description": "stop or start when the text was an opt-out keyword "
                                      "(the phone was put on or taken off the account's "
                                      "opt-out list, see the README's Rules), else null"},
        }),
    }


def _webhook(summary: str, schema: str) -> dict[str, Any]:
    """A webhook the gateway POSTs to the account's application (see README, "Webhooks")."""
    return {"post": {
        "summary": summary,
        "description": "Signed: verify Smsgw-Signature over the raw body before parsing it. "
                       "Retried with exponential backoff until a 2xx (delivered) or 410 (never "
                       "again), for at most the report expiry; may come more than once.",
        "parameters": [
            {"name": "Smsgw-Signature", "in": "header", "required": True,
             "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>' keyed "
                            "with the account's webhook_secret> (one more v1 per previous "
                            "secret during a rotation: accept if any matches)",
             "schema": {"type": "string", "pattern": "^t=[0-9]+(,v1=[0-9a-f]{64})+$"}},
            {"name": "Smsgw-Event-Id", "in": "header", "required": True,
             "schema": {"type": "string"}},
        ],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{schema}"}}}},
        "responses": {
            "2XX": {"description": "Delivered: the gateway deletes the event"},
            "410": {"description": "Gone: the gateway deletes the event and stops retrying"},
            "default": {"description": "Anything else (or no answer within webhook_timeout): "
                                       "retried later"},
        },
        "security": [],
    }}


def document(max_batch: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (a batch holds at most ``max_batch`` messages)."""
    unauthorized = _problem_response("No bearer token, or one no account has",
                                     authenticate=True)
    throttled = _problem_response(
        "Over the account's throughput (SMPP and HTTP together) or its max_unfinished",
        retry_after=True)
    busy = _problem_response("The store lags: nothing was accepted; send again later",
                             retry_after=True)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "smsgw HTTP API",
            "version": "1",
            "description": "Send SMS through the gateway and follow them. Authenticate with "
                           "'Authorization: Bearer <token>'. Errors are RFC 9457 "
                           "application/problem+json.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(max_batch),
        },
        "security": [{"bearer": []}],
        "webhooks": {
            "receipt": _webhook("The final receipt of a message posted over HTTP, to its "
                                "callback_url or the account's webhook_url", "ReceiptEvent"),
            "mo": _webhook("A reply (MO) to one of the account's numbers, to its webhook_url",
                           "MoEvent"),
        },
        "paths": {
            "/v1/messages": {"post": {
                "operationId": "sendMessages",
                "summary": f"Send one message, or a batch of up to {max_batch}",
                "description": "Answered 202 once the messages are committed to the store. "
                               "A batch is accepted or refused as a whole. With an "
                               "Idempotency-Key, the same key and body are answered with the "
                               "first answer again (no second message) for at least the "
                               "configured idempotency_lifetime; the same key with another body "
                               "is refused with 409.",
                "parameters": [{
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "schema": {"type": "string", "pattern": rq.IDEMPOTENCY_KEY_PATTERN},
                }],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "oneOf": [{"$ref": "#/components/schemas/MessageRequest"},
                              {"$ref": "#/components/schemas/BatchRequest"}]}}}},
                "responses": {
                    "202": {"description": "Accepted and stored",
                            "headers": {"Idempotent-Replayed": {
                                "description": "true when this is the first answer to the "
                                               "Idempotency-Key, given again",
                                "schema": {"const": "true"}}},
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Accepted"}}}},
                    "400": _problem_response("Body not JSON, or a bad Idempotency-Key header"),
                    "401": unauthorized,
                    "409": _problem_response("Idempotency-Key already used with another body, "
                                             "or a rule refused a message as a duplicate "
                                             "(errors[].reason \"duplicate\")"),
                    "413": _problem_response("Body too large"),
                    "422": _problem_response("A field is missing, unknown or invalid, or a "
                                             "rule of the account refused a message (named "
                                             "in errors, with the rule and its reason)"),
                    "429": throttled,
                    "503": busy,
                },
            }},
            "/v1/messages/{message_id}": {"get": {
                "operationId": "getMessage",
                "summary": "A message of your account: state, parts, attempts, receipts, history",
                "parameters": [{"name": "message_id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The message",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/MessageStatus"}}}},
                    "401": unauthorized,
                    "404": _problem_response("No such message for your account"),
                    "429": throttled,
                    "503": busy,
                },
            }, "delete": {
                "operationId": "cancelMessage",
                "summary": "Cancel a message of your account that is not sent yet",
                "description": "A message can be cancelled while no part of it has been "
                               "handed to an operator (scheduled, waiting for a connector or "
                               "for a retry): it becomes CANCELLED, for good, and is never "
                               "sent. Answered 200 with the message once that is stored (also "
                               "for a message cancelled already). Its receipt, if one is owed, "
                               "says stat DELETED. A message with an operator already, or "
                               "final, is refused with 409 (too late; `state` says where it "
                               "is).",
                "parameters": [{"name": "message_id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The message, cancelled",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/MessageStatus"}}}},
                    "401": unauthorized,
                    "404": _problem_response("No such message for your account"),
                    "409": _problem_response("Too late: with an operator already, or final "
                                             "(`state` names its state)"),
                    "429": throttled,
                    "503": _problem_response("The store failed, or the message is being "
                                             "accepted: nothing was changed; send again later",
                                             retry_after=True),
                },
            }},
        },
    }
