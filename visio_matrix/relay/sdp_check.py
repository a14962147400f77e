"""Validation of peers' SDP before aiortc sees it, codec filtering and per-section rejection (pure).

aiortc accepts a lot silently (no fingerprint, no candidates) and fails later, far from the cause;
these checks turn bad input into a precise ``InvalidSdpError`` / ``UnsupportedCodecError``.
Offers are also filtered to the codecs the relay can forward without transcoding (Opus, VP8,
H264 and their RTX), by removing the other payload types from the text, so that every other line
(rid, simulcast, extmap ...) reaches aiortc untouched. An offered audio/video section with no such
codec, or stopped by the peer (port 0), is *rejected* alone (``sdp_sections``): the rest of the
offer still works; only an offer left with nothing usable is refused. Simulcast video sections are
noted (``simulcast``) so the relay can accept one layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from aiortc import sdp as aiortc_sdp

from .errors import InvalidSdpError, UnsupportedCodecError
from .sdp_sections import RejectedSection, SdpText, rejection_for, stand_in, transport_lines
from .simulcast import SimulcastOffer, parse_simulcast, rid_extensions

FORWARDABLE = {"audio": ("audio/opus",), "video": ("video/vp8", "video/h264")}
FINGERPRINT_ALGORITHMS = ("sha-1", "sha-224", "sha-256", "sha-384", "sha-512")
MEDIA_KINDS = ("audio", "video", "application")


@dataclass(frozen=True)
class CheckedSdp:
    """A peer's SDP, checked: what to give aiortc, and what the relay's SDP must say back."""

    sdp: str  # for aiortc: codecs filtered, rejected sections replaced by inactive stand-ins
    rejected: tuple[RejectedSection, ...] = ()
    simulcast: tuple[SimulcastOffer, ...] = ()
    # (mid, RID header extensions) of every video section offering them: negotiated there too.
    rid_extensions: tuple[tuple[str, tuple[tuple[int, str], ...]], ...] = ()


def check_remote_sdp(sdp: str, sdp_type: str, *, max_bytes: int, max_sections: int) -> CheckedSdp:
    """Validate a peer's offer or answer; see ``CheckedSdp``."""
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
    rejected: dict[int, str] = {}  # index -> why
    for index, media in enumerate(description.media):
        where = f"media section {index} (mid {media.rtp.muxId!r}, {media.kind})"
        if media.kind not in MEDIA_KINDS:
            raise InvalidSdpError(f"{where}: unsupported media kind {media.kind!r}")
        if media.kind != "application" and media.port == 0:
            # Stopped by the peer: no transport needed; aiortc must see it inactive (it ignores port 0).
            rejected[index] = f"{where}: stopped by the peer (port 0)"
            continue
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
        if sdp_type != "offer":
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
            rejected[index] = (
                f"{where}: no forwardable codec offered ({offered}); "
                f"the relay forwards {', '.join(FORWARDABLE[media.kind])}"
            )
            continue
        removed = listed - keep
        if removed:
            drop[index] = removed
    kinds = [m.kind for i, m in enumerate(description.media) if i not in rejected]
    if sdp_type == "offer" and rejected and not kinds:
        raise UnsupportedCodecError("; ".join(rejected[i] for i in sorted(rejected)))
    if not drop and not rejected:
        return _noted(CheckedSdp(sdp), SdpText.parse(sdp), sdp_type)
    return _rewrite(sdp, sdp_type, drop, rejected)


def _rewrite(sdp: str, sdp_type: str, drop: dict[int, set[int]], reasons: dict[int, str]) -> CheckedSdp:
    text = SdpText.parse(sdp)
    transport = transport_lines(text, reasons)
    rejected: list[RejectedSection] = []
    sections: list[list[str]] = []
    for index, section in enumerate(text.sections):
        if index in reasons and sdp_type == "offer":
            rejection = rejection_for(index, section, reasons[index])
            rejected.append(rejection)
            sections.append(stand_in(section, rejection, transport))
        elif index in reasons:
            # An answer that stops one of the relay's sections: aiortc must see it inactive.
            sections.append(_inactive(section, transport))
        elif index in drop:
            sections.append(_without_payload_types(section, drop[index]))
        else:
            sections.append(list(section))
    filtered = text.replace(sections)
    return _noted(CheckedSdp(str(filtered), tuple(rejected)), filtered, sdp_type)


def _noted(checked: CheckedSdp, text: SdpText, sdp_type: str) -> CheckedSdp:
    if sdp_type != "offer":
        return checked
    return replace(checked, simulcast=parse_simulcast(text), rid_extensions=rid_extensions(text))


def _inactive(section: tuple[str, ...], transport: tuple[str, ...]) -> list[str]:
    directions = ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")
    lines = [line for line in section if line not in directions]
    if not any(line.startswith("a=ice-ufrag:") for line in lines):
        lines += list(transport)
    return [*lines, "a=inactive"]


def _without_payload_types(section: tuple[str, ...], removed: set[int]) -> list[str]:
    parts = section[0].split(" ")
    m_line = " ".join(parts[:3] + [p for p in parts[3:] if not (p.isdigit() and int(p) in removed)])
    return [m_line, *(line for line in section[1:] if _attribute_payload_type(line) not in removed)]


def _attribute_payload_type(line: str) -> int | None:
    for prefix in ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"):
        if line.startswith(prefix):
            value = line[len(prefix) :].split(" ", 1)[0]
            return int(value) if value.isdigit() else None
    return None
