"""Which codecs the relay negotiates on each m-line, and how aiortc's negotiation errors are reported.

The SFU path never transcodes: a subscriber's m-line carries exactly the publisher's codec, and the
m-lines a participant publishes on offer only forwardable codecs (Opus, VP8, H264, + RTX).
"""

from __future__ import annotations

from aiortc import RTCRtpSender
from aiortc.exceptions import InvalidStateError, OperationError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from . import aiortc_hooks as hooks
from .errors import InvalidSdpError, NegotiationError, RelayError, UnsupportedCodecError
from .participant import Participant
from .sdp_check import FORWARDABLE


def capabilities_matching(kind: str, codec: RTCRtpCodecParameters) -> list[RTCRtpCodecCapability]:
    """The sender capabilities equal to the publisher's codec (same mime and H264 profile), + RTX."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    mime = codec.mimeType.lower()
    same = [c for c in caps if c.mimeType.lower() == mime]
    if mime == "video/h264":
        keys = ("packetization-mode", "profile-level-id")
        exact = [c for c in same if all(c.parameters.get(k) == codec.parameters.get(k) for k in keys)]
        same = exact or same
    rtx = [c for c in caps if c.mimeType.lower().endswith("/rtx")]
    return same[:1] + rtx


def prefer_forwardable(p: Participant) -> None:
    """Offer/answer only forwardable codecs on the m-lines the participant publishes on."""
    for t in p.pc.getTransceivers():
        if t in p.down_transceivers or hooks.has_codec_preferences(t):
            continue
        caps = RTCRtpSender.getCapabilities(t.kind).codecs
        allowed = FORWARDABLE[t.kind]
        wanted = [c for c in caps if c.mimeType.lower() in allowed]
        wanted += [c for c in caps if c.mimeType.lower().endswith("/rtx")] if t.kind == "video" else []
        t.setCodecPreferences(wanted)


def translate_error(exc: Exception) -> RelayError:
    if isinstance(exc, RelayError):
        return exc
    if isinstance(exc, OperationError):
        return UnsupportedCodecError(f"no codec in common with the relay: {exc}")
    if isinstance(exc, InvalidStateError):
        return NegotiationError(f"SDP in the wrong signaling state: {exc}")
    return InvalidSdpError(f"SDP refused: {exc!r}")
