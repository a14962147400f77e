"""Parsing of transaction bodies and room events (pure)."""

from __future__ import annotations

import pytest

from visio_matrix.appservice.events import (
    BadEvent,
    BodyError,
    RoomEvent,
    parse_room_event,
    parse_transaction_body,
    server_name_of,
)

GOOD = {
    "event_id": "$e1",
    "room_id": "!r:hs",
    "sender": "@a:hs",
    "type": "m.room.message",
    "content": {"body": "hi"},
    "origin_server_ts": 5,
}


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        (None, "M_BAD_JSON"),
        ([], "M_BAD_JSON"),
        ("x", "M_BAD_JSON"),
        ({}, "M_BAD_JSON"),
        ({"events": {}}, "M_BAD_JSON"),
        ({"events": "x"}, "M_BAD_JSON"),
    ],
)
def test_bad_bodies_are_refused(body: object, errcode: str) -> None:
    with pytest.raises(BodyError) as info:
        parse_transaction_body(body)
    assert info.value.errcode == errcode


def test_body_with_msc2409_data() -> None:
    txn = parse_transaction_body(
        {
            "events": [GOOD],
            "de.sorunome.msc2409.to_device": [{"type": "m.room_key"}],
            "org.matrix.msc3202.device_lists": {"changed": ["@a:hs"]},
        }
    )
    assert txn.events == (GOOD,)
    assert txn.to_device == ({"type": "m.room_key"},)
    assert txn.device_lists == {"changed": ["@a:hs"]}


def test_good_event_parses() -> None:
    event = parse_room_event(GOOD)
    assert isinstance(event, RoomEvent)
    assert (event.event_id, event.room_id, event.sender, event.type) == (
        "$e1",
        "!r:hs",
        "@a:hs",
        "m.room.message",
    )
    assert event.content == {"body": "hi"}
    assert event.state_key is None


@pytest.mark.parametrize(
    ("mutation", "reason_part"),
    [
        ({"event_id": None}, "event_id"),
        ({"room_id": 3}, "room_id"),
        ({"sender": ""}, "sender"),
        ({"type": None}, "type"),
        ({"content": "x"}, "content"),
        ({"origin_server_ts": "yesterday"}, "origin_server_ts"),
        ({"state_key": 1}, "state_key"),
    ],
)
def test_bad_events_become_values(mutation: dict[str, object], reason_part: str) -> None:
    raw = {**GOOD, **mutation}
    event = parse_room_event(raw)
    assert isinstance(event, BadEvent)
    assert reason_part in event.reason


def test_non_object_event() -> None:
    event = parse_room_event(["not", "an", "event"])
    assert isinstance(event, BadEvent)
    assert "JSON object" in event.reason


@pytest.mark.parametrize(
    ("user_id", "server"),
    [("@a:hs", "hs"), ("@a:localhost:8481", "localhost:8481"), ("@_visio_x:gouv.fr", "gouv.fr")],
)
def test_server_name_of(user_id: str, server: str) -> None:
    assert server_name_of(user_id) == server


def test_server_name_of_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        server_name_of("alice")
