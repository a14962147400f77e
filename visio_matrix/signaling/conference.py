"""Conference signaling over Olm to-device messages (participant device <-> bot device): wire format.

The messages are the ``m.call.*`` ones of the 1:1 spec (MSC2746) plus the group fields of
MSC3401/MSC3898: ``conf_id``, ``device_id``, ``sender_session_id``, ``dest_session_id``, ``seq``.
``m.call.invite`` also carries ``room_id`` (and, from the bot after a restart, ``io.visio.replaces``);
the bot's ``m.call.hangup`` carries ``io.visio.reason`` and ``io.visio.message``. docs/protocol.md is the
reference for client implementers; the per-call rules are kept by ``calls.todevice`` (bot side) and
``client.session`` (participant side).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal

from visio_matrix.signaling.build import (
    Content,
    build_answer,
    build_candidates,
    build_hangup,
    build_invite,
    build_negotiate,
    build_reject,
    build_stream_metadata_changed,
)
from visio_matrix.signaling.messages import (
    DEFAULT_LIMITS,
    ERR_BAD_VALUE,
    HANGUP,
    CallHangup,
    CallInvite,
    CallMessage,
    CandidateEntry,
    Limits,
    SignalingError,
    StreamMetadataMap,
    event_type_of,
)
from visio_matrix.signaling.parse import (
    int_field,
    parse_call_content,
    require_field,
    string_field,
    voip_id,
)

ROOM_ID_KEY: Final = "room_id"
REPLACES_KEY: Final = "io.visio.replaces"
VISIO_REASON_KEY: Final = "io.visio.reason"
VISIO_MESSAGE_KEY: Final = "io.visio.message"
MAX_SEQ: Final = 2**53 - 1  # largest integer every JSON implementation keeps exact


class VisioReason(StrEnum):
    """Why the bot hung up: stable codes for clients (``io.visio.reason``)."""

    NOT_A_MEMBER = "not_a_member"
    UNVERIFIED_DEVICE = "unverified_device"
    NOT_ENCRYPTED = "not_encrypted"
    NO_CONFERENCE = "no_conference"
    CONFERENCE_ENDED = "conference_ended"
    BAD_REQUEST = "bad_request"
    SERVER_NOT_ALLOWED = "server_not_allowed"
    MEDIA_FAILED = "media_failed"
    REPLACED = "replaced"
    INVITE_EXPIRED = "invite_expired"
    SHUTDOWN = "shutdown"
    CONFERENCE_FULL = "conference_full"  # policy.max_participants reached
    # Federation links (calls/federation.py):
    LINK_NOT_ALLOWED = "link_not_allowed"  # the sender's server is not in our policy.link_servers
    UNTRUSTED_PEER = "untrusted_peer"  # not a bot device pinned or cross-signed per federation.peers
    REMOTE_GUESTS = "remote_guests_not_allowed"  # the far call has guests; our policy says no


# The spec ``reason`` sent next to each code, for clients that only know the spec list.
SPEC_REASON_FOR: Final[dict[VisioReason, str]] = {
    VisioReason.NOT_A_MEMBER: "unknown_error",
    VisioReason.UNVERIFIED_DEVICE: "unknown_error",
    VisioReason.NOT_ENCRYPTED: "unknown_error",
    VisioReason.NO_CONFERENCE: "unknown_error",
    VisioReason.CONFERENCE_ENDED: "user_hangup",
    VisioReason.BAD_REQUEST: "unknown_error",
    VisioReason.SERVER_NOT_ALLOWED: "unknown_error",
    VisioReason.MEDIA_FAILED: "ice_failed",
    VisioReason.REPLACED: "user_hangup",
    VisioReason.INVITE_EXPIRED: "invite_timeout",
    VisioReason.SHUTDOWN: "unknown_error",
    VisioReason.CONFERENCE_FULL: "unknown_error",
    VisioReason.LINK_NOT_ALLOWED: "unknown_error",
    VisioReason.UNTRUSTED_PEER: "unknown_error",
    VisioReason.REMOTE_GUESTS: "unknown_error",
}

# Default sentences for people (``io.visio.message``); callers may pass a more precise one.
DEFAULT_MESSAGE_FOR: Final[dict[VisioReason, str]] = {
    VisioReason.NOT_A_MEMBER: "You are not a member of this room.",
    VisioReason.UNVERIFIED_DEVICE: "Your device could not be verified.",
    VisioReason.NOT_ENCRYPTED: "Call signaling must be end-to-end encrypted.",
    VisioReason.NO_CONFERENCE: "There is no conference in this room.",
    VisioReason.CONFERENCE_ENDED: "The conference has ended.",
    VisioReason.BAD_REQUEST: "The call request was not understood.",
    VisioReason.SERVER_NOT_ALLOWED: "Your homeserver is not allowed to join this conference.",
    VisioReason.MEDIA_FAILED: "The media connection failed.",
    VisioReason.REPLACED: "This call was replaced by a new one.",
    VisioReason.INVITE_EXPIRED: "The call invitation expired.",
    VisioReason.SHUTDOWN: "The call service is restarting.",
    VisioReason.CONFERENCE_FULL: "The call is full.",
    VisioReason.LINK_NOT_ALLOWED: "This ministry does not link its calls with yours.",
    VisioReason.UNTRUSTED_PEER: "Your bot's device is not one this ministry trusts.",
    VisioReason.REMOTE_GUESTS: "This ministry's policy does not allow guests of other ministries.",
}


@dataclass(frozen=True)
class GroupFields:
    """The MSC3401/MSC3898 fields every conference message carries.

    ``device_id`` is the sender's device, informational only (identity comes from the Olm sender).
    ``conf_id`` and ``dest_session_id`` are "" while the participant does not know them yet (before the
    bot's answer); the bot always fills both."""

    conf_id: str
    device_id: str
    sender_session_id: str
    dest_session_id: str
    seq: int


@dataclass(frozen=True)
class ConferenceMessage:
    """One parsed conference to-device message."""

    message: CallMessage
    group: GroupFields
    room_id: str | None = None  # m.call.invite only (required there)
    replaces: str | None = None  # m.call.invite from the bot after a restart: the call it replaces
    visio_reason: str | None = None  # m.call.hangup from the bot
    visio_message: str | None = None

    @property
    def call_id(self) -> str:
        return self.message.call_id

    @property
    def party_id(self) -> str | None:
        return self.message.party_id

    @property
    def event_type(self) -> str:
        return event_type_of(self.message)


def _room_id(value: object, limits: Limits) -> str:
    text = string_field(value, ROOM_ID_KEY, limits.max_user_id_chars)
    if not text.startswith("!") or any(ch.isspace() for ch in text):
        raise SignalingError(ERR_BAD_VALUE, f"{ROOM_ID_KEY}: not a Matrix room ID")
    return text


def _group_fields(content: Mapping[str, Any], limits: Limits) -> GroupFields:
    conf_id = require_field(content, "conf_id", "conf_id")
    if conf_id != "":  # "" = not known yet (the room's active conference), until the bot's answer
        conf_id = voip_id(conf_id, "conf_id", limits)
    device_id = string_field(
        require_field(content, "device_id", "device_id"), "device_id", limits.max_id_chars
    )
    sender_session = voip_id(
        require_field(content, "sender_session_id", "sender_session_id"), "sender_session_id", limits
    )
    dest_session = require_field(content, "dest_session_id", "dest_session_id")
    if dest_session != "":
        dest_session = voip_id(dest_session, "dest_session_id", limits)
    seq = int_field(require_field(content, "seq", "seq"), "seq", minimum=0, maximum=MAX_SEQ)
    return GroupFields(conf_id, device_id, sender_session, dest_session, seq)


def parse_conference_message(
    event_type: str, content: object, *, limits: Limits = DEFAULT_LIMITS
) -> ConferenceMessage | SignalingError:
    """Parse one to-device ``m.call.*`` message of the conference protocol (version must be "1")."""
    message = parse_call_content(event_type, content, limits=limits, strict_version=True)
    if isinstance(message, SignalingError):
        return message
    assert isinstance(content, dict)  # parse_call_content refused anything else
    try:
        is_invite = isinstance(message, CallInvite)
        group = _group_fields(content, limits)
        room_id = replaces = visio_reason = visio_message = None
        if is_invite:
            room_id = _room_id(require_field(content, ROOM_ID_KEY, ROOM_ID_KEY), limits)
            if REPLACES_KEY in content:
                replaces = voip_id(content[REPLACES_KEY], REPLACES_KEY, limits)
        if isinstance(message, CallHangup):
            if VISIO_REASON_KEY in content:
                visio_reason = string_field(
                    content[VISIO_REASON_KEY], VISIO_REASON_KEY, limits.max_reason_chars
                )
            if VISIO_MESSAGE_KEY in content:
                visio_message = string_field(
                    content[VISIO_MESSAGE_KEY], VISIO_MESSAGE_KEY, limits.max_message_chars
                )
        return ConferenceMessage(message, group, room_id, replaces, visio_reason, visio_message)
    except SignalingError as error:
        return error


def with_group_fields(content: Content, group: GroupFields) -> Content:
    """Add the group fields to content made by a ``build`` function (mutates and returns it)."""
    content["conf_id"] = group.conf_id
    content["device_id"] = group.device_id
    content["sender_session_id"] = group.sender_session_id
    content["dest_session_id"] = group.dest_session_id
    content["seq"] = group.seq
    return content


# Builders: conference content never carries the unstable metadata key (our clients read the spec one).


def build_conference_invite(
    call_id: str,
    party_id: str,
    group: GroupFields,
    room_id: str,
    offer_sdp: str,
    lifetime_ms: int,
    *,
    stream_metadata: StreamMetadataMap | None = None,
    replaces: str | None = None,
) -> Content:
    content = build_invite(
        call_id, party_id, offer_sdp, lifetime_ms, stream_metadata=stream_metadata, unstable_key=False
    )
    content[ROOM_ID_KEY] = room_id
    if replaces is not None:
        content[REPLACES_KEY] = replaces
    return with_group_fields(content, group)


def build_conference_answer(
    call_id: str,
    party_id: str,
    group: GroupFields,
    answer_sdp: str,
    *,
    stream_metadata: StreamMetadataMap | None = None,
) -> Content:
    content = build_answer(call_id, party_id, answer_sdp, stream_metadata=stream_metadata, unstable_key=False)
    return with_group_fields(content, group)


def build_conference_candidates(
    call_id: str, party_id: str, group: GroupFields, candidates: tuple[CandidateEntry, ...]
) -> Content:
    return with_group_fields(build_candidates(call_id, party_id, candidates), group)


def build_conference_negotiate(
    call_id: str,
    party_id: str,
    group: GroupFields,
    description_type: Literal["offer", "answer"],
    sdp: str,
    *,
    lifetime_ms: int | None = None,
    stream_metadata: StreamMetadataMap | None = None,
) -> Content:
    content = build_negotiate(
        call_id,
        party_id,
        description_type,
        sdp,
        lifetime_ms=lifetime_ms,
        stream_metadata=stream_metadata,
        unstable_key=False,
    )
    return with_group_fields(content, group)


def build_conference_stream_metadata_changed(
    call_id: str, party_id: str, group: GroupFields, stream_metadata: StreamMetadataMap
) -> Content:
    content = build_stream_metadata_changed(call_id, party_id, stream_metadata, unstable_key=False)
    return with_group_fields(content, group)


def build_conference_reject(call_id: str, party_id: str, group: GroupFields) -> Content:
    return with_group_fields(build_reject(call_id, party_id), group)


def build_conference_hangup(
    call_id: str,
    party_id: str,
    group: GroupFields,
    visio_reason: VisioReason | None = None,
    message: str | None = None,
    *,
    reason: str | None = None,
) -> Content:
    """A hangup; from the bot, with ``visio_reason`` (and its default sentence unless ``message``)."""
    spec_reason = reason or (SPEC_REASON_FOR[visio_reason] if visio_reason is not None else "user_hangup")
    content = build_hangup(call_id, party_id, spec_reason)
    if visio_reason is not None:
        content[VISIO_REASON_KEY] = str(visio_reason)
        content[VISIO_MESSAGE_KEY] = message or DEFAULT_MESSAGE_FOR[visio_reason]
    elif message is not None:
        content[VISIO_MESSAGE_KEY] = message
    return with_group_fields(content, group)


def invite_expired(invite: CallInvite | ConferenceMessage, received_age_ms: int) -> bool:
    """Whether an invite received ``received_age_ms`` ago has outlived its ``lifetime`` (to-device messages
    have no server timestamp: the age is counted from when the shell received it)."""
    message = invite.message if isinstance(invite, ConferenceMessage) else invite
    if not isinstance(message, CallInvite):
        raise ValueError(f"invite_expired: expected an m.call.invite, got {event_type_of(message)}")
    return received_age_ms >= message.lifetime_ms


def refuse_invite(
    invite: ConferenceMessage,
    *,
    bot_party_id: str,
    bot_device_id: str,
    bot_session_id: str,
    visio_reason: VisioReason,
    message: str | None = None,
) -> tuple[str, Content]:
    """(event type, content) of the hangup answering an invite the bot refuses before any call state exists
    (not a member, unverified device, no conference...). Its ``seq`` is 0: the first message of the call."""
    if not isinstance(invite.message, CallInvite):
        raise ValueError(f"refuse_invite: expected an m.call.invite, got {invite.event_type}")
    group = GroupFields(
        conf_id=invite.group.conf_id,
        device_id=bot_device_id,
        sender_session_id=bot_session_id,
        dest_session_id=invite.group.sender_session_id,
        seq=0,
    )
    return HANGUP, build_conference_hangup(invite.call_id, bot_party_id, group, visio_reason, message)


__all__ = [
    "DEFAULT_MESSAGE_FOR",
    "REPLACES_KEY",
    "ROOM_ID_KEY",
    "SPEC_REASON_FOR",
    "VISIO_MESSAGE_KEY",
    "VISIO_REASON_KEY",
    "ConferenceMessage",
    "GroupFields",
    "VisioReason",
    "build_conference_answer",
    "build_conference_candidates",
    "build_conference_hangup",
    "build_conference_invite",
    "build_conference_negotiate",
    "build_conference_reject",
    "build_conference_stream_metadata_changed",
    "invite_expired",
    "parse_conference_message",
    "refuse_invite",
    "with_group_fields",
]
