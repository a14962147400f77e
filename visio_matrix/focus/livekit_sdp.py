"""Pure helpers of the LiveKit signaling: the join request in the URL, trickled candidates, and the
SDP details livekit-client relies on (no I/O).

- ``decode_join_request``: ``join_request`` query parameter = base64url (padded or not) of a
  ``WrappedJoinRequest`` whose ``join_request`` bytes are a ``JoinRequest``, raw or gzip;
- ``rewrite_msids``: a LiveKit subscriber finds the publisher of a track from the msid *stream* id
  (``PA_sid|TR_sid``) and the track from the msid track id or ``mid_to_track_id``; the relay writes
  its own ids, so the answer's ``a=msid`` lines are rewritten per mid;
- ``sending_mids``: which of the client's m-lines carry which of its tracks (msid track id = the
  ``cid`` of its ``add_track`` request), for ``TrackInfo.mid``;
- ``parse_candidate_init``: ``trickle.candidateInit`` is the JSON of an ``RTCIceCandidateInit``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from livekit.protocol import rtc

MAX_JOIN_REQUEST_BYTES = 256 * 1024  # decompressed; the offer inside is limited by the relay (64 KiB)


class JoinRequestError(ValueError):
    """The ``join_request`` parameter is not a valid (wrapped, optionally gzipped) JoinRequest."""


def decode_join_request(value: str) -> rtc.JoinRequest:
    """The ``JoinRequest`` in a ``join_request`` query parameter; ``JoinRequestError`` says what is wrong."""
    if not value:
        raise JoinRequestError("join_request is required")
    text = value.strip().replace("-", "+").replace("_", "/").rstrip("=")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise JoinRequestError("cannot base64 decode wrapped join request") from None
    wrapped = rtc.WrappedJoinRequest()
    try:
        wrapped.ParseFromString(raw)
    except DecodeError:
        raise JoinRequestError("cannot unmarshal wrapped join request") from None
    data = wrapped.join_request
    if wrapped.compression == rtc.WrappedJoinRequest.GZIP:
        data = _gunzip(data)
    elif wrapped.compression != rtc.WrappedJoinRequest.NONE:
        raise JoinRequestError(f"unknown join request compression {wrapped.compression}")
    if len(data) > MAX_JOIN_REQUEST_BYTES:
        raise JoinRequestError("join request too large")
    request = rtc.JoinRequest()
    try:
        request.ParseFromString(data)
    except DecodeError:
        raise JoinRequestError("cannot unmarshal join request") from None
    return request


def _gunzip(data: bytes) -> bytes:
    decompressor = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        out = decompressor.decompress(data, MAX_JOIN_REQUEST_BYTES + 1)
    except zlib.error:
        raise JoinRequestError("cannot read decompressed join request") from None
    if len(out) > MAX_JOIN_REQUEST_BYTES:
        raise JoinRequestError("join request too large")
    return out


def encode_join_request(request: rtc.JoinRequest, compress: bool = True) -> str:
    """The ``join_request`` parameter as livekit-client writes it (for tests and Python clients)."""
    data = request.SerializeToString()
    wrapped = rtc.WrappedJoinRequest(
        join_request=gzip.compress(data) if compress else data,
        compression=rtc.WrappedJoinRequest.GZIP if compress else rtc.WrappedJoinRequest.NONE,
    )
    return base64.urlsafe_b64encode(wrapped.SerializeToString()).decode("ascii")


@dataclass(frozen=True)
class CandidateInit:
    candidate: str | None  # "candidate:..." line; None = end of candidates
    sdp_mid: str | None
    sdp_mline_index: int | None


def parse_candidate_init(text: str) -> CandidateInit:
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("candidateInit is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("candidateInit is not a JSON object")
    candidate = data.get("candidate")
    mid = data.get("sdpMid")
    index = data.get("sdpMLineIndex")
    if candidate is not None and not isinstance(candidate, str):
        raise ValueError("candidateInit.candidate must be a string")
    if mid is not None and not isinstance(mid, str):
        raise ValueError("candidateInit.sdpMid must be a string")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        raise ValueError("candidateInit.sdpMLineIndex must be an integer")
    return CandidateInit(candidate or None, mid, index)


def _sections(sdp: str) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([line])
        elif sections and line:
            sections[-1].append(line)
    return sections


def _mid(section: list[str]) -> str | None:
    return next((line[6:].strip() for line in section if line.startswith("a=mid:")), None)


def rewrite_msids(sdp: str, msids: Mapping[str, tuple[str, str]]) -> str:
    """``sdp`` with the ``a=msid`` line of each mid in ``msids`` set to ``stream track``."""
    if not msids:
        return sdp
    newline = "\r\n" if "\r\n" in sdp else "\n"
    out: list[str] = []
    mid: str | None = None
    section: list[str] = []

    def flush() -> None:
        if mid is not None and mid in msids:
            stream, track = msids[mid]
            kept = [line for line in section if not line.startswith("a=msid:")]
            at = next((i + 1 for i, line in enumerate(kept) if line.startswith("a=mid:")), len(kept))
            kept.insert(at, f"a=msid:{stream} {track}")
            out.extend(kept)
        else:
            out.extend(section)

    for line in sdp.splitlines():
        if line.startswith("m="):
            flush()
            section, mid = [line], None
        elif section:
            section.append(line)
            if line.startswith("a=mid:"):
                mid = line[6:].strip()
        elif line:
            out.append(line)
    flush()
    return newline.join(out) + newline


def section_codecs(sdp: str) -> dict[str, str]:
    """mid -> mime type of the first codec of its m-line (``video/VP8``)."""
    out: dict[str, str] = {}
    for section in _sections(sdp):
        mid = _mid(section)
        parts = section[0].split(" ")
        kind, formats = parts[0][2:], parts[3:]
        if mid is None or not formats:
            continue
        for line in section:
            if line.startswith(f"a=rtpmap:{formats[0]} "):
                out[mid] = f"{kind}/{line.split(' ', 1)[1].split('/')[0]}"
                break
    return out


def sending_mids(offer_sdp: str) -> dict[str, str]:
    """msid track id -> mid, for the client's m-lines that send (``sendonly``/``sendrecv``)."""
    out: dict[str, str] = {}
    for section in _sections(offer_sdp):
        mid = _mid(section)
        direction = next(
            (
                line[2:]
                for line in section
                if line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")
            ),
            "sendrecv",
        )
        msid = next((line[7:].split() for line in section if line.startswith("a=msid:")), [])
        if mid is None or direction not in ("sendonly", "sendrecv") or len(msid) < 2:
            continue
        out[msid[1]] = mid
    return out
