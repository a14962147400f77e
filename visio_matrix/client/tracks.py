"""Remote tracks of a conference call, each with the Matrix identity of whose media it is.

The relay sends every other participant's track on its own m-line, labelled by the SDP ``msid``
(stream id, track id). The bot's ``sdp_stream_metadata`` (in ``m.call.answer`` / ``m.call.negotiate``
/ the re-invite) maps each stream id to {purpose, user_id, device_id}. After every remote description
the session calls :func:`describe_remote_media` (pure: SDP text in, one entry per receiving m-line
out) and :meth:`RemoteTracks.update` joins that with aiortc's receiver tracks (found by mid) and the
metadata. An m-line the relay stopped sending on (``inactive``: aiortc cannot remove m-lines) drops
out of the set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

SENDING_DIRECTIONS = ("sendonly", "sendrecv")


@dataclass(frozen=True)
class RemoteMedia:
    """One m-line on which the remote side (the relay) sends media to us."""

    mid: str
    kind: str  # "audio" | "video"
    stream_id: str
    track_id: str


def describe_remote_media(sdp: str) -> tuple[RemoteMedia, ...]:
    """The m-lines of a remote description (offer or answer) on which the remote side sends.

    Raises ValueError when the SDP cannot be parsed. An m-line without ``a=mid`` or ``a=msid`` is
    skipped: the relay always writes both, and without them it cannot be named.
    """
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises assorted errors on garbage
        raise ValueError(f"unreadable SDP: {exc}") from exc
    media: list[RemoteMedia] = []
    for m in description.media:
        if m.kind not in ("audio", "video") or m.direction not in SENDING_DIRECTIONS:
            continue
        mid = m.rtp.muxId
        if not mid or not m.msid:
            continue
        parts = m.msid.split()
        if len(parts) != 2:
            continue
        media.append(RemoteMedia(mid=mid, kind=m.kind, stream_id=parts[0], track_id=parts[1]))
    return tuple(media)


@dataclass(frozen=True)
class RemoteTrack:
    """A track we receive, and whose it is (``user_id``/``device_id`` as the bot told us; None if unknown)."""

    track: MediaStreamTrack
    kind: str
    user_id: str | None
    device_id: str | None
    purpose: str
    stream_id: str
    mid: str


@dataclass(frozen=True)
class StreamIdentity:
    """What ``sdp_stream_metadata`` says about one remote stream."""

    purpose: str = "m.usermedia"
    user_id: str | None = None
    device_id: str | None = None


class RemoteTracks:
    """The current set of remote tracks; waiters are woken on every change."""

    def __init__(self) -> None:
        self._tracks: dict[str, RemoteTrack] = {}  # by mid
        self._changed = asyncio.Condition()
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[RemoteTrack]:
        return iter(list(self._tracks.values()))

    def __len__(self) -> int:
        return len(self._tracks)

    def find(self, user_id: str, kind: str, purpose: str | None = None) -> RemoteTrack | None:
        return next(
            (
                t
                for t in self._tracks.values()
                if t.user_id == user_id and t.kind == kind and (purpose is None or t.purpose == purpose)
            ),
            None,
        )

    async def update(
        self,
        media: tuple[RemoteMedia, ...],
        receiver_track: Callable[[str], MediaStreamTrack | None],
        metadata: Mapping[str, StreamIdentity],
    ) -> None:
        """Replace the set: one RemoteTrack per sending m-line whose receiver track exists.

        ``receiver_track(mid)`` gives aiortc's receiver track of that m-line's transceiver.
        """
        tracks: dict[str, RemoteTrack] = {}
        for m in media:
            track = receiver_track(m.mid)
            if track is None:
                continue
            identity = metadata.get(m.stream_id, StreamIdentity())
            tracks[m.mid] = RemoteTrack(
                track=track,
                kind=m.kind,
                user_id=identity.user_id,
                device_id=identity.device_id,
                purpose=identity.purpose,
                stream_id=m.stream_id,
                mid=m.mid,
            )
        async with self._changed:
            self._tracks = tracks
            self._error = None
            self._changed.notify_all()

    async def clear(self, error: BaseException | None = None) -> None:
        """Empty the set; with ``error``, current and future waiters raise it (the call is over)."""
        async with self._changed:
            self._tracks = {}
            self._error = error
            self._changed.notify_all()

    async def wait_for(
        self, user_id: str, kind: str, timeout: float, purpose: str | None = None
    ) -> RemoteTrack:
        """The first (current or future) track of ``user_id`` of that kind; TimeoutError after ``timeout``."""
        found: RemoteTrack | None = None

        def ready() -> bool:
            nonlocal found
            found = self.find(user_id, kind, purpose)
            return found is not None or self._error is not None

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
        except TimeoutError:
            raise TimeoutError(f"no {kind} track from {user_id} after {timeout}s") from None
        if found is None:
            assert self._error is not None
            raise self._error
        return found
