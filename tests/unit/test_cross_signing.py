"""Cross-signing helpers (pure) and the ensure flow against an in-memory key server."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.exceptions import InvalidTag

from visio_matrix.crypto.cross_signing import (
    STATE_KEY,
    CrossSigningKeys,
    canonical_json,
    ensure_cross_signed,
    public_key_b64,
    sign_json,
    verify_json,
)

USER, DEVICE = "@visio:hs", "BOTDEVICE"


def test_canonical_json_is_sorted_and_compact() -> None:
    assert (
        canonical_json({"b": 1, "a": {"d": [1, 2], "c": "é"}}) == '{"a":{"c":"é","d":[1,2]},"b":1}'.encode()
    )


def test_sign_then_verify_and_tampering() -> None:
    keys = CrossSigningKeys.generate()
    obj = {"user_id": USER, "keys": {"ed25519:X": "X"}, "unsigned": {"ignored": True}}
    signed = sign_json(obj, USER, keys.self_signing)
    pub = public_key_b64(keys.self_signing)
    assert verify_json(signed, USER, pub)
    assert not verify_json(signed, USER, public_key_b64(keys.master))  # not signed by that key
    assert not verify_json({**signed, "keys": {"ed25519:Y": "Y"}}, USER, pub)  # content changed
    assert verify_json({**signed, "unsigned": {"other": 1}}, USER, pub)  # unsigned is not covered


def test_upload_body_chains_to_master() -> None:
    keys = CrossSigningKeys.generate()
    body = keys.upload_body(USER)
    master = public_key_b64(keys.master)
    assert body["master_key"]["usage"] == ["master"]
    assert verify_json(body["self_signing_key"], USER, master)
    assert verify_json(body["user_signing_key"], USER, master)


def test_seal_unseal_round_trip_and_wrong_secret() -> None:
    keys = CrossSigningKeys.generate()
    sealed = keys.seal("pickle-secret")
    assert public_key_b64(keys.master) not in sealed
    back = CrossSigningKeys.unseal(sealed, "pickle-secret")
    assert public_key_b64(back.self_signing) == public_key_b64(keys.self_signing)
    with pytest.raises(InvalidTag):
        CrossSigningKeys.unseal(sealed, "another-secret")


class FakeKeyServer:
    def __init__(self) -> None:
        self.master: dict[str, Any] | None = None
        self.device: dict[str, Any] = {
            "user_id": USER,
            "device_id": DEVICE,
            "keys": {"ed25519:BOTDEVICE": "k"},
        }
        self.signature_uploads = 0

    async def query_own_keys(self) -> dict[str, Any]:
        result: dict[str, Any] = {"device_keys": {USER: {DEVICE: self.device}}}
        if self.master:
            result["master_keys"] = {USER: self.master}
        return result

    async def upload_cross_signing_keys(self, body: dict[str, Any]) -> None:
        assert self.master is None, "a second upload would need interactive auth"
        self.master = body["master_key"]

    async def upload_signatures(self, body: dict[str, Any]) -> None:
        self.signature_uploads += 1
        new = body[USER][DEVICE]["signatures"][USER]
        self.device.setdefault("signatures", {}).setdefault(USER, {}).update(new)


class MemoryState:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def get_state(self, key: str) -> str | None:
        return self.values.get(key)

    async def set_state(self, key: str, value: str) -> None:
        self.values[key] = value


async def test_ensure_cross_signed_is_idempotent() -> None:
    server, state = FakeKeyServer(), MemoryState()
    master = await ensure_cross_signed(server, state, USER, DEVICE, "pk")
    assert master is not None and STATE_KEY in state.values
    keys = CrossSigningKeys.unseal(state.values[STATE_KEY], "pk")
    assert verify_json(server.device, USER, public_key_b64(keys.self_signing))
    assert server.signature_uploads == 1
    # Second start: same master, nothing uploaded again.
    assert await ensure_cross_signed(server, state, USER, DEVICE, "pk") == master
    assert server.signature_uploads == 1


async def test_foreign_master_key_is_not_overwritten() -> None:
    server, state = FakeKeyServer(), MemoryState()
    server.master = {"user_id": USER, "usage": ["master"], "keys": {"ed25519:OTHER": "OTHER"}}
    assert await ensure_cross_signed(server, state, USER, DEVICE, "pk") is None
    assert server.signature_uploads == 0


async def test_keys_sealed_with_another_pickle_key_are_refused_cleanly() -> None:
    server, state = FakeKeyServer(), MemoryState()
    assert await ensure_cross_signed(server, state, USER, DEVICE, "first-key") is not None
    uploads = server.signature_uploads
    assert await ensure_cross_signed(server, state, USER, DEVICE, "changed-key") is None
    assert server.signature_uploads == uploads
