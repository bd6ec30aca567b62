"""Webhook signatures, pure: Bota's scheme, Standard Webhooks and botasync's own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import typing
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook

from botasync.config import WebhookHandlerConfig
from botasync.events.signing import (
    SIGNATURE_MODES,
    SignatureMode,
    bota_signature,
    parse,
    sign,
    signing_key,
    standard_key,
    standard_signature,
    verify,
    webhook_headers,
)

SECRET = b"whsec_test"
BODY = b'{"id":"evt_1","type":"recording.created"}'
T = 1_700_000_000


def reference_mac(secret: bytes, body: bytes, t: int) -> str:
    """The MAC computed independently of the module, as a receiver would."""
    return hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def test_sign_matches_an_independent_hmac() -> None:
    """The header is `t=<unix>,v1=<hex hmac-sha256 of "t." + body>`."""
    assert sign(SECRET, BODY, T) == f"t={T},v1={reference_mac(SECRET, BODY, T)}"


@pytest.mark.parametrize(
    ("body", "header_t", "now", "secret", "expected"),
    [
        (BODY, T, T, SECRET, True),
        (BODY, T, T + 300, SECRET, True),  # exactly at the tolerance
        (BODY, T, T - 300, SECRET, True),  # a sender clock slightly ahead
        (BODY, T, T + 301, SECRET, False),  # stale
        (BODY, T, T - 301, SECRET, False),  # from the future
        (BODY + b" ", T, T, SECRET, False),  # tampered body
        (BODY, T, T, b"other", False),  # wrong secret
    ],
)
def test_verify_cases(body: bytes, header_t: int, now: int, secret: bytes, expected: bool) -> None:
    """Verification accepts a fresh genuine signature and nothing else."""
    header = sign(SECRET, BODY, header_t)
    assert verify(secret, body, header, now) is expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"t={T}",
        f"v1={reference_mac(SECRET, BODY, T)}",
        f"t=abc,v1={reference_mac(SECRET, BODY, T)}",
        f"t={T},v0={reference_mac(SECRET, BODY, T)}",
        f"t={T + 1},v1={reference_mac(SECRET, BODY, T)}",  # timestamp moved
        f"t=\u00b2,v1={reference_mac(SECRET, BODY, T)}",  # a digit to str.isdigit, not to int()
    ],
)
def test_malformed_or_forged_headers_fail(header: str) -> None:
    """A header missing its parts, or whose timestamp was changed, never verifies."""
    assert verify(SECRET, BODY, header, T) is False


def test_any_of_several_v1_signatures_verifies() -> None:
    """During a secret rotation a header may carry one signature per secret."""
    header = f"t={T},v1={reference_mac(b'old', BODY, T)},v1={reference_mac(SECRET, BODY, T)}"
    assert parse(header) == (T, [reference_mac(b"old", BODY, T), reference_mac(SECRET, BODY, T)])
    assert verify(SECRET, BODY, header, T) is True
    assert verify(b"neither", BODY, header, T) is False


@given(secret=st.binary(min_size=1, max_size=64), body=st.binary(max_size=512),
       t=st.integers(min_value=0, max_value=2**40), flip=st.integers(min_value=0))
def test_round_trip_and_any_flipped_byte_fails(
    secret: bytes, body: bytes, t: int, flip: int
) -> None:
    """Whatever the body, its own signature verifies and one changed byte breaks it."""
    header = sign(secret, body, t)
    assert header == f"t={t},v1={reference_mac(secret, body, t)}"
    assert verify(secret, body, header, t)
    if body:
        i = flip % len(body)
        tampered = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
        assert not verify(secret, tampered, header, t)


# --- bota ------------------------------------------------------------------------------


def test_bota_signature_is_v1_hex_of_timestamp_dot_body() -> None:
    """`v1=` and 64 lowercase hex digits of HMAC-SHA256 over "<timestamp>." + the raw body."""
    sig = bota_signature(b"s3cret", BODY, T)
    assert sig == "v1=" + hmac.new(b"s3cret", f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert len(sig) == 3 + 64 and sig[3:] == sig[3:].lower()


@given(secret=st.text(min_size=1, max_size=40), body=st.binary(max_size=256),
       t=st.integers(min_value=10**9, max_value=10**10 - 1))
def test_bota_signature_is_keyed_with_the_secret_as_utf8(secret: str, body: bytes, t: int) -> None:
    """Any secret text is used as its UTF-8 bytes, as Bota's receivers read it."""
    key = signing_key("bota", secret)
    assert key == secret.encode("utf-8")
    expected = hmac.new(key, str(t).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    assert bota_signature(key, body, t) == f"v1={expected}"


# --- standard webhooks -------------------------------------------------------------------

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_standard_signature_matches_the_specifications_example() -> None:
    """The Standard Webhooks reference vector: id, timestamp, payload and signature."""
    key = standard_key(SPEC_SECRET)
    sig = standard_signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", b'{"test": 2432232314}',
                             1614265330)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@given(key=st.binary(min_size=1, max_size=64), body=st.text(max_size=200),
       msg_id=st.from_regex(r"evt_[0-9A-Za-z]{1,26}", fullmatch=True),
       t=st.integers(min_value=10**9, max_value=4 * 10**9))
def test_standard_signature_agrees_with_the_standardwebhooks_package(
    key: bytes, body: str, msg_id: str, t: int
) -> None:
    """The package's own `sign` gives the same value for any key, id, time and body."""
    secret = "whsec_" + base64.b64encode(key).decode()
    assert standard_key(secret) == key
    theirs = Webhook(secret).sign(msg_id, datetime.fromtimestamp(t, tz=UTC), body)
    assert standard_signature(key, msg_id, body.encode(), t) == theirs


@pytest.mark.parametrize(
    ("secret", "key"),
    [
        ("whsec_c2VjcmV0", b"secret"),
        ("whsec_YWI=", b"ab"),
        ("whsec_YWI", b"ab"),  # padding left out
    ],
)
def test_standard_key_decodes_the_base64_after_whsec(secret: str, key: bytes) -> None:
    """The key is the base64 part decoded, with or without its padding."""
    assert standard_key(secret) == key
    assert signing_key("standard", secret) == key


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("c2VjcmV0", "it does not start with whsec_"),
        ("WHSEC_c2VjcmV0", "it does not start with whsec_"),
        ("whsec_", "the key after whsec_ is empty"),
        ("whsec_not base64!", "the rest is not base64"),
        ("whsec_c2VjcmV0\n", "the rest is not base64"),  # a newline pasted with it
        ("whsec_a", "the rest is not base64"),  # one character cannot be base64
        ("whsec_c2Vj-mV0", "the rest is not base64"),  # the URL-safe alphabet is not base64
    ],
)
def test_a_standard_secret_that_is_not_whsec_base64_is_refused(secret: str, why: str) -> None:
    """One fixed reason (the secret itself never appears in it)."""
    with pytest.raises(ValueError, match=r'^a "standard" secret') as info:
        standard_key(secret)
    assert str(info.value) == f'a "standard" secret must be whsec_ followed by base64 ({why})'


# --- choosing ------------------------------------------------------------------------


def test_the_config_and_the_signer_name_the_same_modes() -> None:
    """The config key accepts exactly the modes the signer knows, `bota` first (the default)."""
    assert typing.get_args(SignatureMode) == SIGNATURE_MODES
    field = WebhookHandlerConfig.model_fields["signature"]
    assert typing.get_args(field.annotation) == SIGNATURE_MODES
    assert field.default == SIGNATURE_MODES[0] == "bota"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("bota", {"X-Bota-Event-Id": "evt_1", "X-Bota-Timestamp": str(T),
                  "X-Bota-Signature": "v1=" + reference_mac(SECRET, BODY, T)}),
        ("standard", {"webhook-id": "evt_1", "webhook-timestamp": str(T),
                      "webhook-signature": "v1," + base64.b64encode(hmac.new(
                          SECRET, f"evt_1.{T}.".encode() + BODY, hashlib.sha256).digest()).decode()}),
        ("botasync", {"Botasync-Signature": f"t={T},v1={reference_mac(SECRET, BODY, T)}"}),
    ],
)
def test_webhook_headers_per_mode(mode: SignatureMode, expected: dict[str, str]) -> None:
    """Each mode's headers, computed here independently of the module."""
    assert webhook_headers(mode, SECRET, BODY, "evt_1", T) == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("bota", {"X-Bota-Event-Id": "evt_1"}), ("standard", {"webhook-id": "evt_1"}),
     ("botasync", {})],
)
def test_without_a_key_only_the_event_id_is_sent(mode: SignatureMode, expected: dict[str, str]) -> None:
    """No secret: the mode's id header, no timestamp and no signature."""
    assert webhook_headers(mode, None, BODY, "evt_1", T) == expected
