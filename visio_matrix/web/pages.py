"""Serves the built call page (``visio_matrix/web/static/``, made by ``npm run build`` in ``web/app``).

``page_routes(static_dir)`` answers ``/call/`` with ``index.html`` and ``/call/<file>`` with the built
assets (only plain file names inside ``static_dir``: no sub-folders, no dot files, nothing outside).
``/call`` redirects to ``/call/`` keeping the query (the page's mode and parameters live there). When
the page was not built, every route answers ``503`` with a text saying how to build it.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

#: Where ``npm run build`` writes the page.
DEFAULT_STATIC_DIR = Path(__file__).resolve().parent / "static"
PREFIX = "/call"
NOT_BUILT = (
    "The call page is not built on this server. Build it with `npm ci && npm run build` in "
    "visio_matrix/web/app (scripts/test and scripts/demo do it).\n"
)
_ASSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The page is meant to be framed by Matrix clients (widget), so no X-Frame-Options; it needs no referrer.
_HEADERS = {
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def page_routes(static_dir: Path = DEFAULT_STATIC_DIR, prefix: str = PREFIX) -> list[web.RouteDef]:
    """Routes serving the built page under ``prefix`` (``/call/``: ``index.html``; ``/call/<asset>``)."""
    root = static_dir.resolve()

    def not_built() -> web.Response:
        return web.Response(status=503, text=NOT_BUILT, headers={"Retry-After": "60"})

    async def index(request: web.Request) -> web.StreamResponse:
        path = root / "index.html"
        if not path.is_file():
            return not_built()
        return web.FileResponse(path, headers=_HEADERS)

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not (root / "index.html").is_file():
            return not_built()
        if not _ASSET.match(name) or ".." in name:
            raise web.HTTPNotFound()
        path = root / name
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers=_HEADERS)

    async def redirect(request: web.Request) -> web.StreamResponse:
        query = request.query_string
        raise web.HTTPFound(prefix + "/" + (f"?{query}" if query else ""))

    return [
        web.get(prefix, redirect),
        web.get(prefix + "/", index),
        web.get(prefix + "/{name}", asset),
    ]
