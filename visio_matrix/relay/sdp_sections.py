"""SDP media sections as text, and rejecting one section without refusing the whole offer (pure).

aiortc cannot reject a media section: an offered section with no codec it supports (VP9 or AV1
only, as Element Call's codec settings can produce) makes ``setRemoteDescription`` fail for the
whole offer, and it ignores port 0 (a section the peer stopped). So a section to reject is handed
to aiortc as an inactive *stand-in* (one codec aiortc knows, no tracks, the bundle's transport
lines) that keeps every m-line at its index, and the relay's SDP then writes that section back as
rejected (port 0, ``a=inactive``, out of the BUNDLE group), which is what RFC 3264 / JSEP expect.

::

    peer offer --(stand_in for rejected sections)--> aiortc --> aiortc's answer/offer
        --(write_rejected: port 0 at the same mid, BUNDLE group without it)--> peer
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# What a stand-in section offers aiortc: one codec it knows, nothing else.
STAND_IN_CODECS = {"audio": "opus/48000/2", "video": "VP8/90000"}
TRANSPORT_PREFIXES = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:", "a=ice-options:")
_STAND_IN_DROPPED = (
    "a=rtpmap:",
    "a=fmtp:",
    "a=rtcp-fb:",
    "a=rid:",
    "a=simulcast:",
    "a=ssrc:",
    "a=ssrc-group:",
    "a=msid:",
    "a=extmap:",
    "a=candidate:",
    "a=end-of-candidates",
    "a=sendrecv",
    "a=sendonly",
    "a=recvonly",
    "a=inactive",
    "a=bundle-only",
    *TRANSPORT_PREFIXES,
)


@dataclass(frozen=True)
class SdpText:
    """An SDP split into its session lines and one tuple of lines per media section."""

    session: tuple[str, ...]
    sections: tuple[tuple[str, ...], ...]
    newline: str

    @classmethod
    def parse(cls, sdp: str) -> SdpText:
        newline = "\r\n" if "\r\n" in sdp else "\n"
        session: list[str] = []
        sections: list[list[str]] = []
        for line in sdp.splitlines():
            if not line:
                continue
            if line.startswith("m="):
                sections.append([line])
            elif sections:
                sections[-1].append(line)
            else:
                session.append(line)
        return cls(tuple(session), tuple(tuple(s) for s in sections), newline)

    def __str__(self) -> str:
        lines = [*self.session, *(line for section in self.sections for line in section)]
        return self.newline.join(lines) + self.newline

    def replace(self, sections: Sequence[Sequence[str]], session: Sequence[str] | None = None) -> SdpText:
        return SdpText(
            tuple(self.session if session is None else session),
            tuple(tuple(s) for s in sections),
            self.newline,
        )


def section_mid(section: Sequence[str]) -> str | None:
    for line in section:
        if line.startswith("a=mid:"):
            return line[len("a=mid:") :].strip()
    return None


def section_kind(section: Sequence[str]) -> str:
    return section[0][2:].split(" ", 1)[0]


def section_port(section: Sequence[str]) -> str:
    parts = section[0].split(" ")
    return parts[1] if len(parts) > 1 else ""


def section_direction(section: Sequence[str]) -> str:
    for line in section:
        if line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            return line[2:]
    return "sendrecv"


@dataclass(frozen=True)
class RejectedSection:
    """A media section the relay rejects (answers with port 0), and why."""

    index: int
    mid: str
    kind: str
    m_line: str  # the rejected m-line as the relay writes it: "m=video 0 UDP/TLS/RTP/SAVPF 98"
    reason: str


def rejection_for(index: int, section: Sequence[str], reason: str) -> RejectedSection:
    parts = section[0].split(" ")
    kind = section_kind(section)
    proto = parts[2] if len(parts) > 2 else "UDP/TLS/RTP/SAVPF"
    formats = parts[3:4] or ["0"]
    return RejectedSection(
        index=index,
        mid=section_mid(section) or str(index),
        kind=kind,
        m_line=" ".join([f"m={kind}", "0", proto, *formats]),
        reason=reason,
    )


def transport_lines(text: SdpText, skip: Iterable[int] = ()) -> tuple[str, ...]:
    """ICE credentials, fingerprint and setup of the first section that has them (the bundle's)."""
    skipped = set(skip)
    for index, section in enumerate(text.sections):
        if index in skipped:
            continue
        lines = tuple(line for line in section if line.startswith(TRANSPORT_PREFIXES))
        if any(line.startswith("a=ice-ufrag:") for line in lines):
            return lines
    return ()


def stand_in(section: Sequence[str], rejected: RejectedSection, transport: Sequence[str]) -> list[str]:
    """What aiortc sees instead of a rejected section: inactive, one codec it knows, no tracks."""
    formats = rejected.m_line.split(" ")[3:]
    pt = formats[0] if formats and formats[0].isdigit() and int(formats[0]) >= 96 else _default_pt(rejected)
    parts = section[0].split(" ")
    proto = parts[2] if len(parts) > 2 else "UDP/TLS/RTP/SAVPF"
    out = [f"m={rejected.kind} 9 {proto} {pt}"]
    out += [line for line in section[1:] if not line.startswith(_STAND_IN_DROPPED)]
    if not any(line.startswith("a=mid:") for line in out):
        out.append(f"a=mid:{rejected.mid}")
    if not any(line == "a=rtcp-mux" for line in out):
        out.append("a=rtcp-mux")
    out += list(transport)
    out += [f"a=rtpmap:{pt} {STAND_IN_CODECS[rejected.kind]}", "a=inactive"]
    return out


def _default_pt(rejected: RejectedSection) -> str:
    return "111" if rejected.kind == "audio" else "96"


def write_rejected(sdp: str, rejected: Mapping[str, RejectedSection]) -> str:
    """The relay's SDP with each rejected mid written as a rejected section (port 0, inactive),
    and removed from the BUNDLE group."""
    if not rejected:
        return sdp
    text = SdpText.parse(sdp)
    skip = [i for i, s in enumerate(text.sections) if section_mid(s) in rejected]
    transport = transport_lines(text, skip)
    sections: list[list[str]] = []
    for section in text.sections:
        mid = section_mid(section)
        if mid is not None and mid in rejected:
            r = rejected[mid]
            sections.append([r.m_line, "c=IN IP4 0.0.0.0", *transport, f"a=mid:{mid}", "a=inactive"])
        else:
            sections.append(list(section))
    return str(text.replace(sections, without_bundle_mids(text.session, set(rejected))))


def without_bundle_mids(session: Sequence[str], mids: set[str]) -> list[str]:
    out = []
    for line in session:
        if line.startswith("a=group:BUNDLE"):
            items = [item for item in line.split(" ")[1:] if item and item not in mids]
            line = " ".join(["a=group:BUNDLE", *items])
        out.append(line)
    return out
