"""Link signaling between ministries' bots (signaling/link.py): parsing, building, refusals."""

from __future__ import annotations

import pytest

from visio_matrix.relay.api import StreamInfo
from visio_matrix.relay.links import owners_of, sections_needed
from visio_matrix.signaling.link import (
    LINK_KEY,
    LinkInfo,
    RosterEntry,
    build_link_update,
    link_info_content,
    link_info_of,
    parse_link_info,
    parse_link_update,
    with_link_info,
)
from visio_matrix.signaling.messages import SignalingError

INFO = LinkInfo(
    server_name="b.gouv.fr",
    owners={"s1": {"user_id": "@u:b.gouv.fr", "device_id": "DEV"}},
    roster=(RosterEntry("@u:b.gouv.fr", "DEV"), RosterEntry("guest:abc", "abc")),
    onward=True,
    guests=1,
)


def test_link_info_round_trip() -> None:
    assert parse_link_info(link_info_content(INFO)) == INFO
    content = with_link_info({"call_id": "c"}, INFO)
    assert link_info_of(content) == INFO
    assert link_info_of({"call_id": "c"}) is None  # not a link message


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda c: c.pop("server"), "io.visio.link.server"),
        (lambda c: c.update(server="b gouv fr"), "io.visio.link.server"),
        (lambda c: c.update(owners=[]), "io.visio.link.owners"),
        (lambda c: c["owners"]["s1"].pop("user_id"), "io.visio.link.owners.s1.user_id"),
        (lambda c: c.update(roster={}), "io.visio.link.roster"),
        (lambda c: c["roster"].append({"device_id": "X"}), "io.visio.link.roster[2].user_id"),
        (lambda c: c.update(onward="yes"), "io.visio.link.onward"),
        (lambda c: c.update(guests=-1), "io.visio.link.guests"),
        (lambda c: c.update(roster=[{"user_id": "@u:x"}] * 1001), "io.visio.link.roster"),
    ],
)
def test_bad_link_info_names_the_field(mutate, path) -> None:  # type: ignore[no-untyped-def]
    content = link_info_content(INFO)
    mutate(content)
    error = parse_link_info(content)
    assert isinstance(error, SignalingError)
    assert path in str(error)


def test_link_update_round_trip_and_reoffer() -> None:
    content = build_link_update("link-1", "!r:a.gouv.fr", "sess1", 4, INFO, reoffer=(2, 1))
    update = parse_link_update(content)
    assert not isinstance(update, SignalingError)
    assert (update.call_id, update.room_id, update.seq, update.reoffer) == (
        "link-1",
        "!r:a.gouv.fr",
        4,
        (2, 1),
    )
    assert update.info == INFO
    plain = parse_link_update(build_link_update("link-1", "!r:a.gouv.fr", "sess1", 5, INFO))
    assert not isinstance(plain, SignalingError) and plain.reoffer is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("room_id", "not-a-room"),
        ("seq", "1"),
        ("call_id", "bad id"),
        (LINK_KEY, None),
        ("reoffer", {"audio": 99}),
    ],
)
def test_bad_link_update(key: str, value: object) -> None:
    content = build_link_update("link-1", "!r:a.gouv.fr", "sess1", 4, INFO, reoffer=(0, 0))
    content[key] = value
    assert isinstance(parse_link_update(content), SignalingError)


def stream(stream_id: str, kind: str, mid: str | None, user: str | None) -> StreamInfo:
    metadata = {"user_id": user, "device_id": "D"} if user else {}
    return StreamInfo(stream_id, stream_id + kind, mid, kind, "m.usermedia", "PA_x", "t", metadata)  # type: ignore[arg-type]


def test_owners_and_sections_needed() -> None:
    streams = [
        stream("s1", "audio", "0", "@a:a.gouv.fr"),
        stream("s1", "video", None, "@a:a.gouv.fr"),
        stream("s2", "audio", None, "@b:a.gouv.fr"),
        stream("s2", "video", None, "@b:a.gouv.fr"),
        stream("s3", "video", "5", None),  # no owner known: not announced
    ]
    assert owners_of(streams) == {
        "s1": {"user_id": "@a:a.gouv.fr", "device_id": "D"},
        "s2": {"user_id": "@b:a.gouv.fr", "device_id": "D"},
    }
    assert sections_needed(streams) == (1, 2)
    assert sections_needed([]) == (0, 0)
