"""Transport: relay-to-relay links between ministries (issue 5, docs/federation.md).

In a room that spans ministries, each ministry's bot serves its own users; this module links this
relay to each other ministry's relay taking part in the room's call, with ONE WebRTC connection
per conference and peer. The link is signaled bot device to bot device with Olm-encrypted
to-device conference messages carrying ``io.visio.link`` (``signaling/link.py``), so the homeservers
only ever see ciphertext, and the DTLS fingerprints come only from that encrypted SDP.

- **Trust**: a peer's messages count only from a device of a bot listed in ``federation.peers``
  whose keys are pinned or cross-signed by its pinned master key (``crypto.peer_trust``), and only
  if its server is in ``policy.link_servers``. Anything else is refused with a reason the room sees.
- **Roles**: the side that sends the invite offers (its relay's link participant has mode "sfu");
  the other side answers and never offers (mode "sfu_answer_only"); when it needs more sections to
  send its users' streams, it asks for a new offer (``io.visio.link.update`` with ``reoffer``).
  Crossing invites: the invite of the lower server name wins.
- **Roster**: each side tells the other who is in on its side (``roster``); the hub counts them
  (``max_participants``, ending the call) and the room status shows them.
- **Faults**: a link that fails, is hung up by a stopping peer, or is not answered within
  ``ANSWER_TIMEOUT_S`` is retried with backoff (1, 2, 4, then every 5 s) while the room has a call;
  local participants never notice (the link is one participant among others). A restarted service
  re-invites its peers at once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from visio_matrix.clock import Clock
from visio_matrix.config.model import FederationConfig, PeerConfig, PolicyConfig
from visio_matrix.crypto.todevice import SecureToDevice
from visio_matrix.metrics import Metrics
from visio_matrix.relay.api import Negotiated, StreamInfo
from visio_matrix.relay.links import owners_of, sections_needed
from visio_matrix.signaling.conference import (
    ConferenceMessage,
    GroupFields,
    VisioReason,
    build_conference_answer,
    build_conference_hangup,
    build_conference_invite,
    build_conference_negotiate,
    parse_conference_message,
)
from visio_matrix.signaling.envelope import SUPPORTS_KEY, deflate, inflate
from visio_matrix.signaling.link import (
    LINK_UPDATE,
    LinkInfo,
    RosterEntry,
    build_link_update,
    link_info_of,
    parse_link_update,
    with_link_info,
)
from visio_matrix.signaling.messages import (
    CALL_EVENT_TYPES,
    CallAnswer,
    CallHangup,
    CallInvite,
    CallNegotiate,
    CallReject,
    SignalingError,
)
from visio_matrix.tasks import TaskOwner

from .hub_api import (
    GUEST_USER_PREFIX,
    LINK_STATES,
    ConferenceEnded,
    ConferenceStarted,
    HubApi,
    HubError,
    HubEvent,
    Identity,
    LinkState,
    LinkStatusChanged,
    ParticipantConnectedEvent,
    ParticipantJoined,
    ParticipantRemoved,
    ParticipantView,
    RelayLinkOptions,
    RemovalReason,
)

log = logging.getLogger(__name__)

LINK_INVITE_LIFETIME_MS = 30_000
ANSWER_TIMEOUT_S = 8.0  # an invite of ours unanswered this long: the peer is down, try again later
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 5.0)  # then every 5 s
REFUSED_RETRY_S = 60.0  # after a policy/trust refusal by the peer
TICK_S = 1.0
ROSTER_DEBOUNCE_S = 0.2
SEND_TIMEOUT_S = 10.0
STOP_HANGUP_S = 3.0
HUNG_UP_MEMORY_S = 120.0  # a stopping service waits this long at most to tell its peers


class Channel(Protocol):
    """``crypto.todevice.SecureToDeviceChannel``."""

    def add_handler(self, handler: Callable[[SecureToDevice], Awaitable[None]]) -> None: ...

    async def refresh_sender(self, message: SecureToDevice) -> SecureToDevice: ...

    async def send(self, user_id: str, device_id: str, event_type: str, content: dict[str, Any]) -> None: ...


class Trust(Protocol):
    """``crypto.peer_trust.PeerTrust``."""

    def peer_for(self, user_id: str) -> PeerConfig | None: ...

    async def verify(self, user_id: str, device_id: str, ed25519: str) -> Any: ...


class KeysSource(Protocol):
    async def query_keys(self, user_ids: list[str]) -> dict[str, Any]: ...


class Access(Protocol):
    async def is_joined(self, room_id: str, user_id: str) -> bool: ...


class Hub(HubApi, Protocol):
    """``calls.hub.ConferenceHub``: the transport contract plus what links need."""

    async def request_offer(self, participant_id: str, add_audio: int = 0, add_video: int = 0) -> None: ...

    async def end_conference(self, room_id: str, ended_by: str) -> Any: ...

    async def set_remote_participants(
        self, room_id: str, server_name: str, remote: tuple[Identity, ...]
    ) -> None: ...

    def local_participants(self, room_id: str) -> tuple[ParticipantView, ...]: ...

    def conference_of_room(self, room_id: str) -> str | None: ...

    async def active_rooms(self) -> list[str]: ...

    async def announce(self, event: LinkStatusChanged) -> None: ...

    def take_restorable(self, transport: Any) -> list[Any]: ...


@dataclass
class _Link:
    """One link of a room's call with one peer ministry; the hub's ``ParticipantLink`` for it."""

    owner: FederationLinks
    room_id: str
    peer: PeerConfig
    call_id: str
    offerer: bool
    devices: tuple[str, ...]  # the peer bot devices we send to (one once it answered)
    their_session: str = ""
    participant_id: str = ""
    seq: int = 0
    their_seq: int = -1
    awaiting_answer: bool = False
    answered: bool = False  # the first answer came (offerer) / was sent (answerer)
    invited_at: float = 0.0
    invite: tuple[dict[str, Any], tuple[StreamInfo, ...]] | None = None  # ours, to send again
    ended: bool = False
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def server(self) -> str:
        return self.peer.server_name

    def group(self) -> GroupFields:
        self.seq += 1
        return GroupFields(
            conf_id=self.owner.conference_id(self.room_id),
            device_id=self.owner.bot_device_id,
            sender_session_id=self.owner.session_id,
            dest_session_id=self.their_session,
            seq=self.seq,
        )

    async def send_offer(self, negotiated: Negotiated) -> None:
        await self.opened.wait()
        if self.ended:
            return
        if negotiated.sdp:
            log.info(
                "new link offer to %s for %s (%d streams)", self.server, self.room_id, len(negotiated.streams)
            )
            self.awaiting_answer = True
            content = build_conference_negotiate(
                self.call_id,
                self.owner.party_id,
                self.group(),
                "offer",
                negotiated.sdp,
                lifetime_ms=LINK_INVITE_LIFETIME_MS,
            )
            await self.owner.send(self, "m.call.negotiate", content, negotiated.streams)
        else:
            # We answer only: the far relay must offer again, with the sections our streams need.
            log.info(
                "asking %s for a new link offer for %s (sections to add: %s)",
                self.server,
                self.room_id,
                sections_needed(negotiated.streams),
            )
            self.seq += 1
            content = build_link_update(
                self.call_id,
                self.room_id,
                self.owner.session_id,
                self.seq,
                self.owner.link_info(self.room_id, ()),
                reoffer=sections_needed(negotiated.streams),
            )
            await self.owner.send(self, LINK_UPDATE, content, None)

    async def closed(self, reason: str) -> None:
        await self.owner.on_link_closed(self, reason)


@dataclass
class _PeerState:
    """Per (room, peer server): the link if any, and when to try again."""

    link: _Link | None = None
    state: LinkState = "closed"
    since_ms: int = 0
    failures: int = 0
    retry_at: float = 0.0
    detail: str = ""
    remote: tuple[Identity, ...] = ()
    peer_conf: str = ""  # the peer's conference id for the room, as its link messages give it


_REASON_FOR_HUB_CODE = {
    "not_a_member": VisioReason.NOT_A_MEMBER,
    "no_conference": VisioReason.NO_CONFERENCE,
    "conference_full": VisioReason.CONFERENCE_FULL,
}


class FederationLinks:
    def __init__(
        self,
        channel: Channel,
        hub: Hub,
        trust: Trust,
        keys: KeysSource,
        access: Access,
        policy: PolicyConfig,
        federation: FederationConfig,
        server_name: str,
        bot_user_id: str,
        bot_device_id: str,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self._channel = channel
        self._metrics = metrics
        self._hub = hub
        self._trust = trust
        self._keys = keys
        self._access = access
        self._policy = policy
        self._federation = federation
        self.server_name = server_name
        self.bot_user_id = bot_user_id
        self.bot_device_id = bot_device_id
        self.party_id = bot_device_id
        self._clock = clock
        self.session_id = secrets.token_urlsafe(12)  # new at every start: peers see a restart
        self._peers: dict[tuple[str, str], _PeerState] = {}  # (room id, server) -> state
        self._by_call: dict[str, _Link] = {}
        self._workers: dict[str, asyncio.Queue[Callable[[], Awaitable[None]]]] = {}
        self._roster_dirty: set[str] = set()
        # Link calls whose hangup has arrived (maybe not handled yet): their invite is stale.
        self._hung_up: dict[str, float] = {}
        # (room id, server) -> the peer's conference id linked with our call there when it ended: an
        # invite from that conference came before the peer learned of the end, and gets told.
        self._ended_with: dict[tuple[str, str], str] = {}
        self._wake = asyncio.Event()
        self._tasks = TaskOwner("federation-links")

    # ---- lifecycle -------------------------------------------------------------------------------

    def is_peer_bot(self, user_id: str) -> bool:
        """Whether ``user_id`` is a configured peer ministry's bot (its signaling is handled here)."""
        return self._trust.peer_for(user_id) is not None

    def start(self) -> None:
        self._channel.add_handler(self._on_secure)
        # Links of calls active at the last stop come back through ``maintain`` (the call is still
        # active in the store); the hub's records of them are only taken here so they are not kept.
        for record, participant in self._hub.take_restorable("federation"):
            log.info("link of %s with %s to be restored", record.room_id, participant.user_id)
        self._tasks.spawn(self._maintain_loop(), "maintain")
        self._tasks.spawn(self._roster_loop(), "rosters")

    async def stop(self) -> None:
        """Stop keeping links up, then tell linked peers we are going (they keep their local calls and
        retry until we are back), waiting at most ``STOP_HANGUP_S`` for that."""
        links = [ps.link for ps in self._peers.values() if ps.link is not None and not ps.link.ended]
        for link in links:
            link.ended = True
        await self._tasks.close()
        if links:
            sends = [asyncio.ensure_future(self._hangup(link, VisioReason.SHUTDOWN)) for link in links]
            _, late = await asyncio.wait(sends, timeout=STOP_HANGUP_S)
            for send in late:
                send.cancel()
            if late:
                log.warning("%d peers not told that we stop (their homeserver is slow or down)", len(late))
        self._peers.clear()
        self._by_call.clear()

    def conference_id(self, room_id: str) -> str:
        return self._hub.conference_of_room(room_id) or ""

    def link_states(self, room_id: str) -> dict[str, tuple[LinkState, str]]:
        """Per peer server: (state, detail), for tests and the status."""
        return {
            server: (ps.state, ps.detail) for (room, server), ps in self._peers.items() if room == room_id
        }

    def link_participant(self, room_id: str, server_name: str) -> str | None:
        ps = self._peers.get((room_id, server_name))
        return ps.link.participant_id if ps and ps.link else None

    # ---- what we tell the peer -------------------------------------------------------------------

    def link_info(self, room_id: str, streams: Sequence[StreamInfo] | None) -> LinkInfo:
        local = self._hub.local_participants(room_id)
        return LinkInfo(
            server_name=self.server_name,
            owners=owners_of(streams or ()),
            roster=tuple(RosterEntry(p.identity.user_id, p.identity.device_id) for p in local),
            onward=self._policy.relay_onwards,
            guests=sum(1 for p in local if p.identity.user_id.startswith(GUEST_USER_PREFIX)),
        )

    async def send(
        self, link: _Link, event_type: str, content: dict[str, Any], streams: Sequence[StreamInfo] | None
    ) -> None:
        if event_type != LINK_UPDATE and event_type != "m.call.hangup":
            with_link_info(content, self.link_info(link.room_id, streams))
        content[SUPPORTS_KEY] = True
        packed = deflate(content)
        for device in link.devices:
            try:
                await asyncio.wait_for(
                    self._channel.send(link.peer.bot_user_id, device, event_type, packed), SEND_TIMEOUT_S
                )
            except Exception as exc:
                log.warning("could not send %s to %s %s: %s", event_type, link.peer.bot_user_id, device, exc)

    async def _hangup(self, link: _Link, reason: VisioReason, message: str | None = None) -> None:
        content = build_conference_hangup(link.call_id, self.party_id, link.group(), reason, message)
        await self.send(link, "m.call.hangup", content, None)

    # ---- state and the room --------------------------------------------------------------------

    async def _set_state(
        self,
        room_id: str,
        server: str,
        state: LinkState,
        detail: str = "",
        remote: tuple[Identity, ...] | None = None,
    ) -> None:
        ps = self._peers.setdefault((room_id, server), _PeerState())
        if remote is not None:
            ps.remote = remote  # kept while connecting; shown (and counted) once linked
        changed = ps.state != state or ps.detail != detail or remote is not None
        if ps.state != state:
            ps.since_ms = self._clock.wall_ms()
        ps.state, ps.detail = state, detail
        self._count_links()
        shown = ps.remote if state == "linked" else ()
        await self._hub.set_remote_participants(room_id, server, shown)
        if changed:
            await self._hub.announce(
                LinkStatusChanged(
                    room_id, self.conference_id(room_id), server, state, ps.since_ms, detail, shown
                )
            )

    def _count_links(self) -> None:
        """``visio_federation_links``: per peer server and state, the calls' links now."""
        if self._metrics is None:
            return
        counts = {(peer.server_name, state): 0 for peer in self._federation.peers for state in LINK_STATES}
        for (_room, server), ps in self._peers.items():
            counts[(server, ps.state)] = counts.get((server, ps.state), 0) + 1
        for (server, state), n in counts.items():
            self._metrics.federation_links.labels(server, state).set(n)

    def _failed(self, room_id: str, server: str, refused: bool = False) -> None:
        if self._metrics is not None:
            self._metrics.federation_link_failures.labels(server, "refused" if refused else "failed").inc()
        ps = self._peers.setdefault((room_id, server), _PeerState())
        ps.link = None
        ps.failures += 1
        delay = REFUSED_RETRY_S if refused else RETRY_DELAYS_S[min(ps.failures, len(RETRY_DELAYS_S)) - 1]
        ps.retry_at = self._clock.now() + delay
        self._wake.set()

    def _forget(self, link: _Link) -> None:
        link.ended = True
        self._by_call.pop(link.call_id, None)
        ps = self._peers.get((link.room_id, link.server))
        if ps is not None and ps.link is link:
            ps.link = None

    # ---- hub events (HubListener) ---------------------------------------------------------------

    async def on_hub_event(self, event: HubEvent) -> None:
        if isinstance(event, (ParticipantJoined, ParticipantRemoved)):
            if event.participant.link_server is None:
                self._roster_dirty.add(event.room_id)
        elif isinstance(event, ParticipantConnectedEvent) and event.participant.link_server is not None:
            link = self._by_call_of_participant(event.participant.participant_id)
            if link is not None:
                ps = self._peers.setdefault((link.room_id, link.server), _PeerState())
                ps.failures = 0
                self._tasks.spawn(
                    self._set_state(link.room_id, link.server, "linked", "", ps.remote), "state-linked"
                )
        elif isinstance(event, ConferenceStarted):
            # A new call here may link with whatever call the peers have.
            for key in [key for key in self._ended_with if key[0] == event.room_id]:
                del self._ended_with[key]
            self._wake.set()
        elif isinstance(event, ConferenceEnded):
            # The hub closes the links themselves (``on_link_closed`` tells the peers).
            for key in [key for key in self._peers if key[0] == event.room_id]:
                ps = self._peers.pop(key)
                if ps.peer_conf:
                    self._ended_with[key] = ps.peer_conf
            self._count_links()

    def _by_call_of_participant(self, participant_id: str) -> _Link | None:
        return next((lk for lk in self._by_call.values() if lk.participant_id == participant_id), None)

    async def on_link_closed(self, link: _Link, reason: str) -> None:
        """The hub removed the link participant (``RemovalReason``)."""
        if link.ended:
            self._forget(link)
            return
        self._forget(link)
        if reason == RemovalReason.REPLACED:
            return
        visio = {
            RemovalReason.CONFERENCE_ENDED: VisioReason.CONFERENCE_ENDED,
            RemovalReason.NOT_A_MEMBER: VisioReason.NOT_A_MEMBER,
        }.get(reason, VisioReason.MEDIA_FAILED)
        if reason != RemovalReason.CONFERENCE_ENDED:
            # Before any await: ``maintain`` must not invite again at once. The far relay closing
            # first is also how a call ended there looks until its hangup arrives over Matrix.
            self._failed(link.room_id, link.server)
        await self._hangup(link, visio)
        if reason == RemovalReason.CONFERENCE_ENDED:
            return
        log.warning("link of %s with %s lost (%s): will retry", link.room_id, link.server, reason)
        await self._set_state(link.room_id, link.server, "unreachable", f"link lost ({reason})")

    # ---- keeping links up ------------------------------------------------------------------------

    async def _maintain_loop(self) -> None:
        while True:
            try:
                await self.maintain()
            except Exception:
                log.exception("keeping federation links up failed")
            try:
                # Not asyncio.wait_for: on Python 3.11 it can swallow the cancellation that stops us
                # when the wake-up comes in the same loop turn.
                async with asyncio.timeout(TICK_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def maintain(self) -> None:
        """Start the links each active call should have; give up on invites left unanswered."""
        now = self._clock.now()
        for link in list(self._by_call.values()):
            if link.offerer and not link.answered and now - link.invited_at > ANSWER_TIMEOUT_S:
                log.warning(
                    "%s did not answer the link invite for %s: retrying later", link.server, link.room_id
                )
                self._forget(link)
                self._failed(link.room_id, link.server)  # before any await, as in on_link_closed
                await self._hangup(link, VisioReason.INVITE_EXPIRED)
                if link.participant_id:
                    await self._hub.leave(link.participant_id, RemovalReason.MEDIA_FAILED)
                await self._set_state(link.room_id, link.server, "unreachable", "no answer from its service")
        rooms = await self._hub.active_rooms()
        for room_id in rooms:
            for peer in self._federation.peers:
                if peer.server_name == self.server_name or not self._policy.link_allowed(peer.server_name):
                    continue
                ps = self._peers.get((room_id, peer.server_name))
                if ps is not None and (ps.link is not None or ps.retry_at > now):
                    continue
                if not await self._access.is_joined(room_id, peer.bot_user_id):
                    continue
                await self._start_link(room_id, peer)

    async def _trusted_devices(self, peer: PeerConfig) -> list[str]:
        try:
            keys = await self._keys.query_keys([peer.bot_user_id])
        except Exception as exc:
            log.warning("keys of %s unavailable: %s", peer.bot_user_id, exc)
            return []
        devices = (keys.get("device_keys") or {}).get(peer.bot_user_id) or {}
        trusted = []
        for device_id, device in devices.items():
            ed25519 = ((device or {}).get("keys") or {}).get(f"ed25519:{device_id}")
            if (
                isinstance(ed25519, str)
                and (await self._trust.verify(peer.bot_user_id, device_id, ed25519)).trusted
            ):
                trusted.append(device_id)
        return sorted(trusted)

    async def _start_link(self, room_id: str, peer: PeerConfig) -> None:
        ps = self._peers.setdefault((room_id, peer.server_name), _PeerState())
        devices = await self._trusted_devices(peer)
        if not devices:
            await self._set_state(
                room_id, peer.server_name, "unreachable", f"no trusted device of {peer.bot_user_id} found"
            )
            self._failed(room_id, peer.server_name)
            return
        link = _Link(self, room_id, peer, "link-" + secrets.token_urlsafe(12), True, tuple(devices))
        ps.link = link
        self._by_call[link.call_id] = link
        if ps.state != "unreachable":
            await self._set_state(room_id, peer.server_name, "connecting")
        try:
            joined = await self._hub.join(
                room_id,
                Identity(peer.bot_user_id, devices[0]),
                link,
                transport="federation",
                mode="sfu",
                session_key="link:" + peer.server_name,
                relay_link=RelayLinkOptions(peer.server_name, allow_onward=self._policy.relay_onwards),
                transport_data={"server": peer.server_name},
            )
        except HubError as exc:
            log.info("cannot link %s with %s: %s", room_id, peer.server_name, exc)
            self._forget(link)
            self._failed(room_id, peer.server_name)
            return
        link.participant_id = joined.participant_id
        link.awaiting_answer = True
        link.invited_at = self._clock.now()
        log.info("inviting %s's relay to link the call in %s", peer.server_name, room_id)
        try:
            content = build_conference_invite(
                link.call_id,
                self.party_id,
                link.group(),
                room_id,
                joined.negotiated.sdp,
                LINK_INVITE_LIFETIME_MS,
            )
            link.invite = (dict(content), tuple(joined.negotiated.streams))
            await self.send(link, "m.call.invite", content, joined.negotiated.streams)
        finally:
            link.opened.set()

    async def _roster_loop(self) -> None:
        while True:
            await asyncio.sleep(ROSTER_DEBOUNCE_S)
            rooms, self._roster_dirty = self._roster_dirty, set()
            for room_id in rooms:
                for (room, _server), ps in list(self._peers.items()):
                    link = ps.link
                    if room != room_id or link is None or link.ended or not link.answered:
                        continue
                    link.seq += 1
                    content = build_link_update(
                        link.call_id, room_id, self.session_id, link.seq, self.link_info(room_id, ())
                    )
                    try:
                        await self.send(link, LINK_UPDATE, content, None)
                    except Exception:
                        log.exception("roster update to %s failed", link.server)

    # ---- receiving -------------------------------------------------------------------------------

    async def _on_secure(self, msg: SecureToDevice) -> None:
        if msg.type not in CALL_EVENT_TYPES and msg.type != LINK_UPDATE:
            return
        peer = self._trust.peer_for(msg.sender)
        if peer is None:
            return  # a participant's signaling: calls.todevice handles it
        if msg.type == "m.call.hangup" and isinstance(msg.content.get("call_id"), str):
            # Noted on arrival: an invite queued before it (sent while we were away, then given up
            # by the peer) is then skipped instead of replacing what we are setting up.
            now = self._clock.now()
            self._hung_up = {c: t for c, t in self._hung_up.items() if now - t < HUNG_UP_MEMORY_S}
            self._hung_up[msg.content["call_id"]] = now
        if not msg.verified:
            msg = await self._channel.refresh_sender(msg)
        self._enqueue(peer.server_name, lambda: self._handle(peer, msg))

    def _enqueue(self, server: str, job: Callable[[], Awaitable[None]]) -> None:
        queue = self._workers.get(server)
        if queue is None:
            queue = asyncio.Queue()
            self._workers[server] = queue
            self._tasks.spawn(self._worker(server, queue), f"peer-{server}")
        queue.put_nowait(job)

    async def _worker(self, server: str, queue: asyncio.Queue[Callable[[], Awaitable[None]]]) -> None:
        while True:
            job = await queue.get()
            try:
                await job()
            except Exception:
                log.exception("error handling link signaling from %s", server)

    async def _handle(self, peer: PeerConfig, msg: SecureToDevice) -> None:
        if msg.sender_device is None:
            log.warning(
                "%s from %s refused: no published device matches its Olm session", msg.type, msg.sender
            )
            return
        decision = await self._trust.verify(msg.sender, msg.sender_device, msg.sender_ed25519)
        if not decision.trusted:
            log.warning(
                "%s from %s %s refused: untrusted device (%s)",
                msg.type,
                msg.sender,
                msg.sender_device,
                decision.reason,
            )
            await self._refuse_untrusted(peer, msg, str(decision.reason))
            return
        content = inflate(msg.content)
        if isinstance(content, SignalingError):
            log.warning("bad %s from %s: %s", msg.type, msg.sender, content)
            return
        if msg.type == LINK_UPDATE:
            await self._on_update(peer, msg.sender_device, content)
            return
        parsed = parse_conference_message(msg.type, content)
        if isinstance(parsed, SignalingError):
            log.warning("bad %s from %s: %s", msg.type, msg.sender, parsed)
            return
        dest = parsed.group.dest_session_id
        if dest and dest != self.session_id:
            log.info("%s from %s for an earlier session of this service: ignored", msg.type, peer.server_name)
            return
        info = link_info_of(content)
        if isinstance(info, SignalingError):
            log.warning("bad %s from %s: %s", msg.type, msg.sender, info)
            return
        if info is not None and info.server_name != peer.server_name:
            log.warning("%s from %s claims server %s: ignored", msg.type, msg.sender, info.server_name)
            return
        m = parsed.message
        if isinstance(m, CallInvite):
            await self._on_invite(peer, msg.sender_device, parsed, info)
            return
        link = self._by_call.get(m.call_id)
        if link is None or link.peer is not peer:
            if (
                isinstance(m, (CallHangup, CallReject))
                and parsed.visio_reason == VisioReason.CONFERENCE_ENDED
            ):
                await self._on_peer_conference_ended(peer, parsed)
                return
            log.info("%s for unknown link call %s from %s: ignored", msg.type, m.call_id, peer.server_name)
            return
        if parsed.group.seq <= link.their_seq:
            log.info("%s seq %d from %s is old: ignored", msg.type, parsed.group.seq, peer.server_name)
            return
        link.their_seq = parsed.group.seq
        if isinstance(m, CallAnswer):
            await self._on_answer(link, msg.sender_device, parsed, info, m.answer_sdp)
        elif isinstance(m, CallNegotiate):
            await self._on_negotiate(link, m, info)
        elif isinstance(m, (CallHangup, CallReject)):
            await self._on_hangup(link, parsed)

    async def _refuse_untrusted(self, peer: PeerConfig, msg: SecureToDevice, reason: str) -> None:
        """An invite from an untrusted device of a peer bot: the room learns why there is no link."""
        if msg.type != "m.call.invite":
            return
        content = inflate(msg.content)
        parsed = None if isinstance(content, SignalingError) else parse_conference_message(msg.type, content)
        if isinstance(parsed, ConferenceMessage) and parsed.room_id and await self._has_call(parsed.room_id):
            detail = f"the device of {peer.bot_user_id} that called is not trusted here ({reason})"
            await self._set_state(parsed.room_id, peer.server_name, "refused", detail)

    async def _refuse(
        self, peer: PeerConfig, device: str, parsed: ConferenceMessage, reason: VisioReason, message: str
    ) -> None:
        group = GroupFields(
            conf_id=self.conference_id(parsed.room_id or ""),
            device_id=self.bot_device_id,
            sender_session_id=self.session_id,
            dest_session_id=parsed.group.sender_session_id,
            seq=0,
        )
        content = build_conference_hangup(parsed.call_id, self.party_id, group, reason, message)
        await self._channel.send(peer.bot_user_id, device, "m.call.hangup", content)

    async def _on_invite(
        self, peer: PeerConfig, device: str, parsed: ConferenceMessage, info: LinkInfo | None
    ) -> None:
        m = parsed.message
        assert isinstance(m, CallInvite) and parsed.room_id is not None
        room_id = parsed.room_id
        if info is None:
            log.warning("invite from peer bot %s without io.visio.link: ignored", peer.bot_user_id)
            return
        names = ", ".join(e.user_id for e in info.roster) or "its participants"
        if not self._policy.link_allowed(peer.server_name):
            detail = (
                f"{peer.server_name} is not in this ministry's policy.link_servers; {names} cannot be reached"
            )
            log.warning("link invite from %s for %s refused: %s", peer.server_name, room_id, detail)
            await self._refuse(peer, device, parsed, VisioReason.LINK_NOT_ALLOWED, detail)
            if await self._has_call(room_id):
                await self._set_state(room_id, peer.server_name, "refused", detail)
            return
        if info.guests and not self._policy.remote_guests:
            detail = (
                f"the call on {peer.server_name}'s side has guests and this ministry's policy does not "
                "allow guests of other ministries"
            )
            await self._refuse(peer, device, parsed, VisioReason.REMOTE_GUESTS, detail)
            await self._set_state(room_id, peer.server_name, "refused", detail)
            self._failed(room_id, peer.server_name, refused=True)
            return
        ps = self._peers.setdefault((room_id, peer.server_name), _PeerState())
        current = ps.link
        if current is not None and current.call_id == m.call_id:
            return  # duplicate
        if m.call_id in self._hung_up:
            log.info("link invite %s from %s already hung up by it: skipped", m.call_id, peer.server_name)
            return
        conf = parsed.group.conf_id
        if (
            conf
            and self._ended_with.get((room_id, peer.server_name)) == conf
            and not await self._has_call(room_id)
        ):
            # Its call is the one ours ended with; our hangup saying so has not reached it yet.
            log.info("link invite from %s for %s: the call ended here, telling it", peer.server_name, room_id)
            await self._refuse(
                peer,
                device,
                parsed,
                VisioReason.CONFERENCE_ENDED,
                f"The call was ended on {self.server_name}.",
            )
            return
        if (
            current is not None
            and current.offerer
            and not current.answered
            and self.server_name < peer.server_name
        ):
            # Crossing invites: the lower server's wins, on both sides. The peer may have lost ours
            # (it was stopping when it came), so it gets ours again; a duplicate is ignored there.
            log.info("link invites crossed with %s in %s: ours wins, sent again", peer.server_name, room_id)
            if current.invite is not None and current.opened.is_set():
                content, streams = current.invite
                await self.send(current, "m.call.invite", dict(content), streams)
            return
        if (
            current is not None
            and ps.state == "linked"
            and current.their_session == parsed.group.sender_session_id
        ):
            # The same run of the peer invites while our link with it works: an invite it sent while
            # we were away and has given up since (its hangup follows), or one that crossed ours. A
            # peer whose side of the link failed hangs it up first, then invites again.
            log.info("link invite %s from %s while linked with it: ignored", m.call_id, peer.server_name)
            return
        if current is not None:
            self._forget(current)
            if current.participant_id:
                await self._hub.leave(current.participant_id, RemovalReason.REPLACED)
        link = _Link(
            self, room_id, peer, m.call_id, False, (device,), their_session=parsed.group.sender_session_id
        )
        link.their_seq = parsed.group.seq
        ps.link = link
        self._by_call[link.call_id] = link
        try:
            joined = await self._hub.join(
                room_id,
                Identity(peer.bot_user_id, device),
                link,
                transport="federation",
                offer_sdp=m.offer_sdp,
                mode="sfu_answer_only",
                start_if_none=True,
                session_key="link:" + peer.server_name,
                relay_link=RelayLinkOptions(
                    peer.server_name,
                    allow_onward=self._policy.relay_onwards,
                    onward_ok=info.onward,
                    stream_owners=info.owners,
                ),
                transport_data={"server": peer.server_name},
            )
        except HubError as exc:
            self._forget(link)
            log.info("link invite from %s for %s refused: %s", peer.server_name, room_id, exc)
            reason = _REASON_FOR_HUB_CODE.get(exc.code, VisioReason.BAD_REQUEST)
            await self._refuse(peer, device, parsed, reason, str(exc))
            return
        link.participant_id = joined.participant_id
        link.answered = True
        ps.peer_conf = conf
        log.info("linked the call in %s with %s's relay (answering)", room_id, peer.server_name)
        try:
            content = build_conference_answer(
                link.call_id, self.party_id, link.group(), joined.negotiated.sdp
            )
            await self.send(link, "m.call.answer", content, joined.negotiated.streams)
        finally:
            link.opened.set()
        await self._set_state(room_id, peer.server_name, "connecting", remote=_identities(info))
        self._roster_dirty.add(room_id)

    async def _has_call(self, room_id: str) -> bool:
        return room_id in await self._hub.active_rooms()

    async def _on_answer(
        self, link: _Link, device: str, parsed: ConferenceMessage, info: LinkInfo | None, sdp: str
    ) -> None:
        if not link.awaiting_answer:
            return
        link.awaiting_answer = False
        link.answered = True
        link.devices = (device,)
        link.their_session = parsed.group.sender_session_id
        ps = self._peers.get((link.room_id, link.server))
        if ps is not None and parsed.group.conf_id:
            ps.peer_conf = parsed.group.conf_id
        try:
            await self._hub.accept_answer(
                link.participant_id,
                sdp,
                info.owners if info else None,
                onward_ok=info.onward if info else None,  # the far side's policy.relay_onwards
            )
        except HubError as exc:
            log.warning("link answer from %s refused: %s", link.server, exc)
            self._forget(link)
            await self._hub.leave(link.participant_id, RemovalReason.MEDIA_FAILED)
            await self._hangup(link, VisioReason.BAD_REQUEST, str(exc))
            self._failed(link.room_id, link.server)
            return
        if info is not None:
            await self._set_state(link.room_id, link.server, "connecting", remote=_identities(info))
        self._roster_dirty.add(link.room_id)

    async def _on_negotiate(self, link: _Link, m: CallNegotiate, info: LinkInfo | None) -> None:
        owners = info.owners if info else None
        if m.description_type == "answer":
            if link.awaiting_answer:
                link.awaiting_answer = False
                try:
                    await self._hub.accept_answer(link.participant_id, m.sdp, owners)
                except HubError as exc:
                    log.warning("link answer from %s refused: %s", link.server, exc)
            return
        try:
            negotiated = await self._hub.apply_offer(link.participant_id, m.sdp, None, owners)
        except HubError as exc:
            log.warning("link offer from %s refused: %s", link.server, exc)
            return
        content = build_conference_negotiate(
            link.call_id, self.party_id, link.group(), "answer", negotiated.sdp
        )
        await self.send(link, "m.call.negotiate", content, negotiated.streams)

    async def _on_update(self, peer: PeerConfig, device: str, content: dict[str, Any]) -> None:
        update = parse_link_update(content)
        if isinstance(update, SignalingError):
            log.warning("bad %s from %s: %s", LINK_UPDATE, peer.bot_user_id, update)
            return
        link = self._by_call.get(update.call_id)
        if link is None or link.peer is not peer or update.info.server_name != peer.server_name:
            return
        if update.seq <= link.their_seq:
            return
        link.their_seq = update.seq
        if update.info.guests and not self._policy.remote_guests:
            detail = (
                f"the call on {peer.server_name}'s side now has guests and this ministry's policy does not "
                "allow guests of other ministries"
            )
            self._forget(link)
            await self._hub.leave(link.participant_id, RemovalReason.LEFT)
            await self._hangup(link, VisioReason.REMOTE_GUESTS, detail)
            await self._set_state(link.room_id, peer.server_name, "refused", detail)
            self._failed(link.room_id, peer.server_name, refused=True)
            return
        ps = self._peers.get((link.room_id, peer.server_name))
        state = ps.state if ps is not None else "connecting"
        await self._set_state(
            link.room_id, peer.server_name, state, ps.detail if ps else "", _identities(update.info)
        )
        if update.reoffer is not None and link.offerer:
            try:
                await self._hub.request_offer(link.participant_id, *update.reoffer)
            except HubError as exc:
                log.warning("new offer for %s's link not possible: %s", peer.server_name, exc)

    async def _on_hangup(self, link: _Link, parsed: ConferenceMessage) -> None:
        reason = parsed.visio_reason or ""
        message = parsed.visio_message or reason or "hung up"
        self._forget(link)
        log.info("%s hung up the link of %s: %s (%s)", link.server, link.room_id, reason, message)
        if link.participant_id:
            await self._hub.leave(link.participant_id, RemovalReason.LEFT)
        if reason == VisioReason.CONFERENCE_ENDED:
            await self._end_here(link.room_id, link.peer)
            return
        refused = reason in (
            VisioReason.LINK_NOT_ALLOWED,
            VisioReason.UNTRUSTED_PEER,
            VisioReason.REMOTE_GUESTS,
        )
        await self._set_state(link.room_id, link.server, "refused" if refused else "unreachable", message)
        self._failed(link.room_id, link.server, refused=refused)

    async def _on_peer_conference_ended(self, peer: PeerConfig, parsed: ConferenceMessage) -> None:
        """A peer's call ended, for a link we no longer have: its relay closing reached us before this
        hangup did. If ours was linked with that call, ours ends too (``!visio stop`` on either side
        ends the call on both); a hangup from any other call of the peer changes nothing."""
        conf = parsed.group.conf_id
        rooms = [
            room
            for (room, server), ps in self._peers.items()
            if server == peer.server_name and conf and ps.peer_conf == conf
        ]
        if not rooms:
            log.info("%s ended call %s, not linked with ours: ignored", peer.server_name, conf or "?")
            return
        for room_id in rooms:
            await self._end_here(room_id, peer)

    async def _end_here(self, room_id: str, peer: PeerConfig) -> None:
        log.info("the call in %s ended on %s: ending it here too", room_id, peer.server_name)
        await self._set_state(room_id, peer.server_name, "closed", "the call ended there")
        await self._hub.end_conference(room_id, peer.bot_user_id)


def _identities(info: LinkInfo) -> tuple[Identity, ...]:
    return tuple(Identity(e.user_id, e.device_id) for e in info.roster)
