"""The composition root: builds every component of one service instance, starts and stops them.

Start order: store -> bot device (keys, first /sync) -> relay -> conference hub (+ its listeners:
room status, room widget) -> transports and commands (DM calls, guests, room bot, federation links
when ``federation.peers`` is set, to-device calls)
-> housekeeping -> focus (token service, LiveKit signaling) -> HTTP listener -> appservice ping.
Stop order is the reverse. Nothing else in the package builds components or holds globals.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from visio_matrix.appservice.homeserver import HomeserverClient, MatrixError
from visio_matrix.appservice.http import build_routes, matrix_errors_middleware
from visio_matrix.appservice.transactions import TransactionProcessor
from visio_matrix.calls.direct_rooms import BotRooms
from visio_matrix.calls.dm_calls import DmCalls
from visio_matrix.calls.federation import FederationLinks
from visio_matrix.calls.hub import ConferenceHub
from visio_matrix.calls.room_access import BotRoomAccess
from visio_matrix.calls.room_bot import RoomBot, notice
from visio_matrix.calls.room_status import RoomStatus
from visio_matrix.calls.room_widget import RoomWidget
from visio_matrix.calls.todevice import ToDeviceCalls
from visio_matrix.clock import Clock, SystemClock
from visio_matrix.config import Config
from visio_matrix.crypto.bot_device import BotDevice
from visio_matrix.crypto.peer_trust import PeerTrust
from visio_matrix.focus.livekit_signaling import LiveKitSignaling, livekit_routes
from visio_matrix.focus.tokens import TokenService, focus_routes, token_service_from_config
from visio_matrix.housekeeping import Housekeeping
from visio_matrix.metrics import Metrics
from visio_matrix.relay import Relay, RelayOptions
from visio_matrix.storage import Store, StoreError, open_store, sqlite_url
from visio_matrix.web.guest_api import GuestService, guest_routes
from visio_matrix.web.pages import page_routes
from visio_matrix.web.widget import widget_state_content, widget_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PingResult:
    ok: bool
    detail: str
    duration_ms: float | None = None


class Service:
    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.metrics = Metrics()
        self._store: Store | None = None
        self._homeserver: HomeserverClient | None = None
        self._device: BotDevice | None = None
        self._bot: RoomBot | None = None
        self._relay: Relay | None = None
        self._hub: ConferenceHub | None = None
        self._status: RoomStatus | None = None
        self._todevice: ToDeviceCalls | None = None
        self._federation: FederationLinks | None = None
        self._tokens: TokenService | None = None
        self._dm: DmCalls | None = None
        self._signaling: LiveKitSignaling | None = None
        self._widget: RoomWidget | None = None
        self._guests: GuestService | None = None
        self._runner: web.AppRunner | None = None
        self._housekeeping: Housekeeping | None = None
        self.ping_result: PingResult | None = None
        self.bot_user_id = config.appservice.bot_user_id(config.homeserver.server_name)

    @property
    def store(self) -> Store:
        assert self._store is not None, "service not started"
        return self._store

    @property
    def device(self) -> BotDevice:
        assert self._device is not None, "service not started"
        return self._device

    @property
    def hub(self) -> ConferenceHub:
        assert self._hub is not None, "service not started"
        return self._hub

    @property
    def relay(self) -> Relay:
        assert self._relay is not None, "service not started"
        return self._relay

    @property
    def dm(self) -> DmCalls:
        assert self._dm is not None, "service not started"
        return self._dm

    @property
    def guests(self) -> GuestService:
        assert self._guests is not None, "service not started, or guests are disabled"
        return self._guests

    @property
    def federation(self) -> FederationLinks:
        assert self._federation is not None, "service not started, or no federation.peers configured"
        return self._federation

    @property
    def bot(self) -> RoomBot:
        assert self._bot is not None, "service not started"
        return self._bot

    async def start(self) -> None:
        started = time.monotonic()
        cfg = self.config
        try:
            db = cfg.database
            self._store = await open_store(sqlite_url(db.sqlite_path) if db.sqlite_path else db.url)
            self._homeserver = HomeserverClient(
                cfg.homeserver.url, cfg.appservice.as_token, cfg.appservice.id
            )
            self._device = BotDevice(
                homeserver=self._homeserver,
                as_token=cfg.appservice.as_token,
                user_id=self.bot_user_id,
                store_dir=cfg.crypto.store_path,
                pickle_key=cfg.crypto.pickle_key,
                state=self._store,
                metrics=self.metrics,
            )
            await self._device.start()
            await self._set_display_name()
            self._relay = Relay(
                RelayOptions(
                    host_addresses=cfg.relay.public_addresses or (cfg.relay.bind_address,),
                    udp_port_min=cfg.relay.udp_port_min,
                    udp_port_max=cfg.relay.udp_port_max,
                ),
                self.clock,
            )
            self._hub = ConferenceHub(
                self._relay,
                self._relay.events,
                self._store,
                BotRoomAccess(self._device),
                cfg.policy,
                self.clock,
                self.metrics,
            )
            self._status = RoomStatus(
                self._device,
                self._store,
                self._hub,
                {"user_id": self.bot_user_id, "device_id": self._device.device_id},
            )
            self._hub.add_listener(self._status)
            if cfg.focus.enabled:
                page = cfg.focus.public_url
                self._widget = RoomWidget(
                    self._device,
                    lambda room_id: widget_state_content(
                        widget_url(page, room_id), "Visio", widget_id="visio-call"
                    ),
                )
                self._hub.add_listener(self._widget)
            await self._hub.start()
            self._status.start()
            self._dm = DmCalls(BotRooms(self._device), self._hub, self._store, cfg.policy, self.clock)
            if cfg.guests.enabled and cfg.focus.enabled:  # guest call tokens are focus tokens
                device = self._device

                async def post_notice(room_id: str, text: str) -> None:
                    await device.send(room_id, "m.room.message", notice(text))

                self._guests = GuestService(cfg.guests, cfg.focus, self.clock, notify=post_notice)
                await self._guests.start()
            self._bot = RoomBot(
                self._device,
                self._store,
                cfg.policy,
                self.clock,
                self.metrics,
                call_events=self._dm,
                conferences=self._hub,
                guests=self._guests,
            )
            await self._bot.start()
            await self._dm.start(self._hub.take_restorable("dm"))
            if cfg.federation.peers:
                self._federation = FederationLinks(
                    self._device.to_device,
                    self._hub,
                    PeerTrust(cfg.federation, self._device, self.clock),
                    self._device,
                    BotRoomAccess(self._device),
                    cfg.policy,
                    cfg.federation,
                    cfg.homeserver.server_name,
                    self.bot_user_id,
                    self._device.device_id,
                    self.clock,
                    self.metrics,
                )
                self._hub.add_listener(self._federation)
                self._federation.start()
            self._todevice = ToDeviceCalls(
                self._device.to_device,
                self._hub,
                self.bot_user_id,
                self._device.device_id,
                self.clock,
                handled_elsewhere=self._federation.is_peer_bot if self._federation else None,
            )
            self._todevice.start()
            self._housekeeping = Housekeeping(self._store, self.clock)
            self._housekeeping.start()
            processor = TransactionProcessor(
                self._store, self._bot, self.clock, self.metrics, self.bot_user_id
            )

            if cfg.focus.enabled:
                self._tokens = token_service_from_config(
                    cfg, self._store, BotRoomAccess(self._device), self.clock
                )
                # Registers itself as a hub listener: LiveKit clients see everyone in the room's call.
                self._signaling = LiveKitSignaling(self._hub, cfg.focus.signing_keys(), self.clock)
            app = web.Application(middlewares=[matrix_errors_middleware])
            app.add_routes(build_routes(processor, cfg.appservice.hs_token))
            if self._tokens is not None:
                app.add_routes(focus_routes(self._tokens))
            if self._signaling is not None:
                app.add_routes(page_routes())  # the browser call page, /call/ (503 text if not built)
                app.add_routes(livekit_routes(self._signaling))
                # Open WebSockets would otherwise hold runner.cleanup() until aiohttp's timeout.
                app.on_shutdown.append(self._signaling.on_app_shutdown)
            if self._guests is not None:
                app.add_routes(guest_routes(self._guests))
            app.add_routes(
                [web.get("/health/live", self._live), web.get("/health/ready", self._ready)]
                + ([web.get("/metrics", self._metrics_route)] if cfg.metrics.enabled else [])
            )
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, cfg.appservice.host, cfg.appservice.port).start()
            log.info("appservice listening on http://%s:%d", cfg.appservice.host, cfg.appservice.port)
            self.ping_result = await self._ping()
        except BaseException:
            await self.stop()
            raise
        log.info("visio-matrix started in %.2fs as %s", time.monotonic() - started, self.bot_user_id)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._signaling is not None:
            await self._signaling.close()
            self._signaling = None
        if self._tokens is not None:
            await self._tokens.close()
            self._tokens = None
        if self._housekeeping is not None:
            await self._housekeeping.stop()
            self._housekeeping = None
        if self._guests is not None:
            await self._guests.stop()
            self._guests = None
        if self._bot is not None:
            await self._bot.stop()
            self._bot = None
        if self._dm is not None:
            await self._dm.stop()
            self._dm = None
        if self._federation is not None:
            await self._federation.stop()  # tells linked ministries first: they retry until we are back
            self._federation = None
        if self._todevice is not None:
            await self._todevice.stop()
            self._todevice = None
        if self._widget is not None:
            await self._widget.stop()
            self._widget = None
        if self._status is not None:
            await self._status.stop()
            self._status = None
        if self._hub is not None:
            await self._hub.stop()
            self._hub = None
        if self._relay is not None:
            await self._relay.close()
            self._relay = None
        if self._device is not None:
            await self._device.stop()
            self._device = None
        if self._homeserver is not None:
            await self._homeserver.close()
            self._homeserver = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def _set_display_name(self) -> None:
        assert self._homeserver is not None
        try:
            await self._homeserver.request(
                "PUT",
                f"/_matrix/client/v3/profile/{self.bot_user_id}/displayname",
                {"displayname": self.config.appservice.bot_displayname},
                user_id=self.bot_user_id,
            )
        except MatrixError as exc:
            log.warning("could not set the bot's display name: %s", exc)

    async def _ping(self) -> PingResult:
        assert self._homeserver is not None
        txn = f"visio-startup-{uuid.uuid4().hex[:8]}"
        try:
            duration = await self._homeserver.ping(txn)
        except MatrixError as exc:
            log.error(
                "appservice ping FAILED: the homeserver could not reach us at %s (%s). Check appservice.public_url "
                "and that the registration file is loaded by the homeserver.",
                self.config.appservice.public_url,
                exc,
            )
            return PingResult(False, str(exc))
        except OSError as exc:
            log.error(
                "appservice ping FAILED: homeserver %s unreachable (%s)", self.config.homeserver.url, exc
            )
            return PingResult(False, str(exc))
        log.info("appservice ping OK: homeserver <-> service round trip %.0f ms", duration)
        return PingResult(True, "ok", duration)

    # ---- health and metrics -----------------------------------------------------------------

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def _ready(self, request: web.Request) -> web.Response:
        checks: dict[str, str] = {}
        try:
            await self.store.ping()
            checks["database"] = "ok"
        except StoreError as exc:
            checks["database"] = f"error: {exc}"
        try:
            assert self._homeserver is not None
            await asyncio.wait_for(self._homeserver.versions(), 5)
            checks["homeserver"] = "ok"
        except (MatrixError, OSError, TimeoutError) as exc:
            checks["homeserver"] = f"error: {exc or type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return web.json_response(
            {"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503
        )

    async def _metrics_route(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")


async def run_service(config: Config) -> int:
    """Runs until SIGINT/SIGTERM, then stops every component. Returns the process exit code."""
    service = Service(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
    except (StoreError, MatrixError, OSError) as exc:
        log.error("could not start: %s", exc)
        return 1
    await stop.wait()
    log.info("stopping")
    await service.stop()
    log.info("stopped")
    return 0
