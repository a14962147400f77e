"""Cross-signing of the bot's device, so clients see it as verified by its owner.

Pure helpers (canonical JSON, signing, key objects) plus ``ensure_cross_signed`` doing the
requests. The three private keys (master, self-signing, user-signing) are kept only in the
service's store, encrypted with a key derived from ``crypto.pickle_key`` (AES-GCM): the
self-signing key is needed again whenever the bot gets a new device, and the master key cannot be
replaced without interactive authentication, so losing them would leave the bot unverifiable.

First upload of cross-signing keys needs no interactive auth (MSC3967, in Synapse).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

log = logging.getLogger(__name__)

STATE_KEY = "bot.cross_signing"
USAGES = ("master", "self_signing", "user_signing")


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode_unpadded(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def public_key_b64(key: Ed25519PrivateKey) -> str:
    return unpadded_b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def sign_json(obj: dict[str, Any], user_id: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    """Returns a copy of ``obj`` with a signature added (spec: signing JSON)."""
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    signature = unpadded_b64(key.sign(canonical_json(unsigned)))
    signed = dict(obj)
    signatures = {u: dict(s) for u, s in obj.get("signatures", {}).items()}
    signatures.setdefault(user_id, {})[f"ed25519:{public_key_b64(key)}"] = signature
    signed["signatures"] = signatures
    return signed


def verify_json(obj: dict[str, Any], user_id: str, public_key: str) -> bool:
    signature = obj.get("signatures", {}).get(user_id, {}).get(f"ed25519:{public_key}")
    if not isinstance(signature, str):
        return False
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    try:
        Ed25519PublicKey.from_public_bytes(b64decode_unpadded(public_key)).verify(
            b64decode_unpadded(signature), canonical_json(unsigned)
        )
    except Exception:
        return False
    return True


def key_object(user_id: str, usage: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    pub = public_key_b64(key)
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{pub}": pub}}


@dataclass(frozen=True)
class CrossSigningKeys:
    master: Ed25519PrivateKey
    self_signing: Ed25519PrivateKey
    user_signing: Ed25519PrivateKey

    @staticmethod
    def generate() -> CrossSigningKeys:
        return CrossSigningKeys(*(Ed25519PrivateKey.generate() for _ in USAGES))

    def upload_body(self, user_id: str) -> dict[str, Any]:
        master = key_object(user_id, "master", self.master)
        return {
            "master_key": master,
            "self_signing_key": sign_json(
                key_object(user_id, "self_signing", self.self_signing), user_id, self.master
            ),
            "user_signing_key": sign_json(
                key_object(user_id, "user_signing", self.user_signing), user_id, self.master
            ),
        }

    def seal(self, secret: str) -> str:
        """Encrypts the three private keys for storage."""
        seeds = {
            usage: unpadded_b64(key.private_bytes_raw())
            for usage, key in zip(USAGES, (self.master, self.self_signing, self.user_signing), strict=True)
        }
        nonce = os.urandom(12)
        box = AESGCM(_derive(secret)).encrypt(nonce, canonical_json(seeds), b"visio-cross-signing")
        return json.dumps({"v": 1, "nonce": unpadded_b64(nonce), "box": unpadded_b64(box)})

    @staticmethod
    def unseal(sealed: str, secret: str) -> CrossSigningKeys:
        data = json.loads(sealed)
        plain = AESGCM(_derive(secret)).decrypt(
            b64decode_unpadded(data["nonce"]), b64decode_unpadded(data["box"]), b"visio-cross-signing"
        )
        seeds = json.loads(plain)
        return CrossSigningKeys(
            *(Ed25519PrivateKey.from_private_bytes(b64decode_unpadded(seeds[usage])) for usage in USAGES)
        )


def _derive(secret: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"visio-matrix cross-signing").derive(
        secret.encode("utf-8")
    )


class KeysApi(Protocol):
    """The three client-API calls needed (done by the bot device with the as_token)."""

    async def query_own_keys(self) -> dict[str, Any]: ...

    async def upload_cross_signing_keys(self, body: dict[str, Any]) -> None: ...

    async def upload_signatures(self, body: dict[str, Any]) -> None: ...


class StateStore(Protocol):
    async def get_state(self, key: str) -> str | None: ...

    async def set_state(self, key: str, value: str) -> None: ...


def _server_master_key(query: dict[str, Any], user_id: str) -> str | None:
    master = query.get("master_keys", {}).get(user_id)
    if not isinstance(master, dict):
        return None
    keys = list(master.get("keys", {}).values())
    return str(keys[0]) if keys else None


async def ensure_cross_signed(
    api: KeysApi, state: StateStore, user_id: str, device_id: str, pickle_key: str
) -> str | None:
    """Makes sure the bot has cross-signing keys and its device is signed by its self-signing key.

    Returns the master public key, or None when cross-signing is not possible (logged).
    """
    sealed = await state.get_state(STATE_KEY)
    keys = None
    if sealed:
        try:
            keys = CrossSigningKeys.unseal(sealed, pickle_key)
        except (InvalidTag, ValueError, KeyError) as exc:
            log.error(
                "the stored cross-signing keys of %s cannot be decrypted with crypto.pickle_key (%s): "
                "was the pickle key changed? The bot's device is not cross-signed.",
                user_id,
                type(exc).__name__,
            )
            return None
    query = await api.query_own_keys()
    server_master = _server_master_key(query, user_id)

    if server_master is None:
        keys = keys or CrossSigningKeys.generate()
        await api.upload_cross_signing_keys(keys.upload_body(user_id))
        await state.set_state(STATE_KEY, keys.seal(pickle_key))
        log.info("uploaded cross-signing keys for %s (master %s)", user_id, public_key_b64(keys.master))
        query = await api.query_own_keys()
    elif keys is None or public_key_b64(keys.master) != server_master:
        log.warning(
            "%s has cross-signing keys on the homeserver that this service does not hold: its device "
            "cannot be cross-signed (reset the bot's cross-signing keys on the homeserver to fix it)",
            user_id,
        )
        return None

    assert keys is not None
    device = query.get("device_keys", {}).get(user_id, {}).get(device_id)
    if not isinstance(device, dict):
        log.warning("device %s of %s not found in its own key query: not cross-signed", device_id, user_id)
        return None
    ssk = public_key_b64(keys.self_signing)
    if not verify_json(device, user_id, ssk):
        signed = sign_json({k: v for k, v in device.items() if k != "unsigned"}, user_id, keys.self_signing)
        only_new = {
            **{k: v for k, v in signed.items() if k != "signatures"},
            "signatures": {user_id: {f"ed25519:{ssk}": signed["signatures"][user_id][f"ed25519:{ssk}"]}},
        }
        await api.upload_signatures({user_id: {device_id: only_new}})
        log.info("cross-signed bot device %s", device_id)
    return public_key_b64(keys.master)
