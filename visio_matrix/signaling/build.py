"""Builders of ``m.call.*`` event content: the inverse of ``parse``.

Every builder returns a fresh JSON-ready dict carrying ``call_id``, ``party_id`` and ``version: "1"``.
Stream metadata is written under the spec's key and, unless ``unstable_key=False``, also under
matrix-js-sdk's ``org.matrix.msc3077.sdp_stream_metadata`` (the only key Element reads today).
"""

from __future__ import annotations

from typing import Any, Literal

from visio_matrix.signaling.messages import (
    STREAM_METADATA_KEY,
    STREAM_METADATA_UNSTABLE_KEY,
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
    StreamMetadata,
    StreamMetadataMap,
    event_type_of,
)

Content = dict[str, Any]


def _common(call_id: str, party_id: str) -> Content:
    return {"call_id": call_id, "party_id": party_id, "version": VERSION_1}


def stream_metadata_entry(metadata: StreamMetadata) -> Content:
    entry: Content = {
        "purpose": metadata.purpose,
        "audio_muted": metadata.audio_muted,
        "video_muted": metadata.video_muted,
    }
    if metadata.user_id is not None:
        entry["user_id"] = metadata.user_id
    if metadata.device_id is not None:
        entry["device_id"] = metadata.device_id
    return entry


def stream_metadata_content(streams: StreamMetadataMap) -> Content:
    return {stream_id: stream_metadata_entry(metadata) for stream_id, metadata in streams.items()}


def _add_metadata(content: Content, streams: StreamMetadataMap | None, unstable_key: bool) -> Content:
    if streams is not None:
        content[STREAM_METADATA_KEY] = stream_metadata_content(streams)
        if unstable_key:
            content[STREAM_METADATA_UNSTABLE_KEY] = stream_metadata_content(streams)
    return content


def candidate_entry(entry: CandidateEntry) -> Content:
    """One candidate as the spec writes it; end-of-candidates is ``{"candidate": ""}`` (plus sdpMid /
    sdpMLineIndex only when known)."""
    result: Content = {"candidate": entry.candidate if isinstance(entry, Candidate) else ""}
    if entry.sdp_mid is not None:
        result["sdpMid"] = entry.sdp_mid
    if entry.sdp_mline_index is not None:
        result["sdpMLineIndex"] = entry.sdp_mline_index
    return result


def build_invite(
    call_id: str,
    party_id: str,
    offer_sdp: str,
    lifetime_ms: int,
    *,
    invitee: str | None = None,
    stream_metadata: StreamMetadataMap | None = None,
    unstable_key: bool = True,
) -> Content:
    content = _common(call_id, party_id)
    content["offer"] = {"type": "offer", "sdp": offer_sdp}
    content["lifetime"] = lifetime_ms
    if invitee is not None:
        content["invitee"] = invitee
    return _add_metadata(content, stream_metadata, unstable_key)


def build_answer(
    call_id: str,
    party_id: str,
    answer_sdp: str,
    *,
    stream_metadata: StreamMetadataMap | None = None,
    unstable_key: bool = True,
) -> Content:
    content = _common(call_id, party_id)
    content["answer"] = {"type": "answer", "sdp": answer_sdp}
    return _add_metadata(content, stream_metadata, unstable_key)


def build_candidates(
    call_id: str, party_id: str, candidates: tuple[CandidateEntry, ...] | list[CandidateEntry]
) -> Content:
    content = _common(call_id, party_id)
    content["candidates"] = [candidate_entry(entry) for entry in candidates]
    return content


def build_select_answer(call_id: str, party_id: str, selected_party_id: str) -> Content:
    content = _common(call_id, party_id)
    content["selected_party_id"] = selected_party_id
    return content


def build_reject(call_id: str, party_id: str) -> Content:
    return _common(call_id, party_id)


def build_negotiate(
    call_id: str,
    party_id: str,
    description_type: Literal["offer", "answer"],
    sdp: str,
    *,
    lifetime_ms: int | None = None,
    stream_metadata: StreamMetadataMap | None = None,
    unstable_key: bool = True,
) -> Content:
    content = _common(call_id, party_id)
    content["description"] = {"type": description_type, "sdp": sdp}
    if lifetime_ms is not None:
        content["lifetime"] = lifetime_ms
    return _add_metadata(content, stream_metadata, unstable_key)


def build_hangup(call_id: str, party_id: str, reason: str = "user_hangup") -> Content:
    content = _common(call_id, party_id)
    content["reason"] = reason
    return content


def build_stream_metadata_changed(
    call_id: str, party_id: str, stream_metadata: StreamMetadataMap, *, unstable_key: bool = True
) -> Content:
    return _add_metadata(_common(call_id, party_id), stream_metadata, unstable_key)


def message_content(message: CallMessage, *, unstable_key: bool = True) -> tuple[str, Content]:
    """(event type, content) of a parsed message, sent as version "1". Needs a ``party_id``."""
    if message.party_id is None:
        raise ValueError("message_content: a party_id is required to build version 1 content")
    call_id, party_id = message.call_id, message.party_id
    content: Content
    match message:
        case CallInvite():
            content = build_invite(
                call_id,
                party_id,
                message.offer_sdp,
                message.lifetime_ms,
                invitee=message.invitee,
                stream_metadata=message.stream_metadata,
                unstable_key=unstable_key,
            )
        case CallAnswer():
            content = build_answer(
                call_id,
                party_id,
                message.answer_sdp,
                stream_metadata=message.stream_metadata,
                unstable_key=unstable_key,
            )
        case CallCandidates():
            content = build_candidates(call_id, party_id, message.candidates)
        case CallSelectAnswer():
            content = build_select_answer(call_id, party_id, message.selected_party_id)
        case CallReject():
            content = build_reject(call_id, party_id)
        case CallNegotiate():
            content = build_negotiate(
                call_id,
                party_id,
                message.description_type,
                message.sdp,
                lifetime_ms=message.lifetime_ms,
                stream_metadata=message.stream_metadata,
                unstable_key=unstable_key,
            )
        case CallHangup():
            content = build_hangup(call_id, party_id, message.reason)
        case CallStreamMetadataChanged():
            content = build_stream_metadata_changed(
                call_id, party_id, message.stream_metadata, unstable_key=unstable_key
            )
    return event_type_of(message), content
