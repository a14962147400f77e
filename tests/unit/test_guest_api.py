"""Guests by link: ``!visio link`` / ``admit`` / ``deny`` in the room bot, and the guest HTTP API."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from test_room_bot import ROOM, FakeIO, hub_for, msg

from visio_matrix.calls.room_bot import RoomBot
from visio_matrix.clock import FakeClock
from visio_matrix.config.model import FocusConfig, GuestsConfig, PolicyConfig
from visio_matrix.focus.identity import LEGACY_SLOT_ID, livekit_room_name
from visio_matrix.focus.jwt import verify_token
from visio_matrix.metrics import Metrics
from visio_matrix.storage import Store, open_store
from visio_matrix.web.guest_api import GuestService, guest_routes, public_guest_id
from visio_matrix.web.guest_links import generate_key_text, load_private_key, new_link, sign_link

SECRET = "s" * 40
FOCUS = FocusConfig(
    enabled=True,
    public_url="https://visio.example.org",
    livekit_url="wss://visio.example.org",
    api_key="visio",
    api_secret=SECRET,
    token_lifetime=3600,
    verify_federation_tls=True,
    homeserver_urls={},
)
KEY = generate_key_text()
GUESTS = GuestsConfig(enabled=True, signing_key=KEY, link_lifetime=3600.0, max_wait=600.0)
LINK_RE = re.compile(r"https://visio\.example\.org/guest/([A-Za-z0-9_.-]+)")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield s
    await s.close()


class Posted:
    def __init__(self) -> None:
        self.notices: list[tuple[str, str]] = []

    async def __call__(self, room_id: str, text: str) -> None:
        self.notices.append((room_id, text))


def setup_bot(
    store: Store, clock: FakeClock, admit_level: int = 0
) -> tuple[RoomBot, FakeIO, GuestService, Posted]:
    io = FakeIO()
    policy = PolicyConfig(allowed_servers=("hs",), admit_power_level=admit_level)
    posted = Posted()
    service = GuestService(GUESTS, FOCUS, clock, notify=posted)
    bot = RoomBot(
        io, store, policy, clock, Metrics(), conferences=hub_for(store, policy, clock), guests=service
    )
    return bot, io, service, posted


async def client_for(aiohttp_client: Any, service: GuestService) -> TestClient[Any, Any]:
    app = web.Application()
    app.add_routes(guest_routes(service))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


async def link_token(bot: RoomBot, io: FakeIO) -> str:
    await bot.on_room_event(msg("@user:hs", "!visio link"))
    match = LINK_RE.search(io.bodies()[-1])
    assert match is not None, io.bodies()[-1]
    return match.group(1)


async def test_link_admit_flow(store: Store, aiohttp_client: Any) -> None:
    clock = FakeClock()
    bot, io, service, posted = setup_bot(store, clock)
    token = await link_token(bot, io)
    assert "valid 1h00m00s" in io.bodies()[-1]
    client = await client_for(aiohttp_client, service)

    page = await client.get(f"/guest/{token}")
    assert page.status == 200
    assert "Ask to join" in await page.text()

    r = await client.post("/guest/api/arrive", json={"token": token, "name": "Ann <b>"})
    assert r.status == 200
    body = await r.json()
    assert body["state"] == "waiting" and body["name"] == "Ann <b>"
    guest_id = body["guest_id"]
    assert posted.notices == [(ROOM, "Ann <b> is waiting (type !visio admit Ann <b> or !visio deny Ann <b>)")]

    r = await client.get(f"/guest/api/status/{guest_id}")
    assert (await r.json())["state"] == "waiting" and "jwt" not in await r.json()

    await bot.on_room_event(msg("@user:hs", "!visio admit ann <b>"))  # case-insensitive
    assert io.bodies()[-1] == "Ann <b> was let in by @user:hs."
    await bot.on_room_event(msg("@user:hs", "!visio admit Ann <b>"))
    assert io.bodies()[-1] == "Ann <b> was already let in."

    r = await client.get(f"/guest/api/status/{guest_id}")
    status = await r.json()
    assert status["state"] == "admitted" and status["url"] == FOCUS.livekit_url
    assert status["call_url"].startswith("https://visio.example.org/call/?url=wss%3A%2F%2F")
    claims = verify_token(status["jwt"], FOCUS.signing_keys(), clock.wall_ms() / 1000)
    public = public_guest_id(guest_id)
    assert claims.identity == f"guest:{public}" and guest_id not in status["jwt"]
    assert claims.name == "Ann <b>"
    assert claims.visio.guest is True and claims.visio.can_open is False
    assert claims.visio.room_id == ROOM and claims.visio.user_id == f"guest:{public}"
    assert claims.grants.room == livekit_room_name(ROOM, LEGACY_SLOT_ID)


async def test_deny_flow(store: Store, aiohttp_client: Any) -> None:
    clock = FakeClock()
    bot, io, service, _ = setup_bot(store, clock)
    token = await link_token(bot, io)
    client = await client_for(aiohttp_client, service)
    guest_id = (await (await client.post("/guest/api/arrive", json={"token": token, "name": "Bob"})).json())[
        "guest_id"
    ]
    await bot.on_room_event(msg("@user:hs", "!visio deny Bob"))
    assert io.bodies()[-1] == "Bob was turned away by @user:hs."
    await bot.on_room_event(msg("@user:hs", "!visio admit Bob"))
    assert io.bodies()[-1] == "No guest 'Bob' is waiting in this room."  # a decision is final
    status = await (await client.get(f"/guest/api/status/{guest_id}")).json()
    assert status == {"state": "denied", "name": "Bob"}


async def test_admit_needs_power_level_and_a_name(store: Store, aiohttp_client: Any) -> None:
    clock = FakeClock()
    bot, io, service, _ = setup_bot(store, clock, admit_level=50)
    token = await link_token(bot, io)
    client = await client_for(aiohttp_client, service)
    r = await client.post("/guest/api/arrive", json={"token": token, "name": "Cy"})
    guest_id = (await r.json())["guest_id"]
    await bot.on_room_event(msg("@user:hs", "!visio admit Cy"))
    assert io.bodies()[-1] == "Sorry: Letting a guest in needs power level 50 in this room; you have 0."
    await bot.on_room_event(msg("@mod:hs", "!visio admit"))
    assert io.bodies()[-1] == "Usage: !visio admit <name>"
    await bot.on_room_event(msg("@mod:hs", "!visio admit Nobody"))
    assert io.bodies()[-1] == "No guest 'Nobody' is waiting in this room."
    assert (await (await client.get(f"/guest/api/status/{guest_id}")).json())["state"] == "waiting"
    await bot.on_room_event(msg("@mod:hs", "!visio admit Cy"))
    assert (await (await client.get(f"/guest/api/status/{guest_id}")).json())["state"] == "admitted"


async def test_guests_disabled_answer(store: Store) -> None:
    io, clock = FakeIO(), FakeClock()
    policy = PolicyConfig(allowed_servers=("hs",))
    bot = RoomBot(io, store, policy, clock, Metrics(), conferences=hub_for(store, policy, clock))
    await bot.on_room_event(msg("@user:hs", "!visio link"))
    assert io.bodies()[-1] == "Guest links are not enabled on this service."


async def test_expired_forged_and_malformed_links(store: Store, aiohttp_client: Any) -> None:
    clock = FakeClock()
    bot, io, service, posted = setup_bot(store, clock)
    token = await link_token(bot, io)
    client = await client_for(aiohttp_client, service)

    other_key = load_private_key(generate_key_text())
    forged = sign_link(new_link(ROOM, clock.wall_ms() / 1000, 3600), other_key)
    r = await client.get(f"/guest/{forged}")
    assert r.status == 403 and "not issued by this service" in await r.text()
    r = await client.post("/guest/api/arrive", json={"token": forged, "name": "Eve"})
    assert r.status == 403 and (await r.json())["errcode"] == "IO_VISIO_LINK_BAD_SIGNATURE"

    r = await client.get("/guest/not-a-token")
    assert r.status == 400 and "not valid" in await r.text()

    clock.advance(3601)
    r = await client.get(f"/guest/{token}")
    assert r.status == 410 and "has expired" in await r.text()
    r = await client.post("/guest/api/arrive", json={"token": token, "name": "Late"})
    assert r.status == 410 and (await r.json())["errcode"] == "IO_VISIO_LINK_EXPIRED"
    assert posted.notices == []  # nobody was announced


async def test_waiting_too_long_expires(store: Store, aiohttp_client: Any) -> None:
    clock = FakeClock()
    bot, io, service, _ = setup_bot(store, clock)
    token = await link_token(bot, io)
    client = await client_for(aiohttp_client, service)
    guest_id = (await (await client.post("/guest/api/arrive", json={"token": token, "name": "Dee"})).json())[
        "guest_id"
    ]
    clock.advance(601)
    assert (await (await client.get(f"/guest/api/status/{guest_id}")).json())["state"] == "expired"
    await bot.on_room_event(msg("@user:hs", "!visio admit Dee"))
    assert io.bodies()[-1] == "No guest 'Dee' is waiting in this room."


async def test_bad_requests_are_json_errors(store: Store, aiohttp_client: Any) -> None:
    clock = FakeClock()
    bot, io, service, _ = setup_bot(store, clock)
    token = await link_token(bot, io)
    client = await client_for(aiohttp_client, service)
    r = await client.post("/guest/api/arrive", data=b"{not json")
    assert r.status == 400 and (await r.json())["errcode"] == "M_NOT_JSON"
    r = await client.post("/guest/api/arrive", data=b"x" * 5000)
    assert r.status == 413 and (await r.json())["errcode"] == "M_TOO_LARGE"
    r = await client.post("/guest/api/arrive", json={"token": token, "name": "  "})
    assert r.status == 400 and (await r.json())["errcode"] == "IO_VISIO_INVALID_NAME"
    r = await client.post("/guest/api/arrive", json={"token": token})
    assert r.status == 400 and (await r.json())["errcode"] == "M_BAD_JSON"
    r = await client.get("/guest/api/status/unknown")
    assert r.status == 404 and (await r.json())["errcode"] == "IO_VISIO_UNKNOWN_GUEST"


async def test_hub_lets_an_admitted_guest_in_without_membership(store: Store) -> None:
    from test_conference_hub import ROOM as HUB_ROOM
    from test_conference_hub import Link, Members, Setup

    from visio_matrix.calls.hub_api import HubError, Identity

    s = Setup(store, Members("@alice:hs"))
    await s.hub.start()
    with pytest.raises(HubError) as caught:  # a guest never opens a conference
        await s.hub.join(HUB_ROOM, Identity("guest:g1", "g1", "Ann"), Link(), transport="livekit", guest=True)
    assert caught.value.code == "no_conference"
    await s.hub.start_conference(HUB_ROOM, "@alice:hs")
    with pytest.raises(HubError) as caught:  # without the flag: the usual membership check
        await s.hub.join(HUB_ROOM, Identity("guest:g1", "g1"), Link(), transport="livekit", offer_sdp="o")
    assert caught.value.code == "server_not_allowed"
    with pytest.raises(HubError) as caught:  # the flag is only for guest identities
        await s.hub.join(
            HUB_ROOM, Identity("@bob:hs", "B"), Link(), transport="livekit", offer_sdp="o", guest=True
        )
    assert caught.value.code == "bad_guest"
    await s.hub.join(
        HUB_ROOM, Identity("guest:g1", "g1", "Ann"), Link(), transport="livekit", offer_sdp="o", guest=True
    )
    [view] = s.hub.participants(HUB_ROOM)
    assert view.identity.user_id == "guest:g1" and view.identity.display_name == "Ann"
    await s.hub.stop()


def test_visio_claim_guest_flag_is_backward_compatible() -> None:
    from visio_matrix.focus.jwt import VideoGrants, VisioClaim, issue_token

    clock = FakeClock()
    member = VisioClaim("@a:hs", "D", ROOM, LEGACY_SLOT_ID, can_open=True)
    assert "guest" not in member.to_claim()  # tokens of members are unchanged
    token = issue_token(
        api_key="visio",
        api_secret=SECRET,
        identity="@a:hs:D",
        grants=VideoGrants(room="r"),
        visio=member,
        now=clock.wall_ms() / 1000,
        lifetime_s=60,
    )
    assert verify_token(token, FOCUS.signing_keys(), clock.wall_ms() / 1000).visio.guest is False


def _config(guests: object) -> dict[str, Any]:
    import yaml

    from visio_matrix.config import generate_config_text

    data: dict[str, Any] = yaml.safe_load(generate_config_text(server_name="example.org"))
    if guests is None:
        del data["guests"]
    else:
        data["guests"] = guests
    return data


def test_guests_config_section(tmp_path: Path) -> None:
    from visio_matrix.config import ConfigError, parse_config
    from visio_matrix.web.guest_links import public_key_text

    config, warnings = parse_config(_config(None), tmp_path)  # older configs load, guests off
    assert config.guests.enabled is False and warnings == []
    assert config.policy.admit_power_level == 0

    config, warnings = parse_config(_config({"enabled": True}), tmp_path)
    assert config.guests.enabled is False
    assert warnings == [
        "guests.signing_key: not set: guest links are disabled (visio-matrix generate-config writes a key; "
        "or set guests.enabled: false)"
    ]

    (tmp_path / "key.pem").write_text(KEY)
    old = public_key_text(load_private_key(generate_key_text()))
    config, warnings = parse_config(
        _config(
            {"signing_key_file": "key.pem", "old_public_keys": [old], "link_lifetime": "2h", "max_wait": 90}
        ),
        tmp_path,
    )
    assert warnings == [] and config.guests.enabled
    assert config.guests.signing_key == KEY and config.guests.old_public_keys == (old.strip(),)
    assert (config.guests.link_lifetime, config.guests.max_wait) == (7200.0, 90.0)
    assert KEY not in repr(config)

    with pytest.raises(ConfigError) as caught:
        parse_config(
            _config({"signing_key": "not a key", "old_public_keys": ["nope"], "link_lifetime": "1s"}),
            tmp_path,
        )
    assert caught.value.errors == [
        "guests.signing_key: the guest link private key is neither PEM nor base64",
        "guests.old_public_keys[0]: the guest link public key must be 32 bytes once base64-decoded (Ed25519)",
        "guests.link_lifetime: expected a duration from 1m to 30d, got '1s'",
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config(_config({"signing_key": KEY, "signing_key_file": "key.pem"}), tmp_path)
    assert caught.value.errors[0].startswith("guests.signing_key: set either guests.signing_key or")


def test_generated_config_has_a_fresh_guest_key(tmp_path: Path) -> None:
    from visio_matrix.config import generate_config_text, parse_config_text

    c1, w1 = parse_config_text(generate_config_text(), tmp_path)
    c2, _ = parse_config_text(generate_config_text(), tmp_path)
    assert w1 == [] and c1.guests.enabled
    assert c1.guests.signing_key != c2.guests.signing_key
    load_private_key(c1.guests.signing_key)
