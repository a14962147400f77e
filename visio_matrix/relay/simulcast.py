"""Simulcast offers accepted as one layer (pure).

Browsers (Element Call, livekit-client) publish cameras with simulcast: the video section carries
``a=rid:<id> send`` lines, ``a=simulcast:send q;h;f`` and the ``rtp-stream-id`` /
``repaired-rtp-stream-id`` header extensions, and no SSRC lines. aiortc has no simulcast: its answer
drops the RID extensions and Chrome then refuses the answer. The relay forwards one layer: its
answer echoes the two RID extensions and accepts exactly one RID (``a=rid:<rid> recv``,
``a=simulcast:recv <rid>``), so the browser sends that layer only.

The RID extensions are accepted on *every* video section that offers them, simulcast or not:
livekit-client may later publish a simulcast camera on an m-line first negotiated to receive, and
Chrome refuses its own offer then ("negotiates simulcast but does not negotiate the RID RTP header
extension") unless the extensions were negotiated on that m-line before.

Which layer: livekit-client names its layers ``q``, ``h``, ``f`` (quarter, half, full resolution,
listed low to high); when every offered RID is one of those the highest offered is chosen. Otherwise
the first RID listed in ``a=simulcast`` (RFC 8853 lists them in order of preference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .sdp_sections import SdpText, section_direction, section_kind, section_mid, section_port

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
LIVEKIT_RIDS = ("q", "h", "f")  # low -> high


@dataclass(frozen=True)
class SimulcastOffer:
    """One offered simulcast video section and the single layer the relay accepts."""

    mid: str
    rids: tuple[str, ...]  # as listed in a=simulcast:send (paused ones excluded)
    chosen: str
    extensions: tuple[tuple[int, str], ...]  # (id, uri) of the RID header extensions offered

    @property
    def extmap_lines(self) -> tuple[str, ...]:
        return tuple(f"a=extmap:{ext_id} {uri}" for ext_id, uri in self.extensions)


def parse_simulcast(text: SdpText) -> tuple[SimulcastOffer, ...]:
    """The video sections of an offer that send simulcast and can be accepted as one layer.

    A section without the ``rtp-stream-id`` extension cannot be (the browser could not tell which
    layer a packet belongs to): it is left alone and the answer simply declines simulcast there.
    """
    found = []
    for section in text.sections:
        if section_kind(section) != "video" or section_port(section) == "0":
            continue
        mid = section_mid(section)
        rids = _send_rids(section)
        extensions = _rid_extensions(section)
        if mid is None or not rids or not any(uri == RID_URI for _, uri in extensions):
            continue
        found.append(SimulcastOffer(mid, rids, choose_rid(rids), extensions))
    return tuple(found)


def rid_extensions(text: SdpText) -> tuple[tuple[str, tuple[tuple[int, str], ...]], ...]:
    """(mid, RID header extensions offered) for every video section that offers them."""
    found = []
    for section in text.sections:
        mid = section_mid(section)
        extensions = _rid_extensions(section)
        if section_kind(section) == "video" and section_port(section) != "0" and mid and extensions:
            found.append((mid, extensions))
    return tuple(found)


def choose_rid(rids: Sequence[str]) -> str:
    if rids and all(rid in LIVEKIT_RIDS for rid in rids):
        return max(rids, key=LIVEKIT_RIDS.index)
    return rids[0]


def _send_rids(section: Sequence[str]) -> tuple[str, ...]:
    declared = []
    for line in section:
        if line.startswith("a=rid:"):
            parts = line[len("a=rid:") :].split(" ")
            if len(parts) >= 2 and parts[1] == "send":
                declared.append(parts[0])
    listed: list[str] = []
    for line in section:
        if line.startswith("a=simulcast:"):
            parts = line[len("a=simulcast:") :].split(" ")
            if len(parts) >= 2 and parts[0] == "send":
                # "q;h;~f" or alternatives "a,b;c": take each stream's first, non-paused alternative
                for stream in parts[1].split(";"):
                    for alternative in stream.split(","):
                        if alternative and not alternative.startswith("~"):
                            listed.append(alternative)
                            break
    if listed:
        return tuple(rid for rid in listed if rid in declared)
    return tuple(declared)


def _rid_extensions(section: Sequence[str]) -> tuple[tuple[int, str], ...]:
    out = []
    for line in section:
        if line.startswith("a=extmap:"):
            parts = line[len("a=extmap:") :].split(" ")
            ext_id = parts[0].split("/")[0]
            if len(parts) >= 2 and ext_id.isdigit() and parts[1] in (RID_URI, REPAIRED_RID_URI):
                out.append((int(ext_id), parts[1]))
    return tuple(out)


def answer_simulcast(answer_sdp: str, offers: Sequence[SimulcastOffer]) -> str:
    """Write the accepted layer (and the RID extensions, when missing) into the answer's sections."""
    if not offers:
        return answer_sdp
    by_mid = {offer.mid: offer for offer in offers}
    text = SdpText.parse(answer_sdp)
    sections = []
    for section in text.sections:
        offer = by_mid.get(section_mid(section) or "")
        if (
            offer is None
            or section_port(section) == "0"
            or section_direction(section) not in ("recvonly", "sendrecv")
        ):
            sections.append(section)
            continue
        lines = [line for line in section if not line.startswith(("a=rid:", "a=simulcast:"))]
        present = {line.split(" ", 1)[0] for line in lines if line.startswith("a=extmap:")}
        extmaps = [line for line in offer.extmap_lines if line.split(" ", 1)[0] not in present]
        insert_at = _after_last(lines, "a=extmap:") or _after_last(lines, "a=mid:") or len(lines)
        lines[insert_at:insert_at] = extmaps
        lines += [f"a=rid:{offer.chosen} recv", f"a=simulcast:recv {offer.chosen}"]
        sections.append(tuple(lines))
    return str(text.replace(sections))


def _after_last(lines: Sequence[str], prefix: str) -> int | None:
    found = None
    for index, line in enumerate(lines):
        if line.startswith(prefix):
            found = index + 1
    return found
