"""Guest link tokens: signing, verification (forgery, tampering, expiry, malformed input), keys, URLs."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from visio_matrix.web.guest_links import (
    CONTEXT,
    MAX_TOKEN_CHARS,
    GuestLink,
    LinkError,
    generate_key_text,
    link_url,
    load_private_key,
    load_public_key,
    new_link,
    public_key_text,
    sign_link,
    verify_link,
)

ROOM = "!abcdef:example.org"
NOW = 1_700_000_000
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
LINK = GuestLink(ROOM, NOW + 3600, "link-1")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_raw(payload: bytes, key: Ed25519PrivateKey = KEY) -> str:
    """A token with any payload bytes, correctly signed: reaches the payload parser."""
    body = b64(payload)
    return f"{body}.{b64(key.sign(CONTEXT + body.encode()))}"


def signed_json(obj: Any) -> str:
    return signed_raw(json.dumps(obj).encode())


GOOD_PAYLOAD = {"v": 1, "room": ROOM, "exp": NOW + 60, "id": "abc"}


def test_round_trip() -> None:
    token = sign_link(LINK, KEY)
    assert verify_link(token, [KEY.public_key()], NOW) == LINK
    assert all(ch.isalnum() or ch in "-_." for ch in token)


def test_round_trip_non_ascii_room() -> None:
    link = GuestLink("!é€😀:exämple.org", NOW + 10, "x")
    assert verify_link(sign_link(link, KEY), [KEY.public_key()], NOW) == link


def test_new_link() -> None:
    link = new_link(ROOM, NOW + 0.5, 3600)
    assert link.room_id == ROOM and link.expires_at_s == NOW + 3600
    assert len(link.link_id) >= 20 and new_link(ROOM, NOW, 1).link_id != link.link_id
    with pytest.raises(ValueError):
        new_link(ROOM, NOW, 0)


@pytest.mark.parametrize(
    ("now", "ok"),
    [(NOW + 3599, True), (NOW + 3599.999, True), (NOW + 3600, False), (NOW + 10_000, False)],
)
def test_expiry_boundary(now: float, ok: bool) -> None:
    token = sign_link(LINK, KEY)
    if ok:
        assert verify_link(token, [KEY.public_key()], now) == LINK
    else:
        with pytest.raises(LinkError) as err:
            verify_link(token, [KEY.public_key()], now)
        assert err.value.code == "expired"


def test_other_key_is_bad_signature() -> None:
    with pytest.raises(LinkError) as err:
        verify_link(sign_link(LINK, OTHER), [KEY.public_key()], NOW)
    assert err.value.code == "bad_signature"


def test_key_rotation() -> None:
    old_token = sign_link(LINK, OTHER)
    new_token = sign_link(LINK, KEY)
    keys = [KEY.public_key(), OTHER.public_key()]
    assert verify_link(old_token, keys, NOW) == LINK
    assert verify_link(new_token, keys, NOW) == LINK
    with pytest.raises(LinkError) as err:  # the old key dropped from the config
        verify_link(old_token, [KEY.public_key()], NOW)
    assert err.value.code == "bad_signature"


def test_no_keys_is_a_config_bug() -> None:
    with pytest.raises(ValueError, match="no public key"):
        verify_link(sign_link(LINK, KEY), [], NOW)


def tampered_payload() -> str:
    body, sig = sign_link(LINK, KEY).split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["room"] = "!other:example.org"
    return f"{b64(json.dumps(payload).encode())}.{sig}"


def tampered_expiry() -> str:
    body, sig = sign_link(LINK, KEY).split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["exp"] = NOW + 10**9
    return f"{b64(json.dumps(payload).encode())}.{sig}"


def flipped_signature() -> str:
    body, sig = sign_link(LINK, KEY).split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[0] ^= 1
    return f"{body}.{b64(bytes(raw))}"


def without_context() -> str:
    body = b64(json.dumps(GOOD_PAYLOAD).encode())
    return f"{body}.{b64(KEY.sign(body.encode()))}"


def swapped_halves() -> str:
    _, sig = sign_link(LINK, KEY).split(".")
    other_body, _ = sign_link(GuestLink(ROOM, NOW + 7200, "link-2"), KEY).split(".")
    return f"{other_body}.{sig}"


@pytest.mark.parametrize(
    "token",
    [tampered_payload(), tampered_expiry(), flipped_signature(), without_context(), swapped_halves()],
    ids=["room", "exp", "signature-bit", "no-context", "other-link-signature"],
)
def test_tampering_is_bad_signature(token: str) -> None:
    with pytest.raises(LinkError) as err:
        verify_link(token, [KEY.public_key()], NOW)
    assert err.value.code == "bad_signature"


GOOD_SIG = b64(b"\0" * 64)

MALFORMED: list[tuple[str, Any, str]] = [
    ("empty", "", "empty"),
    ("not-str", None, "empty"),
    ("huge", "a" * (MAX_TOKEN_CHARS + 1), "longer than"),
    ("huge-valid-shape", "a" * 2000 + "." + GOOD_SIG, "longer than"),
    ("no-dot", "abcdef", "no signature part"),
    ("empty-body", "." + GOOD_SIG, "no signature part"),
    ("empty-sig", "abcdef.", "no signature part"),
    ("bad-chars-body", "ab+/cd." + GOOD_SIG, "payload is not base64url"),
    ("padding", "abcd==." + GOOD_SIG, "payload is not base64url"),
    ("space", "ab cd." + GOOD_SIG, "payload is not base64url"),
    ("bad-length", "abcde." + GOOD_SIG, "payload is not base64url"),
    ("bad-sig-chars", "abcd.!!!!", "signature is not base64url"),
    ("three-parts", "abcd." + GOOD_SIG + ".abcd", "signature is not base64url"),
    ("short-sig", "abcd." + b64(b"\0" * 63), "not 64 bytes"),
    ("long-sig", "abcd." + b64(b"\0" * 65), "not 64 bytes"),
    ("non-ascii", "abcé." + GOOD_SIG, "payload is not base64url"),
]


@pytest.mark.parametrize(
    ("token", "message"), [(t, m) for _, t, m in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_shapes(token: Any, message: str) -> None:
    with pytest.raises(LinkError) as err:
        verify_link(token, [KEY.public_key()], NOW)
    assert err.value.code == "malformed"
    assert message in err.value.message


SIGNED_BAD: list[tuple[str, str, str]] = [
    ("not-json", signed_raw(b"{nope"), "not JSON"),
    ("not-utf8", signed_raw(b"\xff\xfe"), "not JSON"),
    ("array", signed_json([1, 2]), "not a JSON object"),
    ("string", signed_json("x"), "not a JSON object"),
    ("no-version", signed_json({k: v for k, v in GOOD_PAYLOAD.items() if k != "v"}), "version"),
    ("version-2", signed_json({**GOOD_PAYLOAD, "v": 2}), "version"),
    ("version-true", signed_json({**GOOD_PAYLOAD, "v": True}), "version"),
    ("no-room", signed_json({k: v for k, v in GOOD_PAYLOAD.items() if k != "room"}), "lacks room"),
    ("no-exp-id", signed_json({"v": 1, "room": ROOM}), "lacks exp, id"),
    ("extra", signed_json({**GOOD_PAYLOAD, "admin": True}), "unknown fields: admin"),
    ("room-int", signed_json({**GOOD_PAYLOAD, "room": 5}), "room_id"),
    ("room-not-bang", signed_json({**GOOD_PAYLOAD, "room": "#alias:x"}), "room_id"),
    ("room-space", signed_json({**GOOD_PAYLOAD, "room": "!a b:x"}), "room_id"),
    ("room-long", signed_json({**GOOD_PAYLOAD, "room": "!" + "a" * 300}), "room_id"),
    ("exp-str", signed_json({**GOOD_PAYLOAD, "exp": str(NOW + 60)}), "expires_at_s"),
    ("exp-float", signed_json({**GOOD_PAYLOAD, "exp": NOW + 60.5}), "expires_at_s"),
    ("exp-bool", signed_json({**GOOD_PAYLOAD, "exp": True}), "expires_at_s"),
    ("exp-null", signed_json({**GOOD_PAYLOAD, "exp": None}), "expires_at_s"),
    ("exp-negative", signed_json({**GOOD_PAYLOAD, "exp": -1}), "expires_at_s"),
    ("id-int", signed_json({**GOOD_PAYLOAD, "id": 7}), "link_id"),
    ("id-empty", signed_json({**GOOD_PAYLOAD, "id": ""}), "link_id"),
    ("id-slash", signed_json({**GOOD_PAYLOAD, "id": "a/b"}), "link_id"),
]


@pytest.mark.parametrize(
    ("token", "message"), [(t, m) for _, t, m in SIGNED_BAD], ids=[c[0] for c in SIGNED_BAD]
)
def test_signed_but_malformed_payload(token: str, message: str) -> None:
    with pytest.raises(LinkError) as err:
        verify_link(token, [KEY.public_key()], NOW)
    assert err.value.code == "malformed"
    assert message in err.value.message


def test_unsigned_bad_json_is_bad_signature_not_parsed() -> None:
    # The signature is checked first: garbage from a stranger is never handed to the JSON parser.
    with pytest.raises(LinkError) as err:
        verify_link(signed_raw(b"{nope", OTHER), [KEY.public_key()], NOW)
    assert err.value.code == "bad_signature"


def test_good_payload_helper_is_valid() -> None:
    # The tables above differ from this one in one field each.
    assert verify_link(signed_json(GOOD_PAYLOAD), [KEY.public_key()], NOW) == GuestLink(ROOM, NOW + 60, "abc")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"room_id": "room"}, "room_id"),
        ({"expires_at_s": 1.5}, "expires_at_s"),
        ({"expires_at_s": 0}, "positive"),
        ({"link_id": "x" * 65}, "link_id"),
    ],
)
def test_guest_link_validation(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"room_id": ROOM, "expires_at_s": NOW, "link_id": "a", **kwargs}
    with pytest.raises(ValueError, match=message):
        GuestLink(**args)


def test_sign_refuses_oversized_token() -> None:
    link = GuestLink("!" + "😀" * 200, NOW + 10, "x")
    with pytest.raises(ValueError, match="longer than"):
        sign_link(link, KEY)


# --- URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://visio.example.org", "https://visio.example.org/guest/T.S"),
        ("https://visio.example.org/", "https://visio.example.org/guest/T.S"),
        ("https://example.org/visio/", "https://example.org/visio/guest/T.S"),
        ("http://localhost:8080", "http://localhost:8080/guest/T.S"),
    ],
)
def test_link_url(base: str, expected: str) -> None:
    assert link_url(base, "T.S") == expected


@pytest.mark.parametrize(
    ("base", "token"),
    [
        ("visio.example.org", "T.S"),
        ("ftp://visio.example.org", "T.S"),
        ("https://", "T.S"),
        ("https://x.org/?a=1", "T.S"),
        ("https://x.org/#f", "T.S"),
        ("https://x.org", ""),
        ("https://x.org", "a/b.c"),
        ("https://x.org", "a..b"),
    ],
)
def test_link_url_refuses(base: str, token: str) -> None:
    with pytest.raises(ValueError):
        link_url(base, token)


def test_link_url_of_real_token_verifies() -> None:
    token = sign_link(LINK, KEY)
    url = link_url("https://visio.example.org", token)
    assert verify_link(url.rsplit("/", 1)[1], [KEY.public_key()], NOW) == LINK


# --- keys ------------------------------------------------------------------------------------------


def test_generated_key_loads_and_signs() -> None:
    text = generate_key_text()
    assert text.startswith("-----BEGIN PRIVATE KEY-----")
    key = load_private_key(text)
    public = load_public_key(public_key_text(key))
    assert verify_link(sign_link(LINK, key), [public], NOW) == LINK
    assert generate_key_text() != text


def test_raw_base64_keys() -> None:
    seed = KEY.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for text in (base64.b64encode(seed).decode(), b64(seed), f"  {base64.b64encode(seed).decode()}\n"):
        key = load_private_key(text)
        assert verify_link(sign_link(LINK, key), [KEY.public_key()], NOW) == LINK
    for text in (base64.b64encode(raw_public).decode(), b64(raw_public)):
        assert verify_link(sign_link(LINK, KEY), [load_public_key(text)], NOW) == LINK


def test_public_key_text_of_public_key() -> None:
    assert public_key_text(KEY.public_key()) == public_key_text(KEY)


EC_KEY = generate_private_key(SECP256R1())
EC_PRIVATE_PEM = EC_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
EC_PUBLIC_PEM = (
    EC_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
ENCRYPTED_PEM = KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"pw"),
).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        (None, "must be text"),
        ("not a key!", "neither PEM nor base64"),
        (base64.b64encode(b"\1" * 31).decode(), "32 bytes"),
        (base64.b64encode(b"\1" * 64).decode(), "32 bytes"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a valid PEM"),
        (EC_PRIVATE_PEM, "must be an Ed25519 key"),
        (ENCRYPTED_PEM, "encrypted"),
    ],
)
def test_load_private_key_errors(text: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        load_private_key(text)
    if isinstance(text, str) and len(text) > 10:
        assert text.strip() not in str(err.value)  # a secret is never quoted back


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("x y", "neither PEM nor base64"),
        (base64.b64encode(b"\1" * 33).decode(), "32 bytes"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a valid PEM"),
        (EC_PUBLIC_PEM, "must be an Ed25519 key"),
    ],
)
def test_load_public_key_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_public_key(text)
