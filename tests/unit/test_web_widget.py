"""The call widget's URL template and state event content (visio_matrix.web.widget)."""

from urllib.parse import parse_qsl, urlsplit

import pytest

from visio_matrix.web.widget import WIDGET_EVENT_TYPE, widget_state_content, widget_url


def test_widget_url_carries_the_widget_api_template_variables_unescaped() -> None:
    url = widget_url("https://visio.example.org/", "!room:example.org")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "visio.example.org", "/call/")
    query = dict(parse_qsl(parts.query))
    assert query == {
        "mode": "widget",
        "roomId": "$matrix_room_id",
        "userId": "$matrix_user_id",
        "displayName": "$matrix_display_name",
        "avatarUrl": "$matrix_avatar_url",
        "lang": "$org.matrix.msc2873.client_language",
        "deviceId": "$org.matrix.msc3819.matrix_device_id",
        "baseUrl": "$org.matrix.msc4039.matrix_base_url",
        "widgetId": "$matrix_widget_id",
    }
    # Literal '$': a client substitutes only unescaped template variables.
    assert "%24" not in url and "$matrix_room_id&" in url


def test_widget_url_keeps_a_path_prefix() -> None:
    assert widget_url("http://127.0.0.1:8080/visio").startswith(
        "http://127.0.0.1:8080/visio/call/?mode=widget&"
    )


@pytest.mark.parametrize(
    ("public_url", "room_id", "message"),
    [
        ("visio.example.org", None, "http"),
        ("https://visio.example.org/?x=1", None, "query"),
        ("https://visio.example.org", "#alias:example.org", "room id"),
    ],
)
def test_widget_url_refuses_bad_input(public_url: str, room_id: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        widget_url(public_url, room_id)


def test_widget_state_content() -> None:
    url = widget_url("https://visio.example.org")
    content = widget_state_content(url, "Visio", widget_id="visio-call")
    assert WIDGET_EVENT_TYPE == "im.vector.modular.widgets"
    assert content == {
        "type": "m.custom",
        "url": url,
        "name": "Visio",
        "data": {"title": "Visio"},
        "waitForIframeLoad": False,
        "id": "visio-call",
    }
    assert "id" not in widget_state_content(url)
    assert widget_state_content(url)["name"] == "Visio"


@pytest.mark.parametrize(("url", "name"), [("javascript:alert(1)", "Visio"), ("https://x.org/call/", "  ")])
def test_widget_state_content_refuses_bad_input(url: str, name: str) -> None:
    with pytest.raises(ValueError):
        widget_state_content(url, name)
