"""Peer bot trust (crypto.peer_trust) with real Ed25519 keys and signatures, and the bot identity."""

from __future__ import annotations

import copy
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from visio_matrix.clock import FakeClock
from visio_matrix.config.model import FederationConfig, PeerConfig
from visio_matrix.crypto.cross_signing import CrossSigningKeys, public_key_b64, sign_json
from visio_matrix.crypto.peer_trust import (
    CROSS_SIGNED,
    PINNED,
    BotIdentity,
    PeerTrust,
    identity_from_query,
)

BOT, SERVER, DEVICE = "@visio:b.gouv.fr", "b.gouv.fr", "BOTDEV"


class PeerBot:
    """A peer bot's keys and the /keys/query answer its homeserver would give."""

    def __init__(self) -> None:
        self.cs = CrossSigningKeys.generate()
        self.device_key = Ed25519PrivateKey.generate()
        self.ed25519 = public_key_b64(self.device_key)

    @property
    def master(self) -> str:
        return public_key_b64(self.cs.master)

    def device_object(self, *, signer: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        device = {
            "user_id": BOT,
            "device_id": DEVICE,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"ed25519:{DEVICE}": self.ed25519, f"curve25519:{DEVICE}": "c" * 43},
        }
        device = sign_json(device, BOT, self.device_key)
        device = sign_json(device, BOT, signer or self.cs.self_signing)
        device["unsigned"] = {"device_display_name": "visio-matrix bot"}
        return device

    def query(self, *, ssk_signer: Ed25519PrivateKey | None = None, **device_kw: Any) -> dict[str, Any]:
        body = self.cs.upload_body(BOT)
        if ssk_signer is not None:
            ssk = {k: v for k, v in body["self_signing_key"].items() if k != "signatures"}
            body["self_signing_key"] = sign_json(ssk, BOT, ssk_signer)
        return {
            "failures": {},
            "device_keys": {BOT: {DEVICE: self.device_object(**device_kw)}},
            "master_keys": {BOT: body["master_key"]},
            "self_signing_keys": {BOT: body["self_signing_key"]},
        }


class FakeKeys:
    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []

    async def query_keys(self, user_ids: list[str]) -> dict[str, Any]:
        self.calls.append(list(user_ids))
        if isinstance(self.answer, Exception):
            raise self.answer
        return copy.deepcopy(self.answer)


def trust(
    answer: dict[str, Any] | Exception, *, master: str | None = None, pinned: tuple[str, ...] = ()
) -> tuple[PeerTrust, FakeKeys, FakeClock]:
    peer = PeerConfig(server_name=SERVER, bot_user_id=BOT, master_key=master, device_keys=pinned)
    keys, clock = FakeKeys(answer), FakeClock()
    return PeerTrust(FederationConfig(peers=(peer,)), keys, clock, cache_ttl=60.0), keys, clock


async def test_pinned_device_key_is_trusted_without_a_query() -> None:
    bot = PeerBot()
    peer_trust, keys, _ = trust(RuntimeError("not asked"), pinned=(bot.ed25519,))
    decision = await peer_trust.verify(BOT, DEVICE, bot.ed25519)
    assert decision.trusted and decision.reason == PINNED
    assert keys.calls == []
    other = public_key_b64(Ed25519PrivateKey.generate())
    assert not (await peer_trust.verify(BOT, DEVICE, other)).trusted


async def test_device_cross_signed_under_the_pinned_master_is_trusted() -> None:
    bot = PeerBot()
    peer_trust, keys, _ = trust(bot.query(), master=bot.master)
    decision = await peer_trust.verify(BOT, DEVICE, bot.ed25519)
    assert decision.trusted and decision.reason == CROSS_SIGNED
    assert keys.calls == [[BOT]]


async def test_another_master_key_is_not_trusted() -> None:
    bot = PeerBot()
    pinned = public_key_b64(Ed25519PrivateKey.generate())
    decision = await trust(bot.query(), master=pinned)[0].verify(BOT, DEVICE, bot.ed25519)
    assert not decision.trusted
    assert "is not the pinned master_key" in decision.reason


async def test_self_signing_key_not_signed_by_the_master_is_not_trusted() -> None:
    bot = PeerBot()
    answer = bot.query(ssk_signer=Ed25519PrivateKey.generate())
    decision = await trust(answer, master=bot.master)[0].verify(BOT, DEVICE, bot.ed25519)
    assert not decision.trusted
    assert decision.reason == f"{BOT}'s self-signing key is not signed by its master key"


async def test_device_not_signed_by_the_self_signing_key_is_not_trusted() -> None:
    bot = PeerBot()
    # Signed by the user-signing key instead: a real key of the bot, but not the one for devices.
    answer = bot.query(signer=bot.cs.user_signing)
    decision = await trust(answer, master=bot.master)[0].verify(BOT, DEVICE, bot.ed25519)
    assert not decision.trusted
    assert decision.reason == f"device {DEVICE} of {BOT} is not signed by its self-signing key"


async def test_a_tampered_device_object_is_not_trusted() -> None:
    bot = PeerBot()
    answer = bot.query()
    answer["device_keys"][BOT][DEVICE]["algorithms"] = ["m.olm.v1.curve25519-aes-sha2"]
    decision = await trust(answer, master=bot.master)[0].verify(BOT, DEVICE, bot.ed25519)
    assert not decision.trusted and "not signed by its self-signing key" in decision.reason


async def test_a_key_other_than_the_published_one_is_not_trusted() -> None:
    bot = PeerBot()
    other = public_key_b64(Ed25519PrivateKey.generate())
    decision = await trust(bot.query(), master=bot.master)[0].verify(BOT, DEVICE, other)
    assert not decision.trusted and "publishes another ed25519 key" in decision.reason


async def test_unpublished_device_and_missing_cross_signing_are_not_trusted() -> None:
    bot = PeerBot()
    peer_trust = trust(bot.query(), master=bot.master)[0]
    assert "is not published" in (await peer_trust.verify(BOT, "OTHERDEV", bot.ed25519)).reason
    no_master = {k: v for k, v in bot.query().items() if k != "master_keys"}
    decision = await trust(no_master, master=bot.master)[0].verify(BOT, DEVICE, bot.ed25519)
    assert not decision.trusted and decision.reason == f"{BOT} publishes no cross-signing master key"


async def test_malformed_answers_are_not_trusted() -> None:
    bot = PeerBot()
    for answer in (
        {"master_keys": [], "device_keys": "x"},
        {
            **bot.query(),
            "self_signing_keys": {BOT: {**bot.query()["self_signing_keys"][BOT], "signatures": 3}},
        },
    ):
        assert not (await trust(answer, master=bot.master)[0].verify(BOT, DEVICE, bot.ed25519)).trusted


async def test_unknown_user_is_not_trusted_and_not_queried() -> None:
    bot = PeerBot()
    peer_trust, keys, _ = trust(bot.query(), master=bot.master, pinned=(bot.ed25519,))
    decision = await peer_trust.verify("@mallory:b.gouv.fr", DEVICE, bot.ed25519)
    assert not decision.trusted and "not a peer bot" in decision.reason
    assert keys.calls == []
    assert peer_trust.peer_for(BOT) is not None and peer_trust.peer_for("@mallory:b.gouv.fr") is None


async def test_no_master_key_pinned_and_device_not_pinned() -> None:
    bot = PeerBot()
    other = public_key_b64(Ed25519PrivateKey.generate())
    peer_trust, keys, _ = trust(bot.query(), pinned=(other,))
    decision = await peer_trust.verify(BOT, DEVICE, bot.ed25519)
    assert not decision.trusted and "no master_key is pinned" in decision.reason
    assert keys.calls == []


async def test_failed_query_is_not_trusted_and_not_cached() -> None:
    bot = PeerBot()
    peer_trust, keys, _ = trust(RuntimeError("502 M_UNKNOWN: federation down"), master=bot.master)
    decision = await peer_trust.verify(BOT, DEVICE, bot.ed25519)
    assert not decision.trusted
    assert "could not be queried" in decision.reason and "federation down" in decision.reason
    keys.answer = bot.query()
    assert (await peer_trust.verify(BOT, DEVICE, bot.ed25519)).trusted
    assert len(keys.calls) == 2


async def test_decisions_are_cached_until_the_ttl_passes() -> None:
    bot = PeerBot()
    peer_trust, keys, clock = trust(bot.query(), master=bot.master)
    assert (await peer_trust.verify(BOT, DEVICE, bot.ed25519)).trusted
    # The bot's cross-signing is reset on its homeserver: the cached decision holds until expiry.
    keys.answer = PeerBot().query()
    clock.advance(59.0)
    assert (await peer_trust.verify(BOT, DEVICE, bot.ed25519)).trusted
    assert len(keys.calls) == 1
    clock.advance(2.0)
    decision = await peer_trust.verify(BOT, DEVICE, bot.ed25519)
    assert not decision.trusted and len(keys.calls) == 2
    # The negative result is cached too.
    keys.answer = bot.query()
    clock.advance(30.0)
    assert not (await peer_trust.verify(BOT, DEVICE, bot.ed25519)).trusted
    assert len(keys.calls) == 2
    clock.advance(31.0)
    assert (await peer_trust.verify(BOT, DEVICE, bot.ed25519)).trusted
    assert len(keys.calls) == 3


def test_identity_from_query_and_peer_entry() -> None:
    bot = PeerBot()
    answer = bot.query()
    stray_key = Ed25519PrivateKey.generate()
    stray = sign_json(
        {"user_id": BOT, "device_id": "OLD", "keys": {"ed25519:OLD": public_key_b64(stray_key)}},
        BOT,
        stray_key,
    )
    answer["device_keys"][BOT]["OLD"] = stray
    identity = identity_from_query(answer, BOT, SERVER)
    assert identity.master_key == bot.master
    assert identity.devices == {DEVICE: bot.ed25519, "OLD": public_key_b64(stray_key)}
    assert identity.cross_signed == {DEVICE}
    # The master key covers the cross-signed device; the other one must be pinned by its key.
    assert identity.peer_entry() == {
        "server_name": SERVER,
        "bot_user_id": BOT,
        "master_key": bot.master,
        "device_keys": [public_key_b64(stray_key)],
    }
    without = identity_from_query({"device_keys": {BOT: {DEVICE: bot.device_object()}}}, BOT, SERVER)
    assert without.master_key is None and without.cross_signed == frozenset()
    assert without.peer_entry() == {"server_name": SERVER, "bot_user_id": BOT, "device_keys": [bot.ed25519]}
    assert BotIdentity(BOT, SERVER, bot.master, {DEVICE: bot.ed25519}, frozenset({DEVICE})).peer_entry() == {
        "server_name": SERVER,
        "bot_user_id": BOT,
        "master_key": bot.master,
    }
