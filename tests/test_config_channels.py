"""Channel connectors in the config: [[rcs]] (RBM agents) and [[voice]] (HTTP voice
providers) load into typed settings, routers may name them ("rcs:<name>", "tts:<name>"),
accounts say their RCS wait and language; every refusal names the file, the key and what
was expected."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.config import load_config
from gateway.model import PartState
from tests.test_config import MINIMAL, error_of, write


def credentials(tmp_path: Path) -> Path:
    path = tmp_path / "rbm.json"
    path.write_text(json.dumps({"client_id": "smsgw", "client_secret": "demo-secret"}))
    return path


PUSH_TOKEN = 'push_token = "0123456789abcdef0123"\n'
CALLBACK_TOKEN = 'callback_token = "voice-callback-token-1"\n'


def rcs(tmp_path: Path, extra: str = "", *, token: str = PUSH_TOKEN) -> str:
    return (f'[[rcs]]\nname = "rbm"\nagent_id = "acme-agent"\n'
            f'credentials_file = "{credentials(tmp_path)}"\n{token}{extra}')


VOICE = '''[[voice]]
name = "voice"
caller_id = "+33100000000"
callback_token = "voice-callback-token-1"
voices = { fr = "Celine" }
[voice.place]
url = "http://127.0.0.1:2778/voice/v1/calls"
headers = { Authorization = "Bearer t" }
body = { to = "{to_e164}", text = "{text}", ring = "{timeout}" }
[voice.status]
status_field = "call.status"
id_field = "call.id"
outcomes = { voicemail = "UNDELIVERABLE", ringing = "" }
'''

ROUTER = '''[[router]]
name = "omni"
type = "account"
accounts = ["acme"]
channels = ["rcs:rbm", "tts:voice", "sms:opA"]
'''


def test_rcs_and_voice_connectors_load_and_routers_may_name_them(tmp_path: Path) -> None:
    text = MINIMAL + rcs(tmp_path, 'base_url = "http://127.0.0.1:2778"\nsms_sender = "ACME"\n'
                         'capability_ttl = "5m"\n') + VOICE + ROUTER
    config = load_config(write(tmp_path, text))
    agent = config.rcs["rbm"]
    assert agent.agent_id == "acme-agent" and agent.sms_sender == "ACME"
    assert agent.base_url == "http://127.0.0.1:2778" and agent.capability_ttl == 300.0
    assert agent.token_url == "https://oauth2.googleapis.com/token"  # Google's by default
    assert agent.push_token == "0123456789abcdef0123"
    voice = config.voice["voice"]
    assert voice.place.url.endswith("/voice/v1/calls") and voice.place.method == "POST"
    assert voice.callback_token == "voice-callback-token-1"
    assert voice.status.outcomes["voicemail"] is PartState.UNDELIVERABLE
    assert voice.status.outcomes["ringing"] is None
    assert voice.status.outcomes["completed"] is PartState.DELIVERED  # defaults kept
    assert config.routers[0].channels == (("rcs", "rbm"), ("tts", "voice"), ("sms", "opA"))


def test_account_rcs_wait_and_language(tmp_path: Path) -> None:
    text = MINIMAL.replace('[[account]]\n', '[[account]]\nrcs_wait = "30s"\n'
                           'language = "fr-FR"\n')
    account = load_config(write(tmp_path, text)).accounts["acme"]
    assert account.rcs_wait == 30.0 and account.language == "fr-FR"
    msg = error_of(tmp_path, MINIMAL.replace('[[account]]\n', '[[account]]\nlanguage = "french'
                                             ' please"\n'))
    assert 'account "acme".language: expected a BCP 47 language tag' in msg


def test_rcs_needs_readable_credentials(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + '[[rcs]]\nname = "rbm"\nagent_id = "a"\n')
    assert 'rcs "rbm".credentials_file: required key missing' in msg
    missing = tmp_path / "nowhere.json"
    msg = error_of(tmp_path, MINIMAL + f'[[rcs]]\nname = "rbm"\nagent_id = "a"\n'
                   f'credentials_file = "{missing}"\n')
    assert 'rcs "rbm".credentials_file:' in msg and "cannot read the RBM credentials" in msg
    bad = tmp_path / "bad.json"
    bad.write_text('{"client_id": "x"}')
    msg = error_of(tmp_path, MINIMAL + f'[[rcs]]\nname = "rbm"\nagent_id = "a"\n'
                   f'credentials_file = "{bad}"\n')
    assert "expected a Google service account key" in msg


def service_account(tmp_path: Path, private_key: str) -> Path:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({"type": "service_account", "private_key": private_key,
                                "client_email": "agent@example.iam.gserviceaccount.com"}))
    return path


def test_a_service_account_key_is_parsed_at_load_and_a_bad_one_refused(tmp_path: Path) -> None:
    """Rule: a private key that does not parse is a config error naming the file and key,
    not a crash at the first send."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    def group(path: Path) -> str:
        return f'[[rcs]]\nname = "rbm"\nagent_id = "a"\ncredentials_file = "{path}"\n' \
            + PUSH_TOKEN

    good = service_account(tmp_path, pem(rsa.generate_private_key(65537, 2048)))
    assert load_config(write(tmp_path, MINIMAL + group(good))).rcs["rbm"].credentials_file \
        == good
    bad = service_account(tmp_path, "-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n"
                                    "-----END PRIVATE KEY-----\n")
    msg = error_of(tmp_path, MINIMAL + group(bad))
    assert f'rcs "rbm".credentials_file: {bad}: the service account\'s private_key is not a ' \
        'usable PEM private key' in msg
    not_rsa = service_account(tmp_path, pem(ec.generate_private_key(ec.SECP256R1())))
    msg = error_of(tmp_path, MINIMAL + group(not_rsa))
    assert f"{not_rsa}: the service account's private_key is not an RSA key" in msg


def test_the_push_and_callback_tokens_are_required(tmp_path: Path) -> None:
    """Rule: /v1/rcs/events and /v1/voice/status/<name> share the public HTTP listener, so
    each [[rcs]] needs its push_token and each [[voice]] its callback_token: without them
    anyone reaching it could forge a user's STOP or a delivery. The error says how to make
    one."""
    msg = error_of(tmp_path, MINIMAL + rcs(tmp_path, token=""))
    assert 'rcs "rbm".push_token: required key missing' in msg
    assert "openssl rand -hex 32" in msg and "/v1/rcs/events" in msg
    msg = error_of(tmp_path, MINIMAL + rcs(tmp_path, token='push_token = ""\n'))
    assert 'rcs "rbm".push_token: expected the secret' in msg and 'got ""' in msg
    msg = error_of(tmp_path, MINIMAL + rcs(tmp_path, token='push_token = "short"\n'))
    assert 'rcs "rbm".push_token: expected' in msg and "16 to 256" in msg
    msg = error_of(tmp_path, MINIMAL + VOICE.replace(CALLBACK_TOKEN, ""))
    assert 'voice "voice".callback_token: required key missing' in msg
    assert "openssl rand -hex 32" in msg and "/v1/voice/status/" in msg


def test_a_voice_callback_url_must_carry_the_token(tmp_path: Path) -> None:
    """Rule: a callback URL without ?token= would have every status callback refused."""
    base = "http://127.0.0.1:8080/v1/voice/status/{connector}"
    msg = error_of(tmp_path, MINIMAL + VOICE.replace(
        CALLBACK_TOKEN, CALLBACK_TOKEN + f'callback_url = "{base}"\n'))
    assert 'voice "voice".callback_url: expected a URL carrying the token' in msg
    for url in (base + "?token={callback_token}", base + "?token=voice-callback-token-1"):
        config = load_config(write(tmp_path, MINIMAL + VOICE.replace(
            CALLBACK_TOKEN, CALLBACK_TOKEN + f'callback_url = "{url}"\n')))
        assert config.voice["voice"].callback_url == url


def test_the_demo_simulator_pushes_with_the_demo_agents_token() -> None:
    """Rule: conf/demo.toml's built-in RBM platform pushes with the token its [[rcs]] wants,
    and its voice callbacks carry theirs (else the demo's events would all be refused)."""
    from tests.test_config import CONF

    config = load_config(CONF / "demo.toml")
    assert config.simulator is not None and config.rcs["rbm"].push_token
    assert config.simulator.rcs_push_token == config.rcs["rbm"].push_token
    voice = config.voice["voice"]
    assert voice.callback_token and "?token={callback_token}" in voice.callback_url


def test_rcs_refuses_a_base_url_that_is_not_an_http_url(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + rcs(tmp_path, 'base_url = "ftp://x"\n'))
    assert 'rcs "rbm".base_url: expected an absolute http:// or https:// URL' in msg


def test_connector_names_are_unique_across_channels(tmp_path: Path) -> None:
    text = MINIMAL + rcs(tmp_path).replace('name = "rbm"', 'name = "opA"')
    msg = error_of(tmp_path, text)
    assert ('rcs "opA".name: expected a name no other connector has, got the name of an '
            '[[smsc]] connector') in msg


def test_a_router_naming_an_unknown_rcs_connector_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + ROUTER.replace('"tts:voice", ', ''))
    assert 'router "omni".channels' in msg and '"rbm"' in msg


def test_voice_template_placeholders_are_checked_at_load(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + VOICE.replace("{text}", "{txt}"))
    assert 'voice "voice".place.body.text: unknown placeholder {txt}' in msg


def test_voice_needs_a_place_request_and_known_outcomes(tmp_path: Path) -> None:
    no_place = VOICE.split("[voice.place]")[0]
    msg = error_of(tmp_path, MINIMAL + no_place)
    assert 'voice "voice".place: required table missing' in msg
    msg = error_of(tmp_path, MINIMAL + VOICE.replace('"UNDELIVERABLE"', '"GONE"'))
    assert 'voice "voice".status.outcomes.voicemail:' in msg and "'GONE'" in msg
    msg = error_of(tmp_path, MINIMAL + VOICE.replace('headers = { Authorization = "Bearer t" }',
                                                     'headers = { Authorization = 3 }'))
    assert 'voice "voice".place.headers.Authorization: expected a string, got 3' in msg
