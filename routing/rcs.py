"""The RCS channel: one agent of Google's RCS Business Messaging (RBM) REST API.

RbmClient speaks the API (OAuth2 token, capability check cached with a TTL, send with an
expiry, revoke); RcsChannel is the Channel the dispatcher drives; parse_push reads what the
platform pushes to the gateway's webhook (Pub/Sub push format) as channel-neutral events.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import quote

import httpx
import structlog
import trio

from gateway.model import Message, PartState
from routing.channel import (
    RCS,
    MobileOriginated,
    ProviderReceipt,
    Revoked,
    SendDone,
    SendResult,
    Unit,
    Unsendable,
)
from smpp.constants import Status
from smpp.text import alphabet, decode_text, encode_text

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

# --------------------------------------------------------------------------- billing classes
# How RBM bills an agent message (see DOMAIN.md "RCS specifics"). Our rule, applied when the
# message is sent (the platform decides for itself; this is our estimate for the CDR):
#   conversation  the recipient sent this agent a message in the last 24 h (a reply opens a
#                 24 h conversation window), whatever the message;
#   basic         otherwise, text only and at most 160 characters (Unicode code points);
#   single        otherwise (longer text; rich content would be single too, we send none).
# The class of a sent message is its SendResult.billing (the CDR's rcs_billing).
BASIC, SINGLE, CONVERSATION = "basic", "single", "conversation"
BASIC_MAX_CHARS: Final = 160
CONVERSATION_WINDOW: Final = 24 * 3600.0

MAX_TTL: Final = 15 * 24 * 3600.0  # RBM refuses a ttl / expireTime beyond 15 days
SCOPE: Final = "https://www.googleapis.com/auth/rcsbusinessmessaging"
JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Phones remembered per agent, least recently used forgotten first (bounded memory, O(1) per
# insert): capability answers (a forgotten one is asked again) and last replies (a forgotten
# one bills its next message outside a conversation, an estimate only).
CAPABILITY_CACHE_MAX: Final = 100_000
REPLIED_MAX: Final = 100_000

log = structlog.get_logger("routing.rcs")


def billing_class(text: str, replied_at: float | None, now: float) -> str:
    """The billing class of a text agent message sent at `now` (UNIX seconds) to a phone whose
    last message to the agent came at `replied_at` (None: never, or not known)."""
    if replied_at is not None and 0 <= now - replied_at < CONVERSATION_WINDOW:
        return CONVERSATION
    return BASIC if len(text) <= BASIC_MAX_CHARS else SINGLE


def e164(address: str) -> str:
    """A phone number as RBM wants it in its URLs ("+33612345678") from a message address
    (international digits, with or without '+'); ValueError when it is not one."""
    digits = address[1:] if address.startswith("+") else address
    if not digits.isascii() or not digits.isdigit() or not 8 <= len(digits) <= 15:
        raise ValueError(f"{address!r} is not an international number (8-15 digits)")
    return "+" + digits


def duration(seconds: float) -> str:
    """A protobuf Duration in its JSON form ("12.5s"), as RBM's `ttl` takes it."""
    return f"{seconds:.3f}s"


# --------------------------------------------------------------------------- credentials
class Credentials(Protocol):
    """How this agent proves who it is to the token URL: the form fields of the token POST."""

    def grant(self, token_url: str, now: float) -> dict[str, str]: ...


@dataclass(frozen=True, slots=True)
class ClientSecret:
    """OAuth2 client-credentials grant (a client id and secret): what the simulator and some
    RBM resellers take."""

    client_id: str
    client_secret: str
    scope: str = SCOPE

    def grant(self, token_url: str, now: float) -> dict[str, str]:
        return {"grant_type": "client_credentials", "client_id": self.client_id,
                "client_secret": self.client_secret, "scope": self.scope}


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A Google service-account key: a JWT signed RS256 with its private key, exchanged at
    the token URL (RFC 7523 JWT-bearer grant), as Google's RBM API wants it."""

    client_email: str
    private_key_pem: str = field(repr=False)
    scope: str = SCOPE
    key_id: str | None = None

    def grant(self, token_url: str, now: float) -> dict[str, str]:
        return {"grant_type": JWT_BEARER, "assertion": self.assertion(token_url, now)}

    def signing_key(self) -> RSAPrivateKey:
        """The private key; ValueError when private_key is not an
        unencrypted PEM RSA private key."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        try:
            key = serialization.load_pem_private_key(self.private_key_pem.encode(),
                                                     password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError("the service account's private_key is not a usable PEM private "
                             f"key (unencrypted RSA expected): {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the service account's private_key is not an RSA key")
        return key

    def assertion(self, audience: str, now: float) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        key = self.signing_key()
        header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
        if self.key_id:
            header["kid"] = self.key_id
        claims = {"iss": self.client_email, "scope": self.scope, "aud": audience,
                  "iat": int(now), "exp": int(now) + 3600}
        signing_input = _b64url_json(header) + "." + _b64url_json(claims)
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_json(obj: dict[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def load_credentials(path: str | Path) -> Credentials:
    """Read an agent's credentials file (JSON): a Google service-account key ("type":
    "service_account", client_email, private_key: its PEM RSA key is parsed here), or
    {"client_id", "client_secret"}. ValueError names the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the RBM credentials: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the RBM credentials must be a JSON object")
    if data.get("type") == "service_account":
        email, key = data.get("client_email"), data.get("private_key")
        if not isinstance(email, str) or not isinstance(key, str):
            raise ValueError(f"{path}: a service account key needs client_email and "
                             "private_key (strings)")
        kid = data.get("private_key_id")
        account = ServiceAccount(email, key, key_id=kid if isinstance(kid, str) else None)
        try:
            account.signing_key()  # a bad key is refused now, not at the first token request
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        return account
    cid, secret = data.get("client_id"), data.get("client_secret")
    if isinstance(cid, str) and isinstance(secret, str) and cid and secret:
        return ClientSecret(cid, secret)
    raise ValueError(f"{path}: expected a Google service account key (\"type\": "
                     "\"service_account\") or client_id and client_secret")


# --------------------------------------------------------------------------- the API client
class RbmError(Exception):
    """RBM answered a request with an HTTP error: `code` (404, 400, ...), `rbm_status`
    (its google.rpc status name: NOT_FOUND, INVALID_ARGUMENT, ...) and its message."""

    def __init__(self, code: int, rbm_status: str, message: str) -> None:
        super().__init__(f"RBM {code} {rbm_status}: {message}")
        self.code = code
        self.rbm_status = rbm_status
        self.message = message

    @classmethod
    def from_response(cls, response: httpx.Response) -> RbmError:
        status, message = "", response.text[:200]
        try:
            error = response.json().get("error", {})
            status = str(error.get("status", ""))
            message = str(error.get("message", message))
        except (ValueError, AttributeError):
            pass
        return cls(response.status_code, status or response.reason_phrase, message)


class TokenError(Exception):
    """The token URL refused the credentials, answered something that is not a token, or did
    not answer (the API call that wanted the token was then not made)."""


@dataclass(frozen=True, slots=True)
class Capability:
    """What RBM said of a phone: reachable with RCS by this agent or not, and its features."""

    capable: bool
    features: tuple[str, ...] = ()


class RbmClient:
    """The RBM REST API for one agent. Times (token expiry, capability cache) are trio time.

    base_url: the API root ("https://rcsbusinessmessaging.googleapis.com", or a simulator);
    token_url: where tokens come from ("https://oauth2.googleapis.com/token"); capability
    answers are kept `capability_ttl` seconds when positive, `negative_ttl` when negative,
    for `cache_max` phones at most (the least recently used forgotten first).
    """

    def __init__(self, http: httpx.AsyncClient, *, base_url: str, token_url: str,
                 agent_id: str, credentials: Credentials, capability_ttl: float = 3600.0,
                 negative_ttl: float | None = None, timeout: float = 10.0,
                 wall_clock: Callable[[], float] = time.time,
                 cache_max: int = CAPABILITY_CACHE_MAX) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.token_url = token_url
        self.agent_id = agent_id
        self.credentials = credentials
        self.capability_ttl = capability_ttl
        self.negative_ttl = capability_ttl if negative_ttl is None else negative_ttl
        self.timeout = timeout
        self.wall_clock = wall_clock
        self._token: str | None = None
        self._token_until = -math.inf
        self._token_lock = trio.Lock()
        self.cache_max = cache_max
        # E.164 -> (trio time it expires, answer), least recently used first
        self._capabilities: OrderedDict[str, tuple[float, Capability]] = OrderedDict()

    # ---- token
    async def token(self) -> str:
        """A bearer token, fetched once and reused until a minute before it expires."""
        async with self._token_lock:
            if self._token is not None and trio.current_time() < self._token_until:
                return self._token
            form = self.credentials.grant(self.token_url, self.wall_clock())
            try:
                response = await self.http.post(self.token_url, data=form,
                                                timeout=self.timeout)
            except httpx.HTTPError as exc:  # not the API call's own failure: nothing was sent
                raise TokenError(f"no answer from the token URL: {type(exc).__name__}: "
                                 f"{exc}") from None
            if response.status_code != 200:
                raise TokenError(f"token URL answered {response.status_code}: "
                                 f"{response.text[:200]}")
            try:
                body = response.json()
                token, lifetime = body["access_token"], float(body.get("expires_in", 3600))
            except (ValueError, KeyError, TypeError) as exc:
                raise TokenError(f"token URL answered no usable token: {exc}") from None
            if not isinstance(token, str) or not token:
                raise TokenError("token URL answered an empty access_token")
            self._token = token
            self._token_until = trio.current_time() + max(0.0, lifetime - min(60.0,
                                                                               lifetime / 10))
            return token

    async def _request(self, method: str, path: str, *, params: dict[str, str],
                       body: dict[str, Any] | None = None) -> httpx.Response:
        """One API call; a 401 drops the cached token and is tried once more with a new one.
        Raises RbmError for an HTTP error, httpx.HTTPError when no answer came."""
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {await self.token()}"}
            response = await self.http.request(method, self.base_url + path, params=params,
                                               json=body, headers=headers,
                                               timeout=self.timeout)
            if response.status_code == 401 and attempt == 1:
                self._token = None
                continue
            if response.status_code >= 400:
                raise RbmError.from_response(response)
            return response
        raise AssertionError("unreachable")

    @staticmethod
    def _phone_path(msisdn: str) -> str:
        return "/v1/phones/" + quote(e164(msisdn), safe="+")

    # ---- capability
    def cached_capability(self, msisdn: str) -> Capability | None:
        """The cached answer for this phone if still fresh, else None (no request made)."""
        phone = e164(msisdn)
        hit = self._capabilities.get(phone)
        if hit is None:
            return None
        if trio.current_time() >= hit[0]:
            del self._capabilities[phone]
            return None
        self._capabilities.move_to_end(phone)
        return hit[1]

    def remember(self, msisdn: str, capability: Capability) -> None:
        ttl = self.capability_ttl if capability.capable else self.negative_ttl
        phone = e164(msisdn)
        self._capabilities[phone] = (trio.current_time() + ttl, capability)
        self._capabilities.move_to_end(phone)
        while len(self._capabilities) > self.cache_max:
            self._capabilities.popitem(last=False)

    async def capabilities(self, msisdn: str) -> Capability:
        """Whether this agent can reach the phone with RCS (cached; a 404 is a negative
        answer, cached too). Other errors raise RbmError / httpx.HTTPError, uncached."""
        cached = self.cached_capability(msisdn)
        if cached is not None:
            return cached
        try:
            response = await self._request(
                "GET", self._phone_path(msisdn) + "/capabilities",
                params={"agentId": self.agent_id, "requestId": str(uuid.uuid4())})
        except RbmError as exc:
            if exc.code != 404:
                raise
            capability = Capability(False)
        else:
            features = _json_object(response).get("features", [])
            capability = Capability(True, tuple(str(f) for f in features)
                                    if isinstance(features, list) else ())
        self.remember(msisdn, capability)
        return capability

    # ---- messages
    async def send(self, msisdn: str, message_id: str, text: str, ttl: float) -> None:
        """Send a text agent message under `message_id` (a UUID; RBM ignores a second message
        with an id it has seen), to expire `ttl` seconds from now (capped at 15 days).
        A 404 also records the phone as not capable."""
        body = {"contentMessage": {"text": text},
                "ttl": duration(min(max(ttl, 0.001), MAX_TTL))}
        try:
            await self._request("POST", self._phone_path(msisdn) + "/agentMessages",
                                params={"messageId": message_id, "agentId": self.agent_id},
                                body=body)
        except RbmError as exc:
            if exc.code == 404:
                self.remember(msisdn, Capability(False))
            raise

    async def revoke(self, msisdn: str, message_id: str) -> bool:
        """Revoke a sent message: True when revoked (200), False when RBM no longer holds it
        because it was delivered (404). Other answers raise."""
        try:
            await self._request("DELETE",
                                self._phone_path(msisdn) + "/agentMessages/"
                                + quote(message_id, safe=""),
                                params={"agentId": self.agent_id})
        except RbmError as exc:
            if exc.code == 404:
                return False
            raise
        return True


def _json_object(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def send_failure(exc: Exception) -> SendResult:
    """What an RBM error means for the core: 404 -> not capable (fall back at once); 400 ->
    not capable either (RBM refuses this content: the plan's next channel, SMS, may take it;
    without one the message ends UNDELIVERABLE); 401/403/429/5xx or no answer -> temporary;
    other 4xx -> permanent (undeliverable)."""
    if isinstance(exc, RbmError):
        detail = str(exc)
        if exc.code == 404:
            return SendResult(None, Status.ESME_RINVDSTADR, not_capable=True, detail=detail)
        if exc.code == 400:
            return SendResult(None, Status.ESME_RSUBMITFAIL, not_capable=True,
                              detail=f"content RBM refuses: {detail}")
        if exc.code == 429:
            return SendResult(None, Status.ESME_RTHROTTLED, temporary=True, detail=detail)
        if exc.code in (401, 403) or exc.code >= 500:
            return SendResult(None, Status.ESME_RSYSERR, temporary=True, detail=detail)
        return SendResult(None, Status.ESME_RSUBMITFAIL, detail=detail)
    if isinstance(exc, TokenError):
        return SendResult(None, Status.ESME_RSYSERR, temporary=True, detail=f"token: {exc}")
    return SendResult(None, Status.ESME_RSYSERR, temporary=True,
                      detail=f"no answer from RBM: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- the channel
# Transport errors that mean the request never left: no connection was made (refused, no
# route, timed out connecting, no free connection in the pool). RBM cannot have that send.
NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

@dataclass(frozen=True, slots=True)
class RcsPayload:
    """A Unit's payload on this channel: the phone (E.164) and the text to send."""

    msisdn: str
    text: str


def message_text(message: Message) -> str:
    """The text of a message as it goes out over RCS; Unsendable when it has none (binary
    content, a UDH, nothing at all)."""
    if message.esm_class & 0x40:
        raise Unsendable(Status.ESME_RINVESMCLASS,
                         "a message with a UDH (concatenated part, port) cannot go over RCS")
    if alphabet(message.data_coding) == "binary":
        raise Unsendable(Status.ESME_RSUBMITFAIL,
                         f"data_coding {message.data_coding} is binary: no text for RCS")
    text = decode_text(message.body, message.data_coding)
    if not text:
        raise Unsendable(Status.ESME_RINVMSGLEN, "an empty message cannot go over RCS")
    return text


class RcsChannel:
    """One RBM agent as a Channel. Sends run in the nursery given at construction, at most
    `capacity` at once (the others wait for a slot, until their deadline); each checks the
    phone's capability (cached), then sends with the time left until the deadline as the
    message's ttl, so RBM stops retrying an offline phone when the validity ends."""

    kind = RCS

    def __init__(self, name: str, client: RbmClient, nursery: trio.Nursery, *,
                 capacity: int = 100, sender: str = "",
                 wall_clock: Callable[[], float] = time.time,
                 replied_max: int = REPLIED_MAX) -> None:
        self.name = name
        self.sender = sender  # the SMS sender mapped to this agent: its users' replies go to it
        self.client = client
        self.nursery = nursery
        self._capacity = capacity
        self._limiter = trio.CapacityLimiter(capacity)  # sends unanswered at once, at most
        self.wall_clock = wall_clock
        self._open = True
        self._changed = trio.Event()
        self.replied_max = replied_max
        # E.164 -> UNIX time of its last message to us, least recently noted first
        self._replied: OrderedDict[str, float] = OrderedDict()

    def is_up(self) -> bool:
        return self._open

    @property
    def capacity(self) -> int:
        return self._capacity

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def close(self) -> None:
        """Take no more sends (a removed connector); sends in progress finish."""
        if self._open:
            self._open = False
            self._changed.set()
            self._changed = trio.Event()

    # ---- conversation windows
    def note_reply(self, msisdn: str, at: float) -> None:
        """A phone sent this agent a message at `at` (UNIX seconds): a conversation window."""
        phone = e164(msisdn)
        self._replied[phone] = max(at, self._replied.get(phone, at))
        self._replied.move_to_end(phone)
        while len(self._replied) > self.replied_max:  # the phone quiet the longest goes
            self._replied.popitem(last=False)

    def reply(self, mo: MobileOriginated) -> MobileOriginated:
        """A user's reply as the core takes it: noted for the conversation window, addressed
        to the agent's sender (when one is configured) rather than to the agent id."""
        self.note_reply(mo.sender, self.wall_clock())
        if not self.sender:
            return mo
        ton = 1 if self.sender.isdigit() else 5  # international number, or alphanumeric
        return dataclasses.replace(mo, recipient=self.sender, recipient_ton=ton,
                                   recipient_npi=1 if ton == 1 else 0)

    def billing_class(self, payload: RcsPayload) -> str:
        return billing_class(payload.text, self._replied.get(payload.msisdn),
                             self.wall_clock())

    # ---- Channel
    def prepare(self, message: Message) -> Sequence[Unit]:
        try:
            msisdn = e164(message.dest_addr)
        except ValueError as exc:
            raise Unsendable(Status.ESME_RINVDSTADR, str(exc)) from None
        return [Unit(1, RcsPayload(msisdn, message_text(message)))]

    def submit_nowait(self, message: Message, unit: Unit, deadline: float,
                      done: SendDone) -> None:
        payload = unit.payload
        if not isinstance(payload, RcsPayload):
            raise TypeError(f"unit {unit.number} of {message.id} was not prepared by RCS")
        self.nursery.start_soon(self._send, payload, deadline, done)

    async def _send(self, payload: RcsPayload, deadline: float, done: SendDone) -> None:
        """One send task: `done` is called exactly once, whatever happens; an unexpected
        error fails this send (temporary), never the channel or the gateway."""
        result: SendResult | None = None
        message_id = str(uuid.uuid4())
        try:
            with trio.move_on_at(deadline) as scope:  # a free slot too is waited for until then
                async with self._limiter:
                    result = await self._attempt(payload, deadline, message_id)
            if scope.cancelled_caught:
                result = SendResult(None, Status.ESME_RINVEXPIRY, expired=True,
                                    detail="validity ran out before RBM took it")
        except Exception as exc:  # a bug or a bad credential fails this send only
            log.exception("rcs.send_error", connector=self.name, rbm_message_id=message_id)
            result = SendResult(None, Status.ESME_RSYSERR, temporary=True,
                                detail=f"RCS channel error: {type(exc).__name__}: {exc}")
        finally:
            done(result if result is not None else SendResult(
                None, Status.ESME_RSYSERR, temporary=True,
                detail=f"stopped while sending {message_id} (RBM may have taken it)"))

    async def _attempt(self, payload: RcsPayload, deadline: float,
                       message_id: str) -> SendResult:
        try:
            capability = await self.client.capabilities(payload.msisdn)
        except (RbmError, TokenError, httpx.HTTPError) as exc:
            return send_failure(exc)
        if not capability.capable:
            return SendResult(None, Status.ESME_RINVDSTADR, not_capable=True,
                              detail="RBM: phone not reachable with RCS (capability 404)")
        billing = self.billing_class(payload)
        try:
            await self.client.send(payload.msisdn, message_id, payload.text,
                                   deadline - trio.current_time())
        except NOT_SENT as exc:
            return send_failure(exc)  # no connection: RBM cannot have it
        except httpx.TransportError as exc:
            return await self._unanswered(payload, message_id, billing, exc)
        except (RbmError, TokenError, httpx.HTTPError) as exc:
            return send_failure(exc)
        return SendResult(message_id, detail=f"billing={billing}", billing=billing)

    async def _unanswered(self, payload: RcsPayload, message_id: str, billing: str,
                          exc: Exception) -> SendResult:
        """No answer to the send: RBM may have taken it. Its id is revoked at once; only a
        revoke answered 200 (REVOKED: it can never arrive) is a temporary failure the core
        may fall back from. Answered 404 (delivered already, or never taken: RBM does not
        say which) or not at all, it is taken under its id: its DELIVERED event is matched,
        and the core's own wait and revoke decide on a fallback, as for an answered send."""
        outcome, said = await self._revoke(payload.msisdn, message_id)
        note = f"no answer from RBM to the send ({type(exc).__name__}); {said}"
        if outcome is Revoked.REVOKED:
            return SendResult(None, Status.ESME_RSYSERR, temporary=True, detail=note)
        return SendResult(message_id, detail=f"billing={billing}; {note}", billing=billing)

    async def _revoke(self, msisdn: str, message_id: str) -> tuple[Revoked, str]:
        try:
            revoked = await self.client.revoke(msisdn, message_id)
        except (RbmError, TokenError, httpx.HTTPError, ValueError) as exc:
            return Revoked.FAILED, f"revoke of {message_id} failed: {exc}"
        if revoked:
            return Revoked.REVOKED, f"revoke of {message_id}: revoked"
        return Revoked.DELIVERED, f"revoke of {message_id}: not found (delivered)"

    async def revoke(self, message: Message, provider_id: str) -> Revoked:
        return (await self._revoke(message.dest_addr, provider_id))[0]


# --------------------------------------------------------------------------- the webhook
class PushError(ValueError):
    """A push body that is not an RBM event or message in Pub/Sub push format."""


# RBM event type -> the unit's outcome (None: intermediate, it changes nothing final).
EVENT_OUTCOMES: Final[dict[str, PartState | None]] = {
    "DELIVERED": PartState.DELIVERED,
    "READ": None,
    "TTL_EXPIRATION_REVOKED": PartState.EXPIRED,  # expired and revoked: it will never arrive
    "TTL_EXPIRATION_REVOKE_FAILED": None,  # expired, revoke failed: DELIVERED may follow
}


def _field(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise PushError(f"{what} has no {key} (a non-empty string)")
    return value


@dataclass(frozen=True, slots=True)
class RbmPush:
    """One push read: the agent it is for ("" when the platform did not say, for what carries
    nothing) and what it means for the core (None: nothing)."""

    agent_id: str
    item: ProviderReceipt | MobileOriginated | None


def parse_push(body: bytes) -> RbmPush:
    """Read one Pub/Sub push ({"message": {"data": base64 of the RBM JSON, ...}, ...}).

    The item is a ProviderReceipt for a DELIVERED, READ or TTL_EXPIRATION_* event
    (provider_id is the agent message id we sent), a MobileOriginated for a user message
    (text, a tapped suggestion's text, a location as a geo: URI, a file as its URI;
    `recipient` is the agent id, `sender` the phone without '+'), None for what the core has
    no use for (IS_TYPING, agent launch events, unknown types). Raises PushError for a
    malformed body."""
    try:
        push = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PushError(f"push body is not JSON: {exc}") from None
    if not isinstance(push, dict) or not isinstance(push.get("message"), dict):
        raise PushError("push body has no \"message\" object")
    data = push["message"].get("data")
    if not isinstance(data, str):
        raise PushError("push message has no \"data\" (base64 string)")
    try:
        raw = base64.b64decode(data, validate=True)
        event = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise PushError(f"push message data is not base64 of JSON: {exc}") from None
    if not isinstance(event, dict):
        raise PushError("push message data is not a JSON object")
    agent = event.get("agentId")
    agent = agent if isinstance(agent, str) else ""
    attributes = push["message"].get("attributes")
    if isinstance(attributes, dict) and attributes.get("type") == "agent_launch_event":
        return RbmPush(agent, None)
    if "eventType" in event:
        receipt = _event(event, raw)
        if receipt is not None:
            _field(event, "agentId", f"{receipt.word} event")
        return RbmPush(agent, receipt)
    if "senderPhoneNumber" in event or "messageId" in event:
        return RbmPush(agent, _user_message(event))
    raise PushError("push data is neither an RBM event (eventType) nor a user message "
                    "(senderPhoneNumber, messageId)")


def _event(event: dict[str, Any], raw: bytes) -> ProviderReceipt | None:
    kind = _field(event, "eventType", "event")
    if kind not in EVENT_OUTCOMES:
        return None  # IS_TYPING, subscription changes, types added later
    message_id = _field(event, "messageId", f"{kind} event")
    return ProviderReceipt(message_id, EVENT_OUTCOMES[kind], kind, raw=raw)


def _user_message(event: dict[str, Any]) -> MobileOriginated:
    sender = _field(event, "senderPhoneNumber", "user message")
    agent = _field(event, "agentId", "user message")
    text: str | None = None
    if isinstance(event.get("text"), str):
        text = event["text"]
    elif isinstance(event.get("suggestionResponse"), dict):
        text = str(event["suggestionResponse"].get("text", ""))
    elif isinstance(event.get("location"), dict):
        loc = event["location"]
        text = f"geo:{loc.get('latitude')},{loc.get('longitude')}"
    elif isinstance(event.get("userFile"), dict):
        payload = event["userFile"].get("payload")
        text = str(payload.get("fileUri", "")) if isinstance(payload, dict) else ""
    if text is None:
        raise PushError("user message has no text, suggestionResponse, location or userFile")
    try:
        phone = e164(sender)[1:]
    except ValueError as exc:
        raise PushError(f"user message senderPhoneNumber: {exc}") from None
    data_coding, octets = encode_text(text)
    return MobileOriginated(sender=phone, recipient=agent, body=octets,
                            data_coding=data_coding, sender_ton=1, sender_npi=1)


def encode_push(event: dict[str, Any], *, message_id: str, publish_time: str,
                subscription: str = "projects/smsgw/subscriptions/rbm") -> bytes:
    """The Pub/Sub push body that carries `event` (what the RBM platform posts to a webhook):
    used by the simulator and the tests."""
    data = base64.b64encode(json.dumps(event).encode()).decode("ascii")
    return json.dumps({"message": {"data": data, "messageId": message_id,
                                   "publishTime": publish_time, "attributes": {}},
                       "subscription": subscription}).encode()
