"""Service -> homeserver requests made with the appservice token (``as_token``).

Used for what nio does not cover: registering the bot user, creating its device, the appservice
ping, and health checks. Errors come back as ``MatrixError`` with the Matrix ``errcode``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import aiohttp

log = logging.getLogger(__name__)


class MatrixError(Exception):
    def __init__(self, status: int, errcode: str, error: str) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error


class HomeserverClient:
    def __init__(self, base_url: str, as_token: str, appservice_id: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._as_token = as_token
        self._appservice_id = appservice_id
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HomeserverClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        user_id: str | None = None,
        device_id: str | None = None,
        authenticated: bool = True,
    ) -> dict[str, Any]:
        """One request; raises ``MatrixError`` on a non-2xx answer."""
        params = {}
        if user_id:
            params["user_id"] = user_id
        if device_id:
            params["device_id"] = device_id
        headers = {"Authorization": f"Bearer {self._as_token}"} if authenticated else {}
        async with self._session().request(
            method, self.base_url + path, json=body, params=params, headers=headers
        ) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                data = {}
            if resp.status >= 300:
                raise MatrixError(
                    resp.status, str(data.get("errcode", "M_UNKNOWN")), str(data.get("error", resp.reason))
                )
            return data

    async def versions(self) -> dict[str, Any]:
        return await self.request("GET", "/_matrix/client/versions", authenticated=False)

    async def ping(self, transaction_id: str) -> float:
        """The appservice ping (homeserver calls us back). Returns the round trip in ms."""
        data = await self.request(
            "POST",
            f"/_matrix/client/v1/appservice/{quote(self._appservice_id, safe='')}/ping",
            {"transaction_id": transaction_id},
        )
        return float(data.get("duration_ms", 0))

    async def register_appservice_user(self, localpart: str) -> bool:
        """Registers a user of our namespace. False when it already exists."""
        try:
            await self.request(
                "POST",
                "/_matrix/client/v3/register",
                {"type": "m.login.application_service", "username": localpart, "inhibit_login": True},
            )
        except MatrixError as exc:
            if exc.errcode == "M_USER_IN_USE":
                return False
            raise
        return True

    async def device_exists(self, user_id: str, device_id: str) -> bool:
        try:
            await self.request(
                "GET", f"/_matrix/client/v3/devices/{quote(device_id, safe='')}", user_id=user_id
            )
        except MatrixError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def create_device(self, localpart: str, display_name: str) -> str:
        """Creates a device with the appservice login; returns its ID (the login's token is dropped)."""
        data = await self.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.application_service",
                "identifier": {"type": "m.id.user", "user": localpart},
                "initial_device_display_name": display_name,
            },
        )
        device_id = data.get("device_id")
        if not isinstance(device_id, str):
            raise MatrixError(200, "M_UNKNOWN", "appservice login returned no device_id")
        return device_id
