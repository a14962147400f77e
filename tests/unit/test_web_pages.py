"""Serving the built call page under /call/ (visio_matrix.web.pages), on a real aiohttp server."""

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from visio_matrix.web.pages import page_routes


async def _client(static_dir: Path) -> TestClient[web.Request, web.Application]:
    app = web.Application()
    app.add_routes(page_routes(static_dir))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_serves_index_and_assets(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>call</title>")
    (tmp_path / "app.js").write_text("console.log(1)")
    (tmp_path / ".secret").write_text("no")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.js").write_text("no")
    (tmp_path.parent / "outside.txt").write_text("no")
    client = await _client(tmp_path)
    try:
        resp = await client.get("/call/")
        assert resp.status == 200 and "<title>call</title>" in await resp.text()
        assert resp.content_type == "text/html"
        resp = await client.get("/call/app.js")
        assert resp.status == 200 and await resp.text() == "console.log(1)"
        assert "javascript" in resp.content_type
        resp = await client.get("/call?mode=token&jwt=x", allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"] == "/call/?mode=token&jwt=x"
        for bad in ("/call/.secret", "/call/sub/x.js", "/call/missing.js", "/call/..%2Foutside.txt"):
            assert (await client.get(bad)).status == 404, bad
    finally:
        await client.close()


async def test_not_built_is_a_clear_503(tmp_path: Path) -> None:
    client = await _client(tmp_path / "static")
    try:
        for path in ("/call/", "/call/app.js"):
            resp = await client.get(path)
            assert resp.status == 503
            assert "npm run build" in await resp.text()
    finally:
        await client.close()
