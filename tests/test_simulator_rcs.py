"""The built-in simulator's RBM platform and voice provider ([simulator] rcs = true): one HTTP
listener started with the daemon's in-process simulator, RBM's API at the root, the voice
provider under /voice, control endpoints beside them, and the [simulator] keys that set them.
Real sockets on 127.0.0.1, ephemeral ports.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import cli, rbm_simulator, voice_simulator
from gateway.config import (
    ConfigError,
    HttpConfig,
    RbmPhoneState,
    SimulatorConfig,
    VoiceBehaviour,
    check,
    load_simulator_config,
)
from gateway.http_api import serve_http
from gateway.simulator import RcsSimulator, SmscSimulator, events_url
from tests.stack import running_stack, wait_for
from tests.test_config import MINIMAL

AGENT, OTHER_AGENT = "agent-a", "agent-b"
CAPABLE, NOT_CAPABLE, LATER = "+33600000001", "+33600000002", "+33600000003"


class Pushes:
    """A webhook the test serves: the RBM events pushed to it, decoded."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.queries: list[str] = []

    async def receive(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.events.append(json.loads(base64.b64decode(body["message"]["data"])))
        self.queries.append(request.url.query)
        return Response(status_code=204)

    def of(self, message_id: str) -> list[str]:
        return [e["eventType"] for e in self.events if e.get("messageId") == message_id]


def rcs_sim(**changes: Any) -> SimulatorConfig:
    values: dict[str, Any] = dict(
        port=0, control_port=0, receipt_delay=0.05, seed=7, rcs=True, rcs_port=0,
        rcs_agent_ids=(AGENT, OTHER_AGENT), rcs_client_id="gw", rcs_client_secret="s3cret",
        rcs_deliver_delay=0.05, rcs_read_delay=0.05, rcs_phones={NOT_CAPABLE: "not_capable"},
        voice_answer_delay=0.05, voice_talk_time=0.05, voice_numbers={LATER: "busy"})
    values.update(changes)
    return SimulatorConfig(**values)


@asynccontextmanager
async def platform(tmp_path: Path, **changes: Any
                   ) -> AsyncIterator[tuple[httpx.AsyncClient, Pushes, SmscSimulator]]:
    """The daemon with a [simulator] table whose RBM pushes go to a webhook of the test's;
    yields a client on the simulator's RBM/voice listener."""
    pushes = Pushes()
    async with trio.open_nursery() as nursery:
        hook_port = await nursery.start(
            serve_http, Starlette(routes=[Route("/hook", pushes.receive, methods=["POST"])]),
            "127.0.0.1", 0)
        sim = rcs_sim(rcs_webhook_url=f"http://127.0.0.1:{hook_port}/hook", **changes)
        async with running_stack(tmp_path, simulator=sim) as (running, _smsc):
            simulator = running.simulator
            assert isinstance(simulator, SmscSimulator)
            assert simulator.rcs_port, "the daemon's simulator exposes its RBM/voice port"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{simulator.rcs_port}",
                                         timeout=5) as client:
                yield client, pushes, simulator
        nursery.cancel_scope.cancel()


async def token(client: httpx.AsyncClient, secret: str = "s3cret") -> httpx.Response:
    return await client.post("/token", data={"grant_type": "client_credentials",
                                             "client_id": "gw", "client_secret": secret})


async def send(client: httpx.AsyncClient, bearer: str, phone: str, agent: str = AGENT
               ) -> tuple[str, httpx.Response]:
    message_id = str(uuid.uuid4())
    answer = await client.post(f"/v1/phones/{phone}/agentMessages",
                               params={"messageId": message_id, "agentId": agent},
                               headers={"Authorization": f"Bearer {bearer}"},
                               json={"contentMessage": {"text": "Your code is 1234"}})
    return message_id, answer


async def test_the_daemon_simulator_serves_rbm_token_capability_and_send_with_pushed_events(
        tmp_path: Path) -> None:
    async with platform(tmp_path) as (client, pushes, _sim):
        assert (await token(client, "wrong")).status_code == 400  # only its client secret
        answer = await token(client)
        assert answer.status_code == 200
        bearer = answer.json()["access_token"]
        auth = {"Authorization": f"Bearer {bearer}"}

        capable = await client.get(f"/v1/phones/{CAPABLE}/capabilities",
                                   params={"agentId": AGENT}, headers=auth)
        assert capable.status_code == 200 and capable.json()["features"]
        not_capable = await client.get(f"/v1/phones/{NOT_CAPABLE}/capabilities",
                                       params={"agentId": AGENT}, headers=auth)
        assert not_capable.status_code == 404  # rcs_phones gave it that state at start
        unknown_agent = await client.get(f"/v1/phones/{CAPABLE}/capabilities",
                                         params={"agentId": "nobody"}, headers=auth)
        assert unknown_agent.status_code == 403

        first, answer = await send(client, bearer, CAPABLE)
        assert answer.status_code == 200, answer.text
        second, answer = await send(client, bearer, CAPABLE, OTHER_AGENT)  # agents: both
        assert answer.status_code == 200
        await wait_for(lambda: pushes.of(first) == ["DELIVERED", "READ"]
                       and pushes.of(second) == ["DELIVERED", "READ"])
        by_id = {e["messageId"]: e for e in pushes.events if e["eventType"] == "DELIVERED"}
        assert by_id[first]["agentId"] == AGENT and by_id[first]["senderPhoneNumber"] == CAPABLE
        assert by_id[second]["agentId"] == OTHER_AGENT  # an event names its message's agent


async def test_the_voice_provider_answers_under_voice_on_the_same_listener(
        tmp_path: Path) -> None:
    async with platform(tmp_path, voice_token="v-token") as (client, _pushes, sim):
        call = {"to": CAPABLE, "from": "+33100000000", "tts": {"text": "Your code is 1234"}}
        assert (await client.post("/voice/v1/calls", json=call)).status_code == 401
        placed = await client.post("/voice/v1/calls", json=call,
                                   headers={"Authorization": "Bearer v-token"})
        assert placed.status_code == 201
        call_id = placed.json()["call"]["id"]
        assert sim.rcs is not None
        await wait_for(lambda: sim.rcs is not None
                       and sim.rcs.voice.calls[call_id].status == "completed")
        seen = await client.get(f"/voice/v1/calls/{call_id}")
        assert seen.json()["call"]["status"] == "completed"
        numbers = (await client.get("/voice/control/numbers")).json()
        assert numbers == {"default": "answer", "numbers": {LATER: "busy"}}  # voice_numbers


async def test_control_endpoints_on_the_listener_set_phone_states_and_voice_behaviours(
        tmp_path: Path) -> None:
    async with platform(tmp_path) as (client, pushes, _sim):
        bearer = (await token(client)).json()["access_token"]
        auth = {"Authorization": f"Bearer {bearer}"}
        assert (await client.post("/control/phones", json={"phone": LATER,
                                                           "state": "offline"})).is_success
        held, answer = await send(client, bearer, LATER)
        assert answer.status_code == 200
        messages = (await client.get("/control/messages")).json()
        assert [m["state"] for m in messages if m["messageId"] == held] == ["PENDING"]
        assert pushes.of(held) == []  # offline: nothing delivered
        await client.post("/control/phones", json={"phone": LATER, "state": "capable"})
        await wait_for(lambda: "DELIVERED" in pushes.of(held))  # back: delivered now

        await client.post("/control/phones", json={"phone": LATER, "state": "failing"})
        failing = await client.get(f"/v1/phones/{LATER}/capabilities",
                                   params={"agentId": AGENT}, headers=auth)
        assert failing.status_code == 503
        await client.post("/control/phones", json={"phone": CAPABLE, "state": "not_capable"})
        assert (await client.get(f"/v1/phones/{CAPABLE}/capabilities", params={
            "agentId": AGENT}, headers=auth)).status_code == 404
        states = (await client.get("/control/phones")).json()
        assert states["phones"][LATER] == "failing" and states["default"] == "capable"
        bad = await client.post("/control/phones", json={"phone": LATER, "state": "asleep"})
        assert bad.status_code == 400

        set_busy = await client.post("/voice/control/numbers",
                                     json={"number": CAPABLE, "behaviour": "fail"})
        assert set_busy.json()["numbers"][CAPABLE] == "fail"
        refused = await client.post("/voice/v1/calls", json={
            "to": CAPABLE, "from": "+33100000000", "tts": {"text": "hello"}})
        assert refused.status_code == 503  # the provider "fails" for that number

        reply = await client.post("/control/replies", json={"phone": CAPABLE, "text": "STOP",
                                                            "agentId": OTHER_AGENT})
        assert reply.status_code == 200
        await wait_for(lambda: any(e.get("text") == "STOP" for e in pushes.events))
        mo = next(e for e in pushes.events if e.get("text") == "STOP")
        assert mo["agentId"] == OTHER_AGENT and mo["senderPhoneNumber"] == CAPABLE


async def test_without_a_webhook_url_events_go_to_the_gateways_own_listener_with_the_token(
        tmp_path: Path) -> None:
    sim = rcs_sim(rcs_push_token="push-secret")
    async with running_stack(tmp_path, simulator=sim, http=HttpConfig(port=0)) as (running, _):
        simulator = running.simulator
        assert isinstance(simulator, SmscSimulator) and simulator.rcs is not None
        assert simulator.rcs.webhook_url == (f"http://127.0.0.1:{running.http_port}"
                                             "/v1/rcs/events?token=push-secret")


async def test_rcs_false_opens_no_rbm_listener() -> None:
    sim = SmscSimulator(SimulatorConfig(port=0, control_port=0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        assert sim.rcs is None and sim.rcs_port is None
        nursery.cancel_scope.cancel()


async def test_a_configured_webhook_url_gets_the_push_token_appended() -> None:
    rcs = RcsSimulator(rcs_sim(rcs_webhook_url="http://gw.example:8080/hook?x=1",
                               rcs_push_token="t"))
    rcs.gateway_listening("127.0.0.1", 9999)  # the configured URL wins
    assert rcs.webhook_url == "http://gw.example:8080/hook?x=1&token=t"


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:8080/v1/rcs/events"),
    ("0.0.0.0", "http://127.0.0.1:8080/v1/rcs/events"),
    ("::", "http://[::1]:8080/v1/rcs/events"),
    ("gw.local", "http://gw.local:8080/v1/rcs/events"),
])
def test_the_gateway_events_url_reaches_a_wildcard_listener_on_loopback(host: str,
                                                                        url: str) -> None:
    assert events_url(host, 8080) == url


# --------------------------------------------------------------------------- config


def write(tmp_path: Path, simulator: str, before: str = "") -> Path:
    path = tmp_path / "sim.toml"
    path.write_text(before + "[simulator]\n" + simulator, encoding="utf-8")
    return path


def error_of(tmp_path: Path, simulator: str) -> str:
    path = write(tmp_path, simulator)
    with pytest.raises(ConfigError) as info:
        load_simulator_config(path)
    assert str(info.value).startswith(f"{path}: ")
    return str(info.value)


def test_simulator_rcs_keys_load_with_their_values(tmp_path: Path) -> None:
    config = load_simulator_config(write(tmp_path, """
rcs = true
rcs_host = "127.0.0.2"
rcs_port = 2790
rcs_webhook_url = "http://127.0.0.1:8080/v1/rcs/events"
rcs_push_token = "pt"
rcs_agent_ids = ["a1", "a2"]
rcs_client_id = "cid"
rcs_client_secret = "csecret"
rcs_deliver_delay = "500ms"
rcs_read_delay = 3
rcs_default_state = "not_capable"
rcs_phones = { "+33611111111" = "capable", "+33622222222" = "silent" }
voice_token = "vt"
voice_answer_delay = "1s"
voice_talk_time = "2s"
voice_default = "busy"
voice_numbers = { "+33633333333" = "no-answer" }
"""))
    assert (config.rcs, config.rcs_host, config.rcs_port) == (True, "127.0.0.2", 2790)
    assert config.rcs_agent_ids == ("a1", "a2") and config.rcs_push_token == "pt"
    assert (config.rcs_deliver_delay, config.rcs_read_delay) == (0.5, 3.0)
    assert config.rcs_phones == {"+33611111111": "capable", "+33622222222": "silent"}
    assert config.rcs_default_state == "not_capable" and config.voice_default == "busy"
    assert config.voice_numbers == {"+33633333333": "no-answer"} and config.voice_token == "vt"
    assert (config.voice_answer_delay, config.voice_talk_time) == (1.0, 2.0)


def test_simulator_rcs_is_off_by_default_with_port_2778() -> None:
    config = SimulatorConfig()
    assert config.rcs is False and (config.rcs_host, config.rcs_port) == ("127.0.0.1", 2778)


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("rcs_prot = 2778\n", "simulator.rcs_prot", "unknown key"),
    ("rcs = 1\n", "simulator.rcs", "true or false"),
    ("rcs_port = 70000\n", "simulator.rcs_port", "a port 0-65535"),
    ('rcs_webhook_url = "ftp://x"\n', "simulator.rcs_webhook_url", "http://"),
    ("rcs_agent_ids = []\n", "simulator.rcs_agent_ids", "a non-empty array"),
    ('rcs_default_state = "asleep"\n', "simulator.rcs_default_state", '"not_capable"'),
    ('rcs_phones = { "+33611111111" = "asleep" }\n', 'simulator.rcs_phones."+33611111111"',
     '"offline"'),
    ('rcs_phones = { "0611111111" = "capable" }\n', 'simulator.rcs_phones."0611111111"',
     "E.164"),
    ('rcs_phones = "capable"\n', "simulator.rcs_phones", "a table"),
    ('voice_numbers = { "+33611111111" = "ring" }\n', 'simulator.voice_numbers."+33611111111"',
     '"no-answer"'),
    ('rcs_read_delay = "soon"\n', "simulator.rcs_read_delay", "a duration"),
    ('voice_token = ""\n', "simulator.voice_token", "non-empty"),
])
def test_a_bad_simulator_rcs_key_is_an_error_naming_file_and_key(
        tmp_path: Path, text: str, key: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert f": {key}: " in message and expected in message, message


def test_check_reports_rcs_port_clashing_with_another_simulator_port(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(MINIMAL + "[simulator]\nrcs = true\nrcs_port = 2777\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        check(path)
    assert "simulator.rcs_port: expected a port not used elsewhere, got 2777" in str(info.value)


def test_simulator_state_names_are_the_simulators_own() -> None:
    assert set(get_args(RbmPhoneState)) == set(rbm_simulator.STATES)
    assert set(get_args(VoiceBehaviour)) == set(voice_simulator.BEHAVIOURS)


def test_simulate_smsc_alone_pushes_to_the_http_listener_its_config_file_describes(
        tmp_path: Path) -> None:
    path = write(tmp_path, "rcs = true\n", before='[http]\nhost = "0.0.0.0"\nport = 9090\n')
    assert cli._gateway_events_url(str(path)) == "http://127.0.0.1:9090/v1/rcs/events"
    assert cli._gateway_events_url(None) == "http://127.0.0.1:8080/v1/rcs/events"
