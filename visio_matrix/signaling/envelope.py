"""Compressed conference messages: homeservers cap a to-device message at 64 KiB (Synapse:
``M_TOO_LARGE``), and Olm + base64 inflate content by ~1.4x, so the relay's offer for a call of
~20 people does not fit. SDP compresses ~10x (its m-lines repeat).

A sender that knows the peer understands it (the peer said ``"io.visio.deflate": true`` in its
invite or answer) may replace the whole content of a large message by
``{"io.visio.deflated": "<base64 of zlib(JSON content)>"}`` (same event type); the receiver inflates
it, bounded (``max_bytes``: a small message must not expand into gigabytes), then parses it as usual.
See docs/protocol.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any, Final

from .messages import ERR_BAD_VALUE, ERR_TOO_LARGE, SignalingError

DEFLATED_KEY: Final = "io.visio.deflated"
SUPPORTS_KEY: Final = "io.visio.deflate"
# Above this many bytes of JSON, content is compressed for peers that support it.
DEFLATE_THRESHOLD: Final = 16 * 1024
MAX_INFLATED_BYTES: Final = 1024 * 1024


def content_size(content: dict[str, Any]) -> int:
    return len(json.dumps(content, separators=(",", ":")).encode())


def deflate(content: dict[str, Any], threshold: int = DEFLATE_THRESHOLD) -> dict[str, Any]:
    """``content`` itself when small, else its compressed envelope."""
    raw = json.dumps(content, separators=(",", ":")).encode()
    if len(raw) <= threshold:
        return content
    return {DEFLATED_KEY: base64.b64encode(zlib.compress(raw, 9)).decode("ascii")}


def inflate(content: dict[str, Any], max_bytes: int = MAX_INFLATED_BYTES) -> dict[str, Any] | SignalingError:
    """The original content of an envelope (content without the envelope key is returned as is)."""
    packed = content.get(DEFLATED_KEY)
    if packed is None:
        return content
    if not isinstance(packed, str) or len(content) != 1:
        return SignalingError(ERR_BAD_VALUE, f"{DEFLATED_KEY}: expected the only key, a base64 string")
    try:
        compressed = base64.b64decode(packed, validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, max_bytes + 1)
    except (binascii.Error, ValueError, zlib.error) as exc:
        return SignalingError(ERR_BAD_VALUE, f"{DEFLATED_KEY}: not base64 zlib data ({exc})")
    if len(raw) > max_bytes or inflater.unconsumed_tail:
        return SignalingError(ERR_TOO_LARGE, f"{DEFLATED_KEY}: inflates to more than {max_bytes} bytes")
    try:
        inner = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        return SignalingError(ERR_BAD_VALUE, f"{DEFLATED_KEY}: not JSON ({exc})")
    if not isinstance(inner, dict) or DEFLATED_KEY in inner:
        return SignalingError(ERR_BAD_VALUE, f"{DEFLATED_KEY}: expected one JSON object, not nested")
    return inner


def supports_deflate(content: dict[str, Any]) -> bool:
    return content.get(SUPPORTS_KEY) is True
