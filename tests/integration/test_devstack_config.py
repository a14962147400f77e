"""LocalSynapse's homeserver.yaml, read back by Synapse's own config parser (no process started)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from synapse.config.homeserver import HomeServerConfig
from synapse.config.server import TCPListenerConfig

from visio_matrix.devstack.synapse import LocalSynapse, deep_merge, free_port

# Importing Synapse's config code in the test process triggers Twisted/jsonschema deprecation warnings.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def load(hs: LocalSynapse) -> HomeServerConfig:
    return HomeServerConfig.load_config("devstack-test", ["-c", str(hs.write_config())])


def tcp_listeners(config: HomeServerConfig) -> list[TCPListenerConfig]:
    return [listener for listener in config.server.listeners if isinstance(listener, TCPListenerConfig)]


def test_config_is_loopback_fast_and_quiet(tmp_path: Path) -> None:
    hs = LocalSynapse(tmp_path / "hs")
    config = load(hs)
    assert hs.server_name == f"localhost:{hs.client_port}"
    listeners = config.server.listeners
    assert all(isinstance(listener, TCPListenerConfig) for listener in listeners)
    assert [listener.bind_addresses for listener in tcp_listeners(config)] == [["127.0.0.1"]]
    assert config.registration.bcrypt_rounds == 4
    assert not config.registration.enable_registration
    assert config.key.key_servers == []
    assert not config.media.url_preview_enabled
    assert not config.server.presence_enabled
    assert config.database.databases[0].config["args"]["database"] == str(hs.database_path)
    for limit in (
        config.ratelimiting.rc_message,
        config.ratelimiting.rc_login_account,
        config.ratelimiting.rc_login_address,
        config.ratelimiting.rc_login_failed_attempts,
        config.ratelimiting.rc_joins_local,
        config.ratelimiting.rc_invites_per_user,
        config.ratelimiting.rc_key_requests,
        config.ratelimiting.rc_registration,
        config.ratelimiting.rc_room_creation,
    ):
        assert limit.per_second >= 1000, limit
    assert "127.0.0.1" in config.server.ip_range_allowlist


def test_federating_config_has_tls_listener_and_merges_extra_config(tmp_path: Path) -> None:
    port = free_port()
    hs = LocalSynapse(
        tmp_path / "hs",
        federation_port=port,
        extra_config={"experimental_features": {"msc3026_enabled": True}, "rc_message": {"per_second": 5}},
    )
    config = load(hs)
    assert hs.server_name == f"localhost:{port}"
    tls_listeners = [listener for listener in tcp_listeners(config) if listener.tls]
    assert [listener.port for listener in tls_listeners] == [port]
    assert not config.tls.federation_verify_certificates
    assert config.experimental.msc3026_enabled
    assert config.ratelimiting.rc_message.per_second == 5
    assert config.ratelimiting.rc_message.burst_count == 10000  # merged, not replaced


def test_write_config_keeps_existing_keys(tmp_path: Path) -> None:
    hs = LocalSynapse(tmp_path / "hs", federation_port=free_port())
    hs.write_config()
    first = {p: p.read_bytes() for p in (hs.signing_key_path, hs.tls_cert_path, hs.tls_key_path)}
    secret = hs.registration_shared_secret
    again = LocalSynapse(tmp_path / "hs", federation_port=hs.federation_port)
    again.write_config()
    assert {p: p.read_bytes() for p in first} == first
    assert again.registration_shared_secret == secret
    other = LocalSynapse(tmp_path / "other")
    assert other.registration_shared_secret != secret


def test_deep_merge() -> None:
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"c": 3}, "e": 4}) == {
        "a": {"b": 1, "c": 3},
        "d": 1,
        "e": 4,
    }


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
