"""The room widget that opens the call page inside a Matrix client (pure: strings and dicts only).

``widget_url(public_url, room_id)`` is the page's URL as a widget *template*: the Matrix client
replaces the ``$matrix_*`` variables (widget API, MSC2873/MSC3819) with the room, user, display name,
language and device, and appends ``widgetId`` and ``parentUrl`` itself (Element Web does; the URL also
carries ``widgetId=$matrix_widget_id`` for clients that only substitute). The page then uses
``matrix-widget-api`` with that widget id and the parent's origin to ask for an OpenID token.

``widget_state_content(url, name)`` is the content of the ``im.vector.modular.widgets`` state event
(state key: the widget id) that adds it to a room.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

WIDGET_EVENT_TYPE = "im.vector.modular.widgets"
WIDGET_TYPE = "m.custom"
DEFAULT_NAME = "Visio"

#: Widget API template variables, as the query parameters the page reads.
TEMPLATE_PARAMS: tuple[tuple[str, str], ...] = (
    ("roomId", "$matrix_room_id"),
    ("userId", "$matrix_user_id"),
    ("displayName", "$matrix_display_name"),
    ("avatarUrl", "$matrix_avatar_url"),
    ("lang", "$org.matrix.msc2873.client_language"),
    ("deviceId", "$org.matrix.msc3819.matrix_device_id"),
    ("baseUrl", "$org.matrix.msc4039.matrix_base_url"),
    ("widgetId", "$matrix_widget_id"),
)


def widget_url(public_url: str, room_id: str | None = None, *, path: str = "/call/") -> str:
    """The call page's widget URL template under ``public_url`` (``http(s)://host[:port][/prefix]``).

    ``room_id`` is not substituted into the URL: the client's ``$matrix_room_id`` is the room the
    widget is shown in, which is what the page must ask a token for; it is only checked here.
    """
    if not public_url.startswith(("https://", "http://")):
        raise ValueError(f"public_url must be an http(s) URL, not {public_url!r}")
    if any(c in public_url for c in "?#"):
        raise ValueError("public_url must not have a query or fragment")
    # Room version 12 ids have no server part: only the sigil is checked.
    if room_id is not None and not (room_id.startswith("!") and len(room_id) > 1 and " " not in room_id):
        raise ValueError(f"not a Matrix room id: {room_id!r}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', not {path!r}")
    # Template variables must stay literal ('$' unescaped) for the client to substitute them.
    query = "&".join(f"{key}={value}" for key, value in (("mode", "widget"), *TEMPLATE_PARAMS))
    return f"{public_url.rstrip('/')}{quote(path)}?{query}"


def widget_state_content(
    url: str, name: str = DEFAULT_NAME, *, widget_id: str | None = None
) -> dict[str, Any]:
    """Content of the ``im.vector.modular.widgets`` state event adding the call widget to a room."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"widget url must be an http(s) URL, not {url!r}")
    if not name.strip():
        raise ValueError("widget name must not be empty")
    content: dict[str, Any] = {
        "type": WIDGET_TYPE,
        "url": url,
        "name": name,
        "data": {"title": name},
        # The page says when it is ready (content_loaded), like Element Call.
        "waitForIframeLoad": False,
    }
    if widget_id is not None:
        content["id"] = widget_id
    return content
