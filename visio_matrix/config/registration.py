"""The appservice registration file that Synapse loads (``app_service_config_files``).

Pure mapping from ``Config``; ``registration_text`` renders it as YAML.
"""

from __future__ import annotations

import yaml

from visio_matrix.config.model import Config


def registration_dict(config: Config) -> dict[str, object]:
    """The registration: tokens, our URL, and the exclusive user namespace (bot + virtual users)."""
    appservice, server_name = config.appservice, config.homeserver.server_name
    return {
        "id": appservice.id,
        "url": appservice.public_url,
        "as_token": appservice.as_token,
        "hs_token": appservice.hs_token,
        # Not the bot: Synapse refuses /sync to an appservice's sender user, and the bot's E2EE
        # device needs /sync on stock homeservers (to-device room keys). The sender is an unused
        # user of our exclusive namespace.
        "sender_localpart": f"{appservice.user_prefix}appservice",
        "namespaces": {
            "users": [
                {"exclusive": True, "regex": appservice.bot_user_regex(server_name)},
                {"exclusive": True, "regex": appservice.virtual_user_regex(server_name)},
            ],
            "aliases": [],
            "rooms": [],
        },
        # Synapse rate-limits appservice users unless told otherwise (it defaults to true).
        "rate_limited": False,
        # Typing/receipts/presence and, with MSC2409, to-device messages in transactions.
        "receive_ephemeral": True,
        "de.sorunome.msc2409.push_ephemeral": True,
        # Device lists and one-time-key counts in transactions, when the homeserver enables MSC3202.
        "org.matrix.msc3202": True,
        # Devices are created by appservice login (stock Synapse), not by MSC4190 device management.
        "io.element.msc4190": False,
    }


def registration_text(config: Config) -> str:
    header = (
        "# Appservice registration for visio-matrix, generated from its configuration.\n"
        "# Add this file to `app_service_config_files:` in Synapse's homeserver.yaml and restart Synapse.\n"
        "# It holds the tokens: keep it private (mode 0600).\n"
    )
    return header + yaml.safe_dump(registration_dict(config), sort_keys=False, default_flow_style=False)
