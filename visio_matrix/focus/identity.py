"""LiveKit participant identities and room names, derived exactly as lk-jwt-service derives them.

Element Call indexes call members and their media encryption keys by these strings, so a single
byte of difference leaves a tile on "Waiting for media". lk-jwt-service (``helper.go``):

- room name ("LiveKit alias") = unpadded standard base64 of SHA-256 of the JSON array
  ``[room_id, slot_id]``; the legacy ``/sfu/get`` endpoint uses the slot ``m.call#ROOM``;
- ``/get_token`` identity = the same hash of ``[user_id, device_id, member_id]``;
- ``/sfu/get`` identity = ``user_id + ":" + device_id``.

The JSON is what Go's ``encoding/json`` writes for a ``[]string``: no spaces, UTF-8 kept as is,
``<``, ``>``, ``&``, U+2028 and U+2029 escaped as ``\\u003c``..., control characters escaped, and
invalid UTF-16 (lone surrogates, which Go's decoder had already turned into U+FFFD) as U+FFFD.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

LEGACY_SLOT_ID = "m.call#ROOM"

_GO_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPED = re.compile("[<>&\u2028\u2029]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def go_json_strings(values: list[str]) -> bytes:
    """The bytes of Go's ``json.Marshal([]string{...})``."""
    cleaned = [_LONE_SURROGATE.sub("\ufffd", value) for value in values]
    text = json.dumps(cleaned, ensure_ascii=False, separators=(",", ":"))
    # Outside strings this JSON has only brackets, commas and quotes: replacing is safe.
    return _GO_ESCAPED.sub(lambda m: _GO_HTML_ESCAPES[m.group(0)], text).encode("utf-8")


def _hash(values: list[str]) -> str:
    digest = hashlib.sha256(go_json_strings(values)).digest()
    return base64.b64encode(digest).decode("ascii").rstrip("=")


def livekit_room_name(room_id: str, slot_id: str) -> str:
    """The LiveKit room (``video.room`` grant) for a MatrixRTC slot of a Matrix room."""
    return _hash([room_id, slot_id])


def hashed_identity(user_id: str, device_id: str, member_id: str) -> str:
    """The ``/get_token`` identity of a MatrixRTC member (pseudonymous)."""
    return _hash([user_id, device_id, member_id])


def legacy_identity(user_id: str, device_id: str) -> str:
    """The ``/sfu/get`` identity: ``@user:server:DEVICE``."""
    return f"{user_id}:{device_id}"
