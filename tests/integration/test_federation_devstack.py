"""The two-ministry dev stack (issue 5) on real Synapses: federation, bots in the room, pinned keys,
healthy services, and the fixture's fault switches."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import aiohttp
import pytest
from federation_fixtures import Federation

from visio_matrix.clock import SystemClock
from visio_matrix.crypto.peer_trust import PeerTrust, fetch_bot_identity
from visio_matrix.devstack.federation import joined_members
from visio_matrix.devstack.user import MessageView

pytestmark = pytest.mark.synapse


def body_is(text: str) -> Callable[[MessageView], bool]:
    return lambda view: view.body == text


async def ready_status(url: str) -> int | None:
    """HTTP status of the service's readiness endpoint, None when nothing listens."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"{url}/health/ready") as response:
                return response.status
    except aiohttp.ClientConnectionError:
        return None


async def test_two_ministries_share_an_encrypted_room(ministries: Federation) -> None:
    a, b = ministries["A"], ministries["B"]
    assert a.server_name != b.server_name
    alice = await ministries.new_user("A", "alice")
    bob = await ministries.new_user("B", "bob")
    assert alice.user_id.endswith(f":{a.server_name}") and bob.user_id.endswith(f":{b.server_name}")

    room_id = await ministries.shared_room(alice, [bob])

    # Both homeservers show both bots (and both users) joined.
    for user in (alice, bob):
        joined = await joined_members(user, room_id)
        assert joined == {alice.user_id, bob.user_id, a.bot_user_id, b.bot_user_id}, user.user_id
    text = f"from ministry B {uuid.uuid4().hex}"
    event_id = await bob.send_text(room_id, text)
    seen = await alice.wait_for_message(room_id, body_is(text), timeout=60)
    assert seen.event_id == event_id and seen.sender == bob.user_id
    assert seen.encrypted and seen.decrypted
    reply = f"from ministry A {uuid.uuid4().hex}"
    await alice.send_text(room_id, reply)
    back = await bob.wait_for_message(room_id, body_is(reply), timeout=60)
    assert back.sender == alice.user_id and back.decrypted


async def test_each_ministry_pins_the_other_bot(ministries: Federation) -> None:
    for own, other in (("A", "B"), ("B", "A")):
        config = ministries[own].config()
        far = ministries[other]
        identity = await fetch_bot_identity(far.config())
        assert identity.user_id == far.bot_user_id and identity.master_key and identity.devices

        (peer,) = config.federation.peers
        assert (peer.server_name, peer.bot_user_id) == (far.server_name, far.bot_user_id)
        assert peer.master_key == identity.master_key
        assert config.federation.peer_for_user(far.bot_user_id) == peer
        assert config.policy.link_servers == (far.server_name,)
        assert config.policy.link_allowed(far.server_name)
        assert not config.policy.link_allowed("localhost:1")

        # The running service of `own` trusts the far bot's device through the pinned master key.
        trust = PeerTrust(config.federation, ministries.service(own).device, SystemClock())
        for device_id, ed25519 in identity.devices.items():
            decision = await trust.verify(far.bot_user_id, device_id, ed25519)
            assert decision.trusted, decision.reason
        assert not (await trust.verify(far.bot_user_id, "NOTADEVICE", "A" * 43)).trusted


async def test_both_services_are_up(ministries: Federation) -> None:
    for name in ("A", "B"):
        ministry = ministries[name]
        ping = ministries.service(name).ping_result
        assert ping is not None and ping.ok, ping
        assert await ready_status(ministry.service_url) == 200
        assert ministries.service(name).bot_user_id == ministry.bot_user_id


async def test_fault_switches_stop_and_restart_b(ministries: Federation) -> None:
    b = ministries["B"]
    await ministries.stop_service("B")
    assert await ready_status(b.service_url) is None
    await ministries.start_service("B")
    assert await ready_status(b.service_url) == 200

    await ministries.stop_homeserver("B")
    assert not b.hs.running
    assert await ready_status(b.service_url) == 503  # the service is up, its homeserver is not
    await ministries.start_homeserver("B")
    assert await ready_status(b.service_url) == 200

    # Federation works again after B's homeserver came back.
    alice = await ministries.new_user("A", "alice")
    bob = await ministries.new_user("B", "bob")
    room_id = await ministries.shared_room(alice, [bob])
    text = f"after the restart {uuid.uuid4().hex}"
    await alice.send_text(room_id, text)
    assert (await bob.wait_for_message(room_id, body_is(text), timeout=60)).decrypted


async def test_third_ministry_linked_by_b_only(three_ministries: Federation) -> None:
    a, b, c = (three_ministries[n] for n in ("A", "B", "C"))
    policy_a, policy_b, policy_c = (m.config().policy for m in (a, b, c))
    assert policy_a.link_servers == (b.server_name,)
    assert not policy_a.link_allowed(c.server_name)
    assert set(policy_b.link_servers) == {a.server_name, c.server_name}
    assert set(policy_c.link_servers) == {a.server_name, b.server_name}
    # Every ministry still pins both other bots: who links with whom is policy, not trust.
    for m in (a, b, c):
        assert {p.bot_user_id for p in m.config().federation.peers} == set(three_ministries.bots) - {
            m.bot_user_id
        }
    for name in ("A", "B", "C"):
        assert await ready_status(three_ministries[name].service_url) == 200
