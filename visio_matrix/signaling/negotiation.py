"""Who may offer when, during renegotiation of an established call (a subset of WebRTC "perfect
negotiation"), shared by the conference and 1:1 state machines.

The bot asks the relay for an offer (``MakeOffer``) only when no exchange is in flight; a wish to offer
during an exchange is remembered and served when it completes. When offers cross, the impolite side's
offer wins: the polite side rolls its own back and answers. In conferences the bot is impolite (its
offer always wins); in 1:1 calls the callee is polite (spec "Politeness").
"""

from __future__ import annotations

import enum


class RemoteOffer(enum.Enum):
    APPLY = "apply"
    APPLY_WITH_ROLLBACK = "apply_with_rollback"  # we are polite and had an offer of our own in flight
    IGNORE_GLARE = "ignore_glare"  # we are impolite and our offer is in flight: ours wins
    IGNORE_BUSY = "ignore_busy"  # the remote offered again before we answered its previous offer


class Negotiation:
    def __init__(self, *, polite: bool) -> None:
        self.polite = polite
        self.local_offer_pending = False  # asked for (MakeOffer) or sent, not answered yet
        self.local_offer_deadline_ms: int | None = None  # set once sent
        self.remote_offer_in_progress = False  # remote offer applied, our answer not sent yet
        self.offer_wanted = False

    def want_offer(self) -> bool:
        """Streams changed. True: ask the relay for an offer now."""
        self.offer_wanted = True
        return self.next_offer()

    def next_offer(self) -> bool:
        """True (and the offer is marked pending) when an offer is wanted and nothing is in flight."""
        if not self.offer_wanted or self.local_offer_pending or self.remote_offer_in_progress:
            return False
        self.offer_wanted = False
        self.local_offer_pending = True
        return True

    def offer_sent(self, now_ms: int, lifetime_ms: int) -> bool:
        """Our offer goes out; False if none was asked for or one is already out."""
        if not self.local_offer_pending or self.local_offer_deadline_ms is not None:
            return False
        self.local_offer_deadline_ms = now_ms + lifetime_ms
        return True

    def cancel_offer(self) -> None:
        """The relay could not make the offer asked for."""
        if self.local_offer_pending and self.local_offer_deadline_ms is None:
            self.local_offer_pending = False

    def remote_answer(self) -> bool:
        """The remote answered; True if it answers an offer of ours that is out."""
        if self.local_offer_deadline_ms is None:
            return False
        self.local_offer_pending = False
        self.local_offer_deadline_ms = None
        return True

    def remote_offer(self) -> RemoteOffer:
        if self.remote_offer_in_progress:
            return RemoteOffer.IGNORE_BUSY
        if self.local_offer_pending:
            if not self.polite:
                return RemoteOffer.IGNORE_GLARE
            # Ours is dropped; the wish to offer stays so we offer again once this exchange completes.
            self.local_offer_pending = False
            self.local_offer_deadline_ms = None
            self.offer_wanted = True
            self.remote_offer_in_progress = True
            return RemoteOffer.APPLY_WITH_ROLLBACK
        self.remote_offer_in_progress = True
        return RemoteOffer.APPLY

    def local_answer_sent(self) -> bool:
        """Our answer to the remote's offer goes out; False if there was no remote offer."""
        if not self.remote_offer_in_progress:
            return False
        self.remote_offer_in_progress = False
        return True

    def expired(self, now_ms: int) -> bool:
        return self.local_offer_deadline_ms is not None and now_ms >= self.local_offer_deadline_ms
