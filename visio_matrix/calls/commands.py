"""Parsing of ``!visio`` chat commands (pure)."""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "!visio"
KNOWN = ("help", "start", "status", "stop", "join", "ring", "link", "admit", "deny")


@dataclass(frozen=True)
class Command:
    name: str  # one of KNOWN, or "unknown"
    args: tuple[str, ...] = ()
    raw_name: str = ""


def parse_command(body: object) -> Command | None:
    """``None`` when the message is not addressed to the bot at all.

    ``!visio`` alone means help; an unknown subcommand gives ``Command("unknown")`` so the bot can
    answer it instead of staying silent.
    """
    if not isinstance(body, str):
        return None
    words = body.strip().split()
    if not words or words[0].lower() != PREFIX:
        return None
    if len(words) == 1:
        return Command("help")
    name = words[1].lower()
    if name not in KNOWN:
        return Command("unknown", tuple(words[2:]), raw_name=words[1])
    return Command(name, tuple(words[2:]), raw_name=words[1])


HELP_TEXT = (
    "Visio commands:\n"
    "  !visio start   start a call in this room\n"
    "  !visio status  show the call of this room\n"
    "  !visio stop    end the call of this room\n"
    "  !visio join    join the call of this room from your direct chat with me (I call you there)\n"
    "  !visio join <room>  in our direct chat: choose which room's call you join when you call me\n"
    "  !visio ring    call every member of this room who is not in its call yet\n"
    "  !visio link    post a link for guests without a Matrix account (they wait to be let in)\n"
    "  !visio admit <name>  let a waiting guest into the call\n"
    "  !visio deny <name>   turn a waiting guest away\n"
    "  !visio help    this text"
)
