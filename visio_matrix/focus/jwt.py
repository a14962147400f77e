"""LiveKit access tokens: issued by the token service, verified by the LiveKit signaling endpoint.

The token is what a LiveKit server accepts (HS256, ``iss`` = API key, ``sub`` = participant identity,
``exp``/``nbf``, grants in ``video``) plus one private claim, ``io.visio``, carrying the Matrix identity
the token service verified (user, device, room, slot) and whether the holder may cause a conference
to be *created* (``can_open``: the user's homeserver is in ``policy.open_call_servers``). The
signaling side trusts only that claim, never what the client says later.

Verification is strict: the header must say HS256 (no ``none``, no other HMAC size, no RSA/EC header
trying to have the shared secret used as a public key), the issuer selects the secret, and times are
checked against the ``now`` passed in (wall-clock seconds since the epoch) with a small leeway.
PyJWT does the signature work; time, issuer and claim checks are done here so that time is an input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt

ALGORITHM = "HS256"
VISIO_CLAIM = "io.visio"
DEFAULT_LEEWAY_S = 60.0


class TokenError(ValueError):
    """The token is not one this service issued, or not valid now; the message says why."""


@dataclass(frozen=True)
class VideoGrants:
    """LiveKit's ``video`` claim (the subset a Matrix call uses)."""

    room: str
    room_join: bool = True
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_update_own_metadata: bool = True

    def to_claim(self) -> dict[str, object]:
        return {
            "roomJoin": self.room_join,
            "room": self.room,
            "canPublish": self.can_publish,
            "canSubscribe": self.can_subscribe,
            "canPublishData": self.can_publish_data,
            "canUpdateOwnMetadata": self.can_update_own_metadata,
        }


@dataclass(frozen=True)
class VisioClaim:
    """The Matrix identity behind a token, as checked by the token service."""

    user_id: str
    device_id: str
    room_id: str
    slot_id: str
    can_open: bool
    # A guest admitted from the lobby (``user_id`` is ``guest:<guest_id>``, no Matrix account): only
    # the lobby issues such tokens. Absent from the claim means False.
    guest: bool = False

    def to_claim(self) -> dict[str, object]:
        claim: dict[str, object] = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "room_id": self.room_id,
            "slot_id": self.slot_id,
            "can_open": self.can_open,
        }
        if self.guest:
            claim["guest"] = True
        return claim


@dataclass(frozen=True)
class TokenClaims:
    """A verified token."""

    issuer: str
    identity: str
    not_before: int
    expires_at: int
    grants: VideoGrants
    visio: VisioClaim
    name: str | None = None


class _AtobSafeEncoder(json.JSONEncoder):
    """JSON whose base64url form never contains ``-`` or ``_``.

    Element Call reads the payload with ``atob()``, which accepts only the standard base64 alphabet.
    ASCII JSON (``ensure_ascii``) can only produce those two characters from ``>``, ``?``, ``~`` or
    DEL, and in JSON those only occur inside strings, where ``\\u00XX`` escapes are equivalent.
    """

    def encode(self, o: Any) -> str:
        text = super().encode(o)
        for char in ">?~\x7f":
            text = text.replace(char, f"\\u{ord(char):04x}")
        return text


def issue_token(
    *,
    api_key: str,
    api_secret: str,
    identity: str,
    grants: VideoGrants,
    visio: VisioClaim,
    now: float,
    lifetime_s: float,
    name: str | None = None,
) -> str:
    """A signed token valid from ``now`` (epoch seconds) for ``lifetime_s`` seconds."""
    if not identity:
        raise ValueError("a token needs a non-empty identity")
    if lifetime_s <= 0:
        raise ValueError(f"token lifetime must be positive, got {lifetime_s}")
    issued = int(now)
    payload: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "nbf": issued,
        "exp": issued + int(lifetime_s),
        "video": grants.to_claim(),
        VISIO_CLAIM: visio.to_claim(),
    }
    if name is not None:
        payload["name"] = name
    return pyjwt.encode(
        payload,
        api_secret,
        algorithm=ALGORITHM,
        headers={"typ": "JWT"},
        json_encoder=_AtobSafeEncoder,
    )


def verify_token(
    token: str, keys: Mapping[str, str], now: float, leeway_s: float = DEFAULT_LEEWAY_S
) -> TokenClaims:
    """Check ``token`` against the API keys (``iss`` -> secret) at ``now`` (epoch seconds).

    Raises ``TokenError`` for a malformed token, an algorithm other than HS256, an unknown issuer, a
    bad signature, an expired or not yet valid token, and missing or malformed grants/claims.
    """
    if not isinstance(token, str) or token.count(".") != 2:
        raise TokenError("malformed token: expected three base64url parts separated by dots")
    try:
        header = pyjwt.get_unverified_header(token)
        unverified = pyjwt.decode(token, options={"verify_signature": False})
    except pyjwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise TokenError(f"token algorithm must be {ALGORITHM}, got {alg!r}")
    if "crit" in header:
        raise TokenError("token has critical header extensions this service does not understand")
    issuer = unverified.get("iss")
    if not isinstance(issuer, str) or issuer not in keys:
        raise TokenError(f"unknown token issuer {issuer!r}")
    try:
        payload = pyjwt.decode(
            token,
            keys[issuer],
            algorithms=[ALGORITHM],
            # Times are checked below against the clock passed in, not PyJWT's own.
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except pyjwt.InvalidSignatureError:
        raise TokenError("bad token signature") from None
    except pyjwt.PyJWTError as exc:
        raise TokenError(f"invalid token: {exc}") from None

    expires_at = _numeric(payload, "exp")
    not_before = _numeric(payload, "nbf")
    if now > expires_at + leeway_s:
        raise TokenError(f"token expired {now - expires_at:.0f}s ago")
    if now + leeway_s < not_before:
        raise TokenError(f"token not valid before {not_before} (now {now:.0f})")
    identity = payload.get("sub")
    if not isinstance(identity, str) or not identity:
        raise TokenError("token has no identity (sub)")
    name = payload.get("name")
    if name is not None and not isinstance(name, str):
        raise TokenError("token name must be a string")
    return TokenClaims(
        issuer=issuer,
        identity=identity,
        not_before=int(not_before),
        expires_at=int(expires_at),
        grants=_grants(payload.get("video")),
        visio=_visio(payload.get(VISIO_CLAIM)),
        name=name,
    )


def _numeric(payload: Mapping[str, Any], claim: str) -> float:
    value = payload.get(claim)
    if value is None:
        raise TokenError(f"token has no {claim}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"token {claim} must be a number")
    return float(value)


def _flag(video: Mapping[str, Any], key: str) -> bool:
    # LiveKit's pointer-bool semantics: an absent publish/subscribe/data permission means "allowed".
    value = video.get(key, True)
    if not isinstance(value, bool):
        raise TokenError(f"token grant video.{key} must be true or false")
    return value


def _grants(video: object) -> VideoGrants:
    if not isinstance(video, Mapping):
        raise TokenError("token has no video grants")
    if video.get("roomJoin") is not True:
        raise TokenError("token does not grant roomJoin")
    room = video.get("room")
    if not isinstance(room, str) or not room:
        raise TokenError("token grants name no room")
    return VideoGrants(
        room=room,
        room_join=True,
        can_publish=_flag(video, "canPublish"),
        can_subscribe=_flag(video, "canSubscribe"),
        can_publish_data=_flag(video, "canPublishData"),
        can_update_own_metadata=_flag(video, "canUpdateOwnMetadata"),
    )


def _visio(claim: object) -> VisioClaim:
    if not isinstance(claim, Mapping):
        raise TokenError(f"token has no {VISIO_CLAIM} claim (not issued by this service)")
    fields: dict[str, str] = {}
    for key in ("user_id", "device_id", "room_id", "slot_id"):
        value = claim.get(key)
        if not isinstance(value, str) or not value:
            raise TokenError(f"token claim {VISIO_CLAIM}.{key} must be a non-empty string")
        fields[key] = value
    can_open = claim.get("can_open")
    if not isinstance(can_open, bool):
        raise TokenError(f"token claim {VISIO_CLAIM}.can_open must be true or false")
    guest = claim.get("guest", False)
    if not isinstance(guest, bool):
        raise TokenError(f"token claim {VISIO_CLAIM}.guest must be true or false")
    return VisioClaim(can_open=can_open, guest=guest, **fields)
