"""Guest links: signed, expiring, one-room invitations for people without a Matrix account.

Flow::

    member: "!visio link"            bot (encrypted, into that room only)
        |                               |
        |  new_link(room, now, ttl) --> sign_link(link, private key) --> link_url(base, token)
        |
    guest opens  <base>/guest/<token>
        |
        verify_link(token, [current public key, older public keys...], now)
            ok         -> GuestLink(room_id, expires_at_s, link_id) -> lobby (see ``lobby.py``)
            LinkError  -> "malformed" | "bad_signature" | "expired": a clear page, no media

Token format: ``base64url(payload) "." base64url(signature)`` (no padding, so it is URL-safe as is).
The payload is compact JSON ``{"v": 1, "room": ..., "exp": ..., "id": ...}``; the Ed25519 signature
covers ``CONTEXT`` followed by the *encoded* payload part, so verification needs no canonical JSON and a
key used elsewhere by mistake cannot be tricked into signing a link. The signature is checked before
the payload is parsed; the whole token is bounded (``MAX_TOKEN_CHARS``) before anything is decoded.

A link is a bearer ticket into the *lobby* only: it carries no authority over media. Whoever holds it
can ask to be let in; a room member still has to admit them. ``expires_at_s`` is wall-clock seconds
since the epoch; a link is valid while ``now_s < expires_at_s``.

Key rotation: the config holds the current private key (``generate_key_text`` / ``load_private_key``)
and may keep previous public keys (``public_key_text`` / ``load_public_key``); ``verify_link`` accepts
a signature by any of them, so links already posted stay valid until they expire.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

VERSION = 1
CONTEXT = b"io.visio.guest-link.v1:"
MAX_TOKEN_CHARS = 1024
MAX_ROOM_ID_CHARS = 255  # the Matrix spec's limit on room IDs
MAX_LINK_ID_CHARS = 64
SIGNATURE_BYTES = 64
GUEST_PATH = "guest"

LinkErrorCode = Literal["malformed", "bad_signature", "expired"]

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_LINK_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_LINK_ID_CHARS}}}")
_PAYLOAD_KEYS = frozenset({"v", "room", "exp", "id"})


class LinkError(ValueError):
    """A guest link that must be refused; ``code`` picks the page shown, ``message`` says why."""

    def __init__(self, code: LinkErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: LinkErrorCode = code
        self.message = message


@dataclass(frozen=True)
class GuestLink:
    """What a valid link grants: asking to join ``room_id``'s call until ``expires_at_s``."""

    room_id: str
    expires_at_s: int
    link_id: str

    def __post_init__(self) -> None:
        _check_room_id(self.room_id)
        if isinstance(self.expires_at_s, bool) or not isinstance(self.expires_at_s, int):
            raise ValueError("expires_at_s must be an integer number of seconds since the epoch")
        if self.expires_at_s <= 0:
            raise ValueError("expires_at_s must be positive")
        if not isinstance(self.link_id, str) or not _LINK_ID.fullmatch(self.link_id):
            raise ValueError(f"link_id must be 1-{MAX_LINK_ID_CHARS} characters of [A-Za-z0-9_-]")


def _check_room_id(room_id: object) -> None:
    if not isinstance(room_id, str) or not room_id.startswith("!") or len(room_id) < 2:
        raise ValueError("room_id must be a Matrix room ID starting with '!'")
    if len(room_id) > MAX_ROOM_ID_CHARS:
        raise ValueError(f"room_id must be at most {MAX_ROOM_ID_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in room_id):
        raise ValueError("room_id must not contain whitespace or control characters")


def new_link_id() -> str:
    """A random link ID (128 bits), so a posted link can be told apart (and later revoked) by ID."""
    return secrets.token_urlsafe(16)


def new_link(room_id: str, now_s: float, lifetime_s: float, link_id: str | None = None) -> GuestLink:
    """A link for ``room_id`` valid for ``lifetime_s`` seconds from ``now_s`` (wall clock)."""
    if lifetime_s <= 0:
        raise ValueError("lifetime_s must be positive")
    return GuestLink(room_id, int(now_s + lifetime_s), link_id if link_id is not None else new_link_id())


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(part: str, what: str) -> bytes:
    # urlsafe_b64decode silently skips characters outside the alphabet: check it first.
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise LinkError("malformed", f"the {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise LinkError("malformed", f"the {what} is not base64url") from None


def sign_link(link: GuestLink, private_key: Ed25519PrivateKey) -> str:
    """The URL-safe token for ``link``, signed with ``private_key``."""
    payload = {"v": VERSION, "room": link.room_id, "exp": link.expires_at_s, "id": link.link_id}
    body = _b64encode(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    signature = private_key.sign(CONTEXT + body.encode("ascii"))
    token = f"{body}.{_b64encode(signature)}"
    if len(token) > MAX_TOKEN_CHARS:  # only a room ID near its limit, full of multi-byte characters
        raise ValueError(f"the link would be longer than {MAX_TOKEN_CHARS} characters")
    return token


def verify_link(token: str, public_keys: Sequence[Ed25519PublicKey], now_s: float) -> GuestLink:
    """The link ``token`` grants, if one of ``public_keys`` signed it and it has not expired at ``now_s``.

    Raises ``LinkError``: ``malformed`` (not a token of this format), ``bad_signature`` (forged, tampered
    with, or signed by a key no longer configured), ``expired`` (``now_s >= expires_at_s``).
    """
    if not public_keys:
        raise ValueError("no public key to verify guest links with")
    if not isinstance(token, str) or not token:
        raise LinkError("malformed", "the link is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise LinkError("malformed", f"the link is longer than {MAX_TOKEN_CHARS} characters")
    body, dot, sig_part = token.partition(".")
    if not dot or not body or not sig_part:
        raise LinkError("malformed", "the link has no signature part")
    signature = _b64decode(sig_part, "signature")
    payload_bytes = _b64decode(body, "payload")
    if len(signature) != SIGNATURE_BYTES:
        raise LinkError("malformed", f"the signature is not {SIGNATURE_BYTES} bytes")
    signed = CONTEXT + body.encode("ascii")
    if not any(_signature_ok(key, signature, signed) for key in public_keys):
        raise LinkError("bad_signature", "the link was not signed by this service (or was altered)")
    link = _parse_payload(payload_bytes)
    if now_s >= link.expires_at_s:
        raise LinkError("expired", "the link has expired")
    return link


def _signature_ok(key: Ed25519PublicKey, signature: bytes, signed: bytes) -> bool:
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        return False
    return True


def _parse_payload(payload_bytes: bytes) -> GuestLink:
    # Only reached with a valid signature: a failure here is a bug or an incompatible version.
    try:
        payload = json.loads(payload_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LinkError("malformed", "the link's payload is not JSON") from None
    if not isinstance(payload, dict):
        raise LinkError("malformed", "the link's payload is not a JSON object")
    if payload.get("v") != VERSION or isinstance(payload.get("v"), bool):
        raise LinkError("malformed", f"the link's version is not {VERSION}")
    missing = sorted(_PAYLOAD_KEYS - payload.keys())
    if missing:
        raise LinkError("malformed", f"the link's payload lacks {', '.join(missing)}")
    unknown = sorted(payload.keys() - _PAYLOAD_KEYS)
    if unknown:
        raise LinkError("malformed", f"the link's payload has unknown fields: {', '.join(unknown)}")
    try:
        return GuestLink(payload["room"], payload["exp"], payload["id"])
    except ValueError as exc:
        raise LinkError("malformed", f"the link's payload is invalid: {exc}") from None


def link_url(base_url: str, token: str) -> str:
    """``<base_url>/guest/<token>``: the address posted in the room. ``base_url`` may have a path."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError("base_url must be an absolute http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError("base_url must not have a query or a fragment")
    if not token or not all(_B64URL.fullmatch(part) for part in token.split(".")):
        raise ValueError("token is not a guest link token")
    return f"{base_url.rstrip('/')}/{GUEST_PATH}/{token}"


# --- keys -------------------------------------------------------------------------------------------


def generate_key_text() -> str:
    """A new Ed25519 private key as PKCS#8 PEM text, for the config (or a file it names)."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def load_private_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS#8 PEM text or the base64 (or base64url) of its 32-byte seed.

    Errors never quote the text (it is a secret).
    """
    stripped = _stripped(text, "private key")
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(stripped.encode("ascii"), password=None)
        except TypeError:
            raise ValueError("the guest link private key is encrypted; give it without a password") from None
        except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
            raise ValueError("the guest link private key is not a valid PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the guest link private key must be an Ed25519 key")
        return key
    return Ed25519PrivateKey.from_private_bytes(_raw_key_bytes(stripped, "private key"))


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public half of ``key`` as SubjectPublicKeyInfo PEM text (to keep after a rotation)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM text or the base64 (or base64url) of its 32 raw bytes."""
    stripped = _stripped(text, "public key")
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped.encode("ascii"))
        except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
            raise ValueError("the guest link public key is not a valid PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the guest link public key must be an Ed25519 key")
        return key
    return Ed25519PublicKey.from_public_bytes(_raw_key_bytes(stripped, "public key"))


def _stripped(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"the guest link {what} must be text")
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"the guest link {what} is empty")
    return stripped


def _raw_key_bytes(text: str, what: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9+/_-]+={0,2}", text):
        raise ValueError(f"the guest link {what} is neither PEM nor base64")
    unpadded = text.rstrip("=").replace("+", "-").replace("/", "_")
    try:
        raw = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"the guest link {what} is neither PEM nor base64") from None
    if len(raw) != 32:
        raise ValueError(f"the guest link {what} must be 32 bytes once base64-decoded (Ed25519)")
    return raw
