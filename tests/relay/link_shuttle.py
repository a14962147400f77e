"""Signaling of one relay-to-relay link between two in-process relays (what the bots do over Matrix).

Relay A offers (its link participant has mode "sfu"), relay B answers and never offers
("sfu_answer_only"), as docs/federation.md describes:

::

    A add_participant(link) -> offer --> B add_participant(offer, answer-only) -> answer --> A accept_answer
    A NegotiationNeeded(offer)          --> B apply_offer -> answer                     --> A accept_answer
    B NegotiationNeeded(offer_sdp="")   --> A request_offer(sections_needed(streams))   --> (A offers, as above)

Each side is told who owns the other side's streams (``links.owners_of``). Used by
tests/relay/test_relay_links.py and scripts/bench/federation_bench.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from visio_matrix.relay import Conference, NegotiationNeeded, RelayEvent
from visio_matrix.relay.links import owners_of, sections_needed


class LinkShuttle:
    def __init__(
        self,
        a: Conference,
        b: Conference,
        link_id: str = "link",
        a_metadata: Mapping[str, str] | None = None,
        b_metadata: Mapping[str, str] | None = None,
        b_onward: bool | None = None,
    ) -> None:
        self.a, self.b, self.link_id = a, b, link_id
        # B's policy.relay_onwards as its answer tells A (as the bots do); None: A's link keeps the
        # relay's default (onward_ok=True) and is not told.
        self.b_onward = b_onward
        self.a_metadata = dict(a_metadata or {"user_id": "@visio:a.example", "device_id": "BOTA"})
        self.b_metadata = dict(b_metadata or {"user_id": "@visio:b.example", "device_id": "BOTB"})
        self.offers_to_b = 0  # offers of A carried to B (the first one included)
        self.reoffer_requests = 0  # B's NegotiationNeeded turned into A.request_offer
        self.requested: list[tuple[int, int]] = []  # (audio, video) asked for each time

    async def connect(self) -> None:
        """A invites, B answers."""
        offer = await self.a.add_participant(
            self.link_id, link=True, metadata=self.b_metadata, onward_ok=self.b_onward is None
        )
        self.offers_to_b += 1
        answer = await self.b.add_participant(
            self.link_id,
            offer_sdp=offer.sdp,
            mode="sfu_answer_only",
            link=True,
            metadata=self.a_metadata,
            stream_owners=owners_of(offer.streams),
        )
        await self.a.accept_answer(
            self.link_id, answer.sdp, stream_owners=owners_of(answer.streams), onward_ok=self.b_onward
        )

    async def on_a_event(self, event: RelayEvent) -> bool:
        """Handles relay A's event if it concerns the link (True), else leaves it (False)."""
        if not (
            isinstance(event, NegotiationNeeded)
            and event.conference_id == self.a.conference_id
            and event.participant_id == self.link_id
        ):
            return False
        self.offers_to_b += 1
        answer = await self.b.apply_offer(
            self.link_id, event.offer_sdp, stream_owners=owners_of(event.streams)
        )
        await self.a.accept_answer(self.link_id, answer.sdp, stream_owners=owners_of(answer.streams))
        return True

    async def on_b_event(self, event: RelayEvent) -> bool:
        """Handles relay B's event if it concerns the link (True), else leaves it (False)."""
        if not (
            isinstance(event, NegotiationNeeded)
            and event.conference_id == self.b.conference_id
            and event.participant_id == self.link_id
        ):
            return False
        add_audio, add_video = sections_needed(event.streams)
        self.reoffer_requests += 1
        self.requested.append((add_audio, add_video))
        await self.a.request_offer(self.link_id, add_audio=add_audio, add_video=add_video)
        return True
