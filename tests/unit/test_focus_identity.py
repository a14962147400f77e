"""LiveKit identities and room names, against lk-jwt-service's test vectors and Go's JSON encoding.

The expected values are not computed with the code under test: they come from lk-jwt-service's
``helper_test.go`` (the MSC4195 appendix vectors) or from SHA-256 over JSON bytes written out by
hand the way Go's ``json.Marshal([]string{...})`` writes them.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from visio_matrix.focus.identity import (
    LEGACY_SLOT_ID,
    go_json_strings,
    hashed_identity,
    legacy_identity,
    livekit_room_name,
)


def unpadded_b64_sha256(raw: bytes) -> str:
    return base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def test_room_name_test_vector_from_lk_jwt_service() -> None:
    # helper_test.go TestLiveKitRoomAliasFor_TestVector.
    assert (
        livekit_room_name("!roomid:example.com", "slot1234") == "O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc"
    )


def test_identity_test_vector_from_lk_jwt_service() -> None:
    # helper_test.go TestLiveKitIdentityFor_TestVector.
    assert (
        hashed_identity("@alice:example.com", "DEVICE123", "memberABC")
        == "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU"
    )


def test_legacy_endpoint_identity_and_room() -> None:
    # handler.go processLegacySFURequest: matrixID + ":" + DeviceID, slot "m.call#ROOM".
    assert legacy_identity("@alice:example.org", "ABCDEFGHIJ") == "@alice:example.org:ABCDEFGHIJ"
    assert LEGACY_SLOT_ID == "m.call#ROOM"
    expected = unpadded_b64_sha256(b'["!room:example.org","m.call#ROOM"]')
    assert livekit_room_name("!room:example.org", LEGACY_SLOT_ID) == expected


@pytest.mark.parametrize(
    ("values", "go_bytes"),
    [
        (["!r:x", "m.call#ROOM"], b'["!r:x","m.call#ROOM"]'),
        # Go escapes HTML-sensitive characters and the JS line separators.
        (["a<b>c&d", "\u2028\u2029"], b'["a\\u003cb\\u003ec\\u0026d","\\u2028\\u2029"]'),
        # Non-ASCII stays UTF-8; quotes and backslashes are escaped; \b \f \n \r \t short forms
        # (Go >= 1.22), other control characters as lower-case \u00xx; DEL is not escaped.
        (["\u00e9\u4e2d", 'q"b\\'], b'["\xc3\xa9\xe4\xb8\xad","q\\"b\\\\"]'),
        (["\b\f\n\r\t\x01\x1f\x7f"], b'["\\b\\f\\n\\r\\t\\u0001\\u001f\x7f"]'),
        # A lone surrogate (possible from a JSON body's "\ud800") is U+FFFD, as Go's decoder makes it.
        (["x\ud800"], b'["x\xef\xbf\xbd"]'),
        ([], b"[]"),
    ],
)
def test_json_is_what_go_marshals(values: list[str], go_bytes: bytes) -> None:
    assert go_json_strings(values) == go_bytes


def test_hashes_use_go_json() -> None:
    expected = unpadded_b64_sha256(b'["@a:x","D\\u003c1\\u003e","m\\u00261"]')
    assert hashed_identity("@a:x", "D<1>", "m&1") == expected
    assert livekit_room_name("!a<b:x", "s") == unpadded_b64_sha256(b'["!a\\u003cb:x","s"]')


def test_names_are_unpadded_standard_base64() -> None:
    name = livekit_room_name("!room:example.org", "m.call#ROOM")
    assert len(name) == 43 and not name.endswith("=")
    assert base64.b64decode(name + "=") == hashlib.sha256(b'["!room:example.org","m.call#ROOM"]').digest()
