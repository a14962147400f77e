"""Minimal client of Janus's HTTP API for the VideoRoom plugin (used from peer processes).

One :class:`JanusSession` per peer process: it long-polls ``GET /janus/<session>`` for asynchronous
events and hands each to the request that is waiting for its transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aiohttp

VIDEOROOM = "janus.plugin.videoroom"


class JanusError(RuntimeError):
    pass


class JanusSession:
    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._session_id: int | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._poll_task: asyncio.Task[None] | None = None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": body.get("transaction") or uuid.uuid4().hex}
        async with self._http.post(self._base + path, json=body) as resp:
            reply: dict[str, Any] = await resp.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"{body.get('janus')}: {reply.get('error')}")
        return reply

    async def create(self) -> None:
        reply = await self._post("", {"janus": "create"})
        self._session_id = int(reply["data"]["id"])
        self._poll_task = asyncio.create_task(self._poll())

    async def attach(self) -> int:
        reply = await self._post(f"/{self._session_id}", {"janus": "attach", "plugin": VIDEOROOM})
        return int(reply["data"]["id"])

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Send a plugin request; return the plugin's event (synchronous reply or the async event)."""
        transaction = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        request: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            request["jsep"] = jsep
        try:
            reply = await self._post(f"/{self._session_id}/{handle}", request)
            if reply.get("janus") != "ack":
                event = reply
            else:
                event = await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(transaction, None)
        data = event.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']}")
        return event

    async def _poll(self) -> None:
        url = f"{self._base}/{self._session_id}?maxev=50"
        while True:
            try:
                async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=70)) as resp:
                    reply = await resp.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.2)
                continue
            for event in reply if isinstance(reply, list) else [reply]:
                future = self._waiting.get(event.get("transaction", ""))
                if future is not None and not future.done() and event.get("janus") == "event":
                    future.set_result(event)

    async def destroy(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        if self._session_id is not None:
            with contextlib.suppress(aiohttp.ClientError, JanusError):
                await self._post(f"/{self._session_id}", {"janus": "destroy"})
