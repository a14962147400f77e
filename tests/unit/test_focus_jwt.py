"""LiveKit access tokens: what is issued, and every way a forged or stale token is refused.

Hostile tokens are built by hand (base64url + HMAC from the standard library), not with the code
under test, so that a bug in issuing cannot hide a bug in verifying.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from visio_matrix.focus.jwt import (
    TokenClaims,
    TokenError,
    VideoGrants,
    VisioClaim,
    issue_token,
    verify_token,
)

KEY, SECRET = "visio", "s" * 43
KEYS = {KEY: SECRET}
NOW = 1_800_000_000.0
VISIO = VisioClaim(
    user_id="@alice:example.org",
    device_id="DEV",
    room_id="!r:example.org",
    slot_id="m.call#ROOM",
    can_open=True,
)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def forge(
    header: dict[str, Any], payload: dict[str, Any], secret: str = SECRET, digest: Any = hashlib.sha256
) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def good_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "iss": KEY,
        "sub": "@alice:example.org:DEV",
        "nbf": int(NOW),
        "exp": int(NOW) + 3600,
        "video": {"roomJoin": True, "room": "ROOMNAME", "canPublish": True, "canSubscribe": True},
        "io.visio": VISIO.to_claim(),
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def issue(**changes: Any) -> str:
    args: dict[str, Any] = {
        "api_key": KEY,
        "api_secret": SECRET,
        "identity": "@alice:example.org:DEV",
        "grants": VideoGrants(room="ROOMNAME"),
        "visio": VISIO,
        "now": NOW,
        "lifetime_s": 3600,
    }
    args.update(changes)
    return issue_token(**args)


def test_issued_token_has_the_livekit_claims() -> None:
    token = issue(name="Alice")
    header_part, payload_part, _ = token.split(".")
    assert json.loads(b64url_decode(header_part)) == {"alg": "HS256", "typ": "JWT"}
    payload = json.loads(b64url_decode(payload_part))
    assert payload == {
        "iss": KEY,
        "sub": "@alice:example.org:DEV",
        "nbf": int(NOW),
        "exp": int(NOW) + 3600,
        "name": "Alice",
        "video": {
            "roomJoin": True,
            "room": "ROOMNAME",
            "canPublish": True,
            "canSubscribe": True,
            "canPublishData": True,
            "canUpdateOwnMetadata": True,
        },
        "io.visio": {
            "user_id": "@alice:example.org",
            "device_id": "DEV",
            "room_id": "!r:example.org",
            "slot_id": "m.call#ROOM",
            "can_open": True,
        },
    }


def test_issued_token_verifies_into_claims() -> None:
    claims = verify_token(issue(), KEYS, NOW + 10)
    assert claims == TokenClaims(
        issuer=KEY,
        identity="@alice:example.org:DEV",
        not_before=int(NOW),
        expires_at=int(NOW) + 3600,
        grants=VideoGrants(room="ROOMNAME"),
        visio=VISIO,
    )


def test_a_hand_made_hs256_token_verifies() -> None:
    """Interoperability: a token any HS256 library would produce (LiveKit's SDK omits absent grants)."""
    claims = verify_token(forge({"alg": "HS256", "typ": "JWT"}, good_payload()), KEYS, NOW)
    assert claims.grants.can_publish_data is True  # absent means allowed, as in LiveKit
    assert claims.visio.can_open is True


def test_payload_is_readable_with_atob() -> None:
    """Element Call decodes the payload with atob(), which refuses '-' and '_'."""
    hostile = VisioClaim("@a:x", "D>?~\x7f" * 20, "!r>?:x", "m.call#~?>", False)
    for identity in ("?" * 7, ">" * 8, "~~~~~~~~~", "a?b>c~d"):
        token = issue(identity=identity, visio=hostile)
        payload_part = token.split(".")[1]
        assert "-" not in payload_part and "_" not in payload_part
        decoded = json.loads(base64.b64decode(payload_part + "=" * (-len(payload_part) % 4), validate=True))
        assert decoded["sub"] == identity
        assert verify_token(token, KEYS, NOW).visio == hostile


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "malformed token"),
        ("abc", "malformed token"),
        ("a.b", "malformed token"),
        ("a.b.c.d", "malformed token"),
        ("!!!.???.###", "malformed token"),
        (f"{b64url(b'not json')}.{b64url(b'{}')}.sig", "malformed token"),
        (f"{b64url(b'{}')}.{b64url(b'[1]')}.sig", "malformed token"),
    ],
)
def test_malformed_tokens_are_refused(token: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        verify_token(token, KEYS, NOW)


def test_alg_none_is_refused() -> None:
    unsigned = f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64url(json.dumps(good_payload()).encode())}."
    with pytest.raises(TokenError, match="algorithm must be HS256, got 'none'"):
        verify_token(unsigned, KEYS, NOW)


def test_hs512_is_refused_even_with_the_right_secret() -> None:
    token = forge({"alg": "HS512", "typ": "JWT"}, good_payload(), digest=hashlib.sha512)
    with pytest.raises(TokenError, match="algorithm must be HS256, got 'HS512'"):
        verify_token(token, KEYS, NOW)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA", "hs256", None])
def test_other_algorithm_headers_are_refused(alg: str | None) -> None:
    """Key confusion: an RSA/EC header HMAC-signed with the shared secret must not pass."""
    header = {"typ": "JWT"} if alg is None else {"alg": alg, "typ": "JWT"}
    with pytest.raises(TokenError, match="algorithm must be HS256"):
        verify_token(forge(header, good_payload()), KEYS, NOW)


@pytest.mark.parametrize("header", [{"crit": ["x-custom"], "x-custom": 1}, {"crit": ["b64"], "b64": False}])
def test_critical_header_extensions_are_refused(header: dict[str, Any]) -> None:
    with pytest.raises(TokenError, match=r"(?i)critical|b64"):
        verify_token(forge({"alg": "HS256", **header}, good_payload()), KEYS, NOW)


def test_wrong_secret_is_a_bad_signature() -> None:
    with pytest.raises(TokenError, match="bad token signature"):
        verify_token(forge({"alg": "HS256"}, good_payload(), secret="t" * 43), KEYS, NOW)


def test_tampered_payload_is_a_bad_signature() -> None:
    header, _payload, signature = issue(visio=VisioClaim("@bob:x", "D", "!r:x", "s", False)).split(".")
    payload = json.loads(b64url_decode(_payload))
    payload["io.visio"]["can_open"] = True
    tampered = f"{header}.{b64url(json.dumps(payload).encode())}.{signature}"
    with pytest.raises(TokenError, match="bad token signature"):
        verify_token(tampered, KEYS, NOW)


def test_truncated_signature_is_refused() -> None:
    token = issue()
    with pytest.raises(TokenError):
        verify_token(token[:-4], KEYS, NOW)


@pytest.mark.parametrize("iss", ["someone-else", None, 5])
def test_unknown_issuer_is_refused(iss: object) -> None:
    token = forge({"alg": "HS256"}, good_payload(iss=iss) if iss is not None else good_payload(iss=None))
    with pytest.raises(TokenError, match="unknown token issuer"):
        verify_token(token, KEYS, NOW)


def test_issuer_selects_the_secret() -> None:
    keys = {"one": "1" * 40, "two": "2" * 40}
    token = forge({"alg": "HS256"}, good_payload(iss="two"), secret="2" * 40)
    assert verify_token(token, keys, NOW).issuer == "two"
    wrong = forge({"alg": "HS256"}, good_payload(iss="two"), secret="1" * 40)
    with pytest.raises(TokenError, match="bad token signature"):
        verify_token(wrong, keys, NOW)


def test_expiry_with_leeway() -> None:
    token = issue(lifetime_s=600)
    verify_token(token, KEYS, NOW + 600 + 59)
    with pytest.raises(TokenError, match="expired"):
        verify_token(token, KEYS, NOW + 600 + 61)
    with pytest.raises(TokenError, match="expired"):
        verify_token(token, KEYS, NOW + 601, leeway_s=0)


def test_not_before_with_leeway() -> None:
    token = issue(now=NOW + 300)
    verify_token(token, KEYS, NOW + 241)
    with pytest.raises(TokenError, match="not valid before"):
        verify_token(token, KEYS, NOW + 239)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"exp": None}, "no exp"),
        ({"nbf": None}, "no nbf"),
        ({"exp": "soon"}, "exp must be a number"),
        ({"exp": True}, "exp must be a number"),
        ({"sub": None}, "no identity"),
        ({"sub": ""}, "no identity"),
        ({"name": 5}, "name must be a string"),
        ({"video": None}, "no video grants"),
        ({"video": {"room": "R"}}, "does not grant roomJoin"),
        ({"video": {"roomJoin": False, "room": "R"}}, "does not grant roomJoin"),
        ({"video": {"roomJoin": True}}, "name no room"),
        ({"video": {"roomJoin": True, "room": "R", "canPublish": "yes"}}, "canPublish must be true or false"),
        ({"io.visio": None}, "no io.visio claim"),
        ({"io.visio": {**VISIO.to_claim(), "user_id": ""}}, "io.visio.user_id"),
        ({"io.visio": {**VISIO.to_claim(), "can_open": "true"}}, "io.visio.can_open"),
    ],
)
def test_missing_or_malformed_claims_are_refused(changes: dict[str, Any], message: str) -> None:
    payload = good_payload()
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    with pytest.raises(TokenError, match=message):
        verify_token(forge({"alg": "HS256"}, payload), KEYS, NOW)


def test_grants_are_read_back() -> None:
    video = {
        "roomJoin": True,
        "room": "R",
        "canPublish": False,
        "canSubscribe": True,
        "canPublishData": False,
    }
    claims = verify_token(forge({"alg": "HS256"}, good_payload(video=video)), KEYS, NOW)
    assert claims.grants == VideoGrants(room="R", can_publish=False, can_publish_data=False)


def test_issue_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="identity"):
        issue(identity="")
    with pytest.raises(ValueError, match="lifetime"):
        issue(lifetime_s=0)
