"""The bot's identity as other ministries pin it, and peer trust, against a real Synapse.

The service starts (its bot cross-signs its device); ``fetch_bot_identity`` and ``visio-matrix
identity`` read the keys back from the homeserver with the appservice token, and ``PeerTrust``
asks the homeserver (through the bot device's ``query_keys``) to check the signature chain.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from synapse_fixtures import ServiceStack, SynapseFactory, service_stack

from visio_matrix.app import Service
from visio_matrix.cli import main
from visio_matrix.clock import SystemClock
from visio_matrix.config import parse_config_text
from visio_matrix.config.model import FederationConfig, PeerConfig
from visio_matrix.crypto.cross_signing import public_key_b64
from visio_matrix.crypto.peer_trust import CROSS_SIGNED, PINNED, PeerTrust, fetch_bot_identity

pytestmark = pytest.mark.synapse


@pytest_asyncio.fixture
async def stack(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> ServiceStack:
    return await service_stack(synapse_factory, tmp_path_factory, "peer-trust")


async def test_fetch_bot_identity_reads_the_running_bots_keys(stack: ServiceStack, service: Service) -> None:
    device = service.device
    assert device.master_key is not None, "the bot did not cross-sign its device"
    identity = await fetch_bot_identity(stack.config())
    assert identity.user_id == service.bot_user_id
    assert identity.server_name == stack.config().homeserver.server_name
    assert identity.devices == {device.device_id: device.identity_keys()["ed25519"]}
    assert identity.master_key == device.master_key
    assert identity.cross_signed == {device.device_id}
    # Cross-signing covers the device: the master key alone is the entry to pin.
    assert identity.peer_entry() == {
        "server_name": identity.server_name,
        "bot_user_id": service.bot_user_id,
        "master_key": device.master_key,
    }


async def test_peer_trust_follows_the_pinned_master_key(stack: ServiceStack, service: Service) -> None:
    device = service.device
    identity = await fetch_bot_identity(stack.config())
    bot, ed25519 = service.bot_user_id, device.identity_keys()["ed25519"]
    server = identity.server_name

    def trust_with(**keys: object) -> PeerTrust:
        peer = PeerConfig(server_name=server, bot_user_id=bot, **keys)  # type: ignore[arg-type]
        return PeerTrust(FederationConfig(peers=(peer,)), device, SystemClock())

    decision = await trust_with(master_key=identity.master_key).verify(bot, device.device_id, ed25519)
    assert (decision.trusted, decision.reason) == (True, CROSS_SIGNED)

    other_master = public_key_b64(Ed25519PrivateKey.generate())
    decision = await trust_with(master_key=other_master).verify(bot, device.device_id, ed25519)
    assert not decision.trusted
    assert decision.reason == (
        f"{bot}'s published master key {identity.master_key} is not the pinned master_key {other_master}"
    )

    # A key the device does not publish is refused even under the right master key.
    forged = public_key_b64(Ed25519PrivateKey.generate())
    assert not (
        await trust_with(master_key=identity.master_key).verify(bot, device.device_id, forged)
    ).trusted

    decision = await trust_with(device_keys=(ed25519,)).verify(bot, device.device_id, ed25519)
    assert (decision.trusted, decision.reason) == (True, PINNED)


async def test_identity_command_prints_a_pasteable_peer_entry(
    stack: ServiceStack, service: Service, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    master = service.device.master_key
    await service.stop()  # the command needs only the homeserver (stop twice is fine)
    code = await asyncio.to_thread(main, ["identity", "-c", str(stack.config_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    identity = await fetch_bot_identity(stack.config())
    assert master is not None and identity.master_key == master
    assert f"# Cross-signing master key: {identity.master_key}" in out
    (device_id, ed25519), *_ = identity.devices.items()
    assert f"# Device {device_id}: ed25519 {ed25519} (cross-signed)" in out
    # What the other ministry pastes loads as their federation.peers.
    pasted = yaml.safe_load(out)
    assert pasted == {"federation": {"peers": [identity.peer_entry()]}}
    other_side = (
        "homeserver: {url: 'http://127.0.0.1:1', server_name: b.example}\n"
        f"appservice: {{as_token: {'a' * 32}, hs_token: {'h' * 32}}}\n"
        f"crypto: {{pickle_key: {'p' * 32}}}\n"
        f"focus: {{api_secret: {'f' * 40}}}\n"
    )
    config, warnings = parse_config_text(other_side + out, tmp_path)
    assert warnings == []
    assert config.federation.peers == (
        PeerConfig(identity.server_name, identity.user_id, identity.master_key, ()),
    )


async def test_identity_command_reports_an_unreachable_homeserver(
    stack: ServiceStack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = stack.config_path.read_text()
    url = stack.config().homeserver.url
    dead = tmp_path / "config.yaml"
    dead.write_text(text.replace(url, "http://127.0.0.1:9"))
    code = await asyncio.to_thread(main, ["identity", "-c", str(dead)])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: cannot read the bot's keys from the homeserver at http://127.0.0.1:9" in err


async def test_identity_command_before_the_first_start_says_so(
    synapse_factory: SynapseFactory,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fresh = await service_stack(synapse_factory, tmp_path_factory, "peer-trust-never-started")
    code = await asyncio.to_thread(main, ["identity", "-c", str(fresh.config_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert "refused the key query" in captured.err
    assert "the service registers its bot on first start: run it once" in captured.err
