"""Validation of peers' SDP before aiortc sees it, and codec filtering of offers (pure, no I/O).

aiortc accepts a lot silently (no fingerprint, no candidates) and fails later, far from the cause;
these checks turn bad input into a precise ``InvalidSdpError`` / ``UnsupportedCodecError``.
Offers are also filtered to the codecs the relay can forward without transcoding (Opus, VP8,
H264 and their RTX), by removing the other payload types from the text, so that every other line
(rid, simulcast, extmap ...) reaches aiortc untouched.
"""

from __future__ import annotations

from aiortc import sdp as aiortc_sdp

from .errors import InvalidSdpError, UnsupportedCodecError

FORWARDABLE = {"audio": ("audio/opus",), "video": ("video/vp8", "video/h264")}
FINGERPRINT_ALGORITHMS = ("sha-1", "sha-224", "sha-256", "sha-384", "sha-512")
MEDIA_KINDS = ("audio", "video", "application")


def check_remote_sdp(sdp: str, sdp_type: str, *, max_bytes: int, max_sections: int) -> str:
    """Validate a peer's offer or answer; returns the SDP to give aiortc (offers: codec-filtered)."""
    if not isinstance(sdp, str):
        raise InvalidSdpError(f"SDP must be a string, got {type(sdp).__name__}")
    size = len(sdp.encode("utf-8", errors="replace"))
    if size > max_bytes:
        raise InvalidSdpError(f"SDP is {size} bytes, more than the {max_bytes} allowed")
    if not sdp.lstrip().startswith("v=0"):
        raise InvalidSdpError("SDP does not start with 'v=0'")
    if sdp.count("\nm=") > max_sections:
        raise InvalidSdpError(f"SDP has more than {max_sections} media sections")
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises ValueError, IndexError, KeyError ... on garbage
        raise InvalidSdpError(f"SDP could not be parsed: {exc!r}") from exc
    if not description.media:
        raise InvalidSdpError("SDP has no media section")
    drop: dict[int, set[int]] = {}
    for index, media in enumerate(description.media):
        where = f"media section {index} (mid {media.rtp.muxId!r}, {media.kind})"
        if media.kind not in MEDIA_KINDS:
            raise InvalidSdpError(f"{where}: unsupported media kind {media.kind!r}")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise InvalidSdpError(f"{where}: ICE ufrag or password is missing")
        if media.dtls is None or not media.dtls.fingerprints:
            raise InvalidSdpError(f"{where}: DTLS fingerprint is missing")
        for fingerprint in media.dtls.fingerprints:
            if fingerprint.algorithm.lower() not in FINGERPRINT_ALGORITHMS:
                raise InvalidSdpError(
                    f"{where}: unknown DTLS fingerprint algorithm {fingerprint.algorithm!r}"
                )
        if media.kind == "application":
            continue
        if not media.rtcp_mux:
            raise InvalidSdpError(f"{where}: rtcp-mux is required")
        if not media.rtp.muxId:
            raise InvalidSdpError(f"{where}: a=mid is required")
        if sdp_type != "offer" or media.port == 0:
            continue
        listed = {int(f) for f in media.fmt if isinstance(f, int) or str(f).isdigit()}
        codecs = [c for c in media.rtp.codecs if c.payloadType in listed]
        keep = {c.payloadType for c in codecs if c.mimeType.lower() in FORWARDABLE[media.kind]}
        keep |= {
            c.payloadType
            for c in codecs
            if c.mimeType.lower().endswith("/rtx") and c.parameters.get("apt") in keep
        }
        if not keep:
            offered = ", ".join(sorted({c.mimeType for c in codecs})) or "none"
            raise UnsupportedCodecError(
                f"{where}: no forwardable codec offered ({offered}); "
                f"the relay forwards {', '.join(FORWARDABLE[media.kind])}"
            )
        removed = listed - keep
        if removed:
            drop[index] = removed
    return _remove_payload_types(sdp, drop) if drop else sdp


def _remove_payload_types(sdp: str, drop: dict[int, set[int]]) -> str:
    newline = "\r\n" if "\r\n" in sdp else "\n"
    out: list[str] = []
    index = -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
            removed = drop.get(index, set())
            if removed:
                parts = line.split(" ")
                line = " ".join(parts[:3] + [p for p in parts[3:] if not (p.isdigit() and int(p) in removed)])
        elif index >= 0 and index in drop and _attribute_payload_type(line) in drop[index]:
            continue
        out.append(line)
    return newline.join(out) + newline


def _attribute_payload_type(line: str) -> int | None:
    for prefix in ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"):
        if line.startswith(prefix):
            value = line[len(prefix) :].split(" ", 1)[0]
            return int(value) if value.isdigit() else None
    return None
