"""Prometheus metrics of one service instance (its own registry: no module-level state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.transactions = Counter(
            "visio_appservice_transactions_total",
            "Appservice transactions received, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.events = Counter(
            "visio_appservice_events_total",
            "Room events received in transactions, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.commands = Counter(
            "visio_commands_total",
            "!visio commands handled, by command and result",
            ["command", "result"],
            registry=self.registry,
        )
        self.decryption = Counter(
            "visio_decryption_total",
            "Encrypted room events, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.active_conferences = Gauge(
            "visio_active_conferences", "Conferences currently active", registry=self.registry
        )
        self.federation_links = Gauge(
            "visio_federation_links",
            "Links of calls with other ministries' relays, by peer server and state",
            ["server", "state"],
            registry=self.registry,
        )
        self.federation_link_failures = Counter(
            "visio_federation_link_failures_total",
            "Links with other ministries lost or not answered (failed) or refused by a policy (refused)",
            ["server", "kind"],
            registry=self.registry,
        )
        self.sync_latency = Histogram(
            "visio_bot_sync_seconds", "Duration of the bot device's /sync requests", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
