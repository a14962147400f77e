"""Parsing of raw ``m.call.*`` event content into the typed messages of ``messages``.

``parse_call_content`` never raises: bad content becomes a ``SignalingError`` value whose message
names the offending field (``"offer.sdp: expected a string"``), so the caller can log it and move on.
The field helpers (``string_field``, ``int_field``, ...) raise ``SignalingError``; the conference layer
reuses them for its own fields.

Version handling follows the spec: ``"1"`` and integer ``0`` (legacy: ``party_id`` optional) are
known; with ``strict_version=False`` (the default, for room events from arbitrary clients) any other
string or integer is treated as ``"1"`` as the spec requires; with ``strict_version=True`` (our own
conference protocol) anything but ``"1"`` is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from visio_matrix.signaling.messages import (
    ANSWER,
    CANDIDATES,
    DEFAULT_LIMITS,
    ERR_BAD_TYPE,
    ERR_BAD_VALUE,
    ERR_BAD_VERSION,
    ERR_MISSING,
    ERR_NOT_OBJECT,
    ERR_TOO_LARGE,
    ERR_UNKNOWN_TYPE,
    EVENT_TYPE_ALIASES,
    HANGUP,
    INVITE,
    LEGACY_VERSION,
    NEGOTIATE,
    REJECT,
    SELECT_ANSWER,
    STREAM_METADATA_CHANGED,
    STREAM_METADATA_KEY,
    STREAM_METADATA_UNSTABLE_KEY,
    STREAM_PURPOSES,
    VERSION_1,
    CallAnswer,
    CallCandidates,
    CallHangup,
    CallInvite,
    CallMessage,
    CallNegotiate,
    CallReject,
    CallSelectAnswer,
    CallStreamMetadataChanged,
    Candidate,
    CandidateEntry,
    EndOfCandidates,
    Limits,
    SignalingError,
    StreamMetadata,
    StreamMetadataMap,
)

# Spec "Grammar for VoIP IDs": 1..255 characters of [0-9a-zA-Z._~-].
VOIP_ID_RE: Final = re.compile(r"[0-9A-Za-z._~-]+")
# Matrix user IDs: '@', a localpart, ':', a server name; no whitespace or control characters.
USER_ID_RE: Final = re.compile(r"@[^\s:]+:[^\s]+")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def require_field(obj: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        raise SignalingError(ERR_MISSING, f"{path}: missing")
    return obj[key]


def object_field(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SignalingError(ERR_BAD_TYPE, f"{path}: expected an object, got {_type_name(value)}")
    return value


def string_field(value: object, path: str, max_chars: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise SignalingError(ERR_BAD_TYPE, f"{path}: expected a string, got {_type_name(value)}")
    if len(value) > max_chars:
        raise SignalingError(ERR_TOO_LARGE, f"{path}: longer than {max_chars} characters")
    if not value and not allow_empty:
        raise SignalingError(ERR_BAD_VALUE, f"{path}: must not be empty")
    if _CONTROL_RE.search(value):
        raise SignalingError(ERR_BAD_VALUE, f"{path}: contains control characters")
    return value


def voip_id(value: object, path: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """A call_id/party_id-like identifier per the spec grammar, else raises ``SignalingError``."""
    text = string_field(value, path, limits.max_id_chars)
    if not VOIP_ID_RE.fullmatch(text):
        raise SignalingError(ERR_BAD_VALUE, f"{path}: only letters, digits and '._~-' are allowed")
    return text


def user_id_field(value: object, path: str, limits: Limits) -> str:
    text = string_field(value, path, limits.max_user_id_chars)
    if not USER_ID_RE.fullmatch(text):
        raise SignalingError(ERR_BAD_VALUE, f"{path}: not a Matrix user ID")
    return text


def int_field(value: object, path: str, *, minimum: int, maximum: int) -> int:
    # JSON numbers may arrive as floats with an integral value (e.g. 30000.0 from some clients).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SignalingError(ERR_BAD_TYPE, f"{path}: expected an integer, got {_type_name(value)}")
    if value < minimum or value > maximum:
        raise SignalingError(ERR_BAD_VALUE, f"{path}: must be between {minimum} and {maximum}")
    return value


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise SignalingError(ERR_BAD_TYPE, f"{path}: expected a boolean, got {_type_name(value)}")
    return value


def _sdp(value: object, path: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise SignalingError(ERR_BAD_TYPE, f"{path}: expected a string, got {_type_name(value)}")
    # Cheap check first: a str of n characters has at least n UTF-8 bytes.
    if len(value) > limits.max_sdp_bytes or len(value.encode("utf-8")) > limits.max_sdp_bytes:
        raise SignalingError(ERR_TOO_LARGE, f"{path}: larger than {limits.max_sdp_bytes} bytes")
    if not value.strip():
        raise SignalingError(ERR_BAD_VALUE, f"{path}: must not be empty")
    return value


def _lifetime(value: object, path: str, limits: Limits) -> int:
    return int_field(value, path, minimum=0, maximum=limits.max_lifetime_ms)


def _version(content: Mapping[str, Any], strict: bool) -> str:
    value = require_field(content, "version", "version")
    if value == 0 and isinstance(value, int) and not isinstance(value, bool):
        return LEGACY_VERSION
    if value == VERSION_1:
        return VERSION_1
    if not strict and (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
        return VERSION_1  # spec: any other version is treated as "1"
    if isinstance(value, str):
        shown = repr(value[:32])
    elif isinstance(value, int) and not isinstance(value, bool):
        shown = repr(value)
    else:
        shown = _type_name(value)
    raise SignalingError(ERR_BAD_VERSION, f'version: expected "1" or 0, got {shown}')


def parse_stream_metadata(value: object, path: str, limits: Limits = DEFAULT_LIMITS) -> StreamMetadataMap:
    """Stream id -> metadata. Entries with an unknown ``purpose`` are dropped (the spec says to ignore
    such streams); malformed entries refuse the whole map."""
    entries = object_field(value, path)
    if len(entries) > limits.max_streams:
        raise SignalingError(ERR_TOO_LARGE, f"{path}: more than {limits.max_streams} streams")
    result: dict[str, StreamMetadata] = {}
    for stream_id, raw in entries.items():
        entry_path = f"{path}.{stream_id[:64]}"
        string_field(stream_id, f"{path} (stream id)", limits.max_id_chars)
        entry = object_field(raw, entry_path)
        purpose = string_field(
            require_field(entry, "purpose", f"{entry_path}.purpose"), f"{entry_path}.purpose", 64
        )
        audio_muted = _bool(entry.get("audio_muted", False), f"{entry_path}.audio_muted")
        video_muted = _bool(entry.get("video_muted", False), f"{entry_path}.video_muted")
        user_id = entry.get("user_id")
        if user_id is not None:
            user_id = user_id_field(user_id, f"{entry_path}.user_id", limits)
        device_id = entry.get("device_id")
        if device_id is not None:
            device_id = string_field(device_id, f"{entry_path}.device_id", limits.max_id_chars)
        if purpose not in STREAM_PURPOSES:
            continue
        result[stream_id] = StreamMetadata(purpose, audio_muted, video_muted, user_id, device_id)
    return MappingProxyType(result)


def _optional_stream_metadata(content: Mapping[str, Any], limits: Limits) -> StreamMetadataMap | None:
    for key in (STREAM_METADATA_KEY, STREAM_METADATA_UNSTABLE_KEY):
        if key in content:
            return parse_stream_metadata(content[key], key, limits)
    return None


def _description(content: Mapping[str, Any], key: str, limits: Limits) -> Mapping[str, Any]:
    description = object_field(require_field(content, key, key), key)
    _sdp(require_field(description, "sdp", f"{key}.sdp"), f"{key}.sdp", limits)
    return description


def _candidate(value: object, path: str, limits: Limits) -> CandidateEntry:
    entry = object_field(value, path)
    text = string_field(
        require_field(entry, "candidate", f"{path}.candidate"),
        f"{path}.candidate",
        limits.max_candidate_chars,
        allow_empty=True,
    )
    mid = entry.get("sdpMid")
    if mid is not None:
        mid = string_field(mid, f"{path}.sdpMid", limits.max_id_chars, allow_empty=True)
    index = entry.get("sdpMLineIndex")
    if index is not None:
        index = int_field(index, f"{path}.sdpMLineIndex", minimum=0, maximum=1023)
    if not text:
        return EndOfCandidates(mid, index)
    if mid is None and index is None:
        raise SignalingError(ERR_MISSING, f"{path}: needs sdpMid or sdpMLineIndex")
    return Candidate(text, mid, index)


def parse_candidates(value: object, path: str, limits: Limits = DEFAULT_LIMITS) -> tuple[CandidateEntry, ...]:
    if not isinstance(value, list):
        raise SignalingError(ERR_BAD_TYPE, f"{path}: expected an array, got {_type_name(value)}")
    if len(value) > limits.max_candidates:
        raise SignalingError(ERR_TOO_LARGE, f"{path}: more than {limits.max_candidates} candidates")
    return tuple(_candidate(item, f"{path}[{i}]", limits) for i, item in enumerate(value))


_Common = tuple[str, str | None, str]


def _invite(content: Mapping[str, Any], common: _Common, limits: Limits) -> CallInvite:
    offer = _description(content, "offer", limits)
    lifetime = _lifetime(require_field(content, "lifetime", "lifetime"), "lifetime", limits)
    invitee = content.get("invitee")
    if invitee is not None:
        invitee = user_id_field(invitee, "invitee", limits)
    return CallInvite(
        *common,
        lifetime_ms=lifetime,
        offer_sdp=offer["sdp"],
        invitee=invitee,
        stream_metadata=_optional_stream_metadata(content, limits),
    )


def _answer(content: Mapping[str, Any], common: _Common, limits: Limits) -> CallAnswer:
    answer = _description(content, "answer", limits)
    return CallAnswer(
        *common, answer_sdp=answer["sdp"], stream_metadata=_optional_stream_metadata(content, limits)
    )


def _candidates(content: Mapping[str, Any], common: _Common, limits: Limits) -> CallCandidates:
    return CallCandidates(
        *common,
        candidates=parse_candidates(require_field(content, "candidates", "candidates"), "candidates", limits),
    )


def _select_answer(content: Mapping[str, Any], common: _Common, limits: Limits) -> CallSelectAnswer:
    selected = voip_id(
        require_field(content, "selected_party_id", "selected_party_id"), "selected_party_id", limits
    )
    return CallSelectAnswer(*common, selected_party_id=selected)


def _reject(content: Mapping[str, Any], common: _Common, limits: Limits) -> CallReject:
    return CallReject(*common)


def _negotiate(content: Mapping[str, Any], common: _Common, limits: Limits) -> CallNegotiate:
    description = _description(content, "description", limits)
    kind = description.get("type")
    if kind not in ("offer", "answer"):
        raise SignalingError(ERR_BAD_VALUE, 'description.type: expected "offer" or "answer"')
    lifetime = content.get("lifetime")
    if lifetime is not None:
        lifetime = _lifetime(lifetime, "lifetime", limits)
    return CallNegotiate(
        *common,
        description_type=kind,
        sdp=description["sdp"],
        lifetime_ms=lifetime,
        stream_metadata=_optional_stream_metadata(content, limits),
    )


def _hangup(content: Mapping[str, Any], common: _Common, limits: Limits) -> CallHangup:
    reason = content.get("reason")
    if reason is None:
        return CallHangup(*common)
    return CallHangup(*common, reason=string_field(reason, "reason", limits.max_reason_chars))


def _metadata_changed(
    content: Mapping[str, Any], common: _Common, limits: Limits
) -> CallStreamMetadataChanged:
    for key in (STREAM_METADATA_KEY, STREAM_METADATA_UNSTABLE_KEY):
        if key in content:
            return CallStreamMetadataChanged(
                *common, stream_metadata=parse_stream_metadata(content[key], key, limits)
            )
    raise SignalingError(ERR_MISSING, f"{STREAM_METADATA_KEY}: missing")


_PARSERS: Final[dict[str, Callable[[Mapping[str, Any], _Common, Limits], CallMessage]]] = {
    INVITE: _invite,
    ANSWER: _answer,
    CANDIDATES: _candidates,
    SELECT_ANSWER: _select_answer,
    REJECT: _reject,
    NEGOTIATE: _negotiate,
    HANGUP: _hangup,
    STREAM_METADATA_CHANGED: _metadata_changed,
}


def canonical_event_type(event_type: str) -> str:
    """The stable name of a call event type (unstable aliases mapped), unchanged otherwise."""
    return EVENT_TYPE_ALIASES.get(event_type, event_type)


def parse_call_content(
    event_type: str,
    content: object,
    *,
    limits: Limits = DEFAULT_LIMITS,
    strict_version: bool = False,
) -> CallMessage | SignalingError:
    """Parse the content of one ``m.call.*`` event; returns the message or a ``SignalingError``."""
    try:
        parser = _PARSERS.get(canonical_event_type(event_type))
        if parser is None:
            return SignalingError(ERR_UNKNOWN_TYPE, f"{str(event_type)[:64]!r} is not a call event type")
        if not isinstance(content, dict):
            return SignalingError(ERR_NOT_OBJECT, f"content: expected an object, got {_type_name(content)}")
        call_id = voip_id(require_field(content, "call_id", "call_id"), "call_id", limits)
        version = _version(content, strict_version)
        party_id: str | None = None
        if "party_id" in content or version != LEGACY_VERSION:
            party_id = voip_id(require_field(content, "party_id", "party_id"), "party_id", limits)
        return parser(content, (call_id, party_id, version), limits)
    except SignalingError as error:
        return error
    except (RecursionError, MemoryError):  # pragma: no cover - defensive, content is already decoded JSON
        return SignalingError(ERR_TOO_LARGE, "content: too deeply nested or too large")


__all__ = [
    "USER_ID_RE",
    "VOIP_ID_RE",
    "canonical_event_type",
    "parse_call_content",
    "parse_candidates",
    "parse_stream_metadata",
    "voip_id",
]
