"""Configuration problems: the error raised to the admin and the issue records collected on the way.

Validation never stops at the first problem: every section is read, each problem becomes an
``Issue`` naming its key path, and all of them are reported together in one ``ConfigError``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Issue:
    """One problem (or warning) found at a key path such as ``appservice.port``."""

    path: str
    message: str
    line: int | None = None
    # False when the message already names the path (``unknown key 'relay.bind_adress'``).
    prefix: bool = True

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        if self.prefix and self.path:
            return f"{self.path}: {self.message}{where}"
        return f"{self.message}{where}"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds every problem, each ``"key.path: message"``."""

    def __init__(self, errors: list[str], warnings: list[str] | None = None) -> None:
        self.errors = list(errors)
        # Warnings found along the way (unknown keys...), worth showing next to the errors.
        self.warnings = list(warnings or [])
        count = len(self.errors)
        header = f"{count} error{'s' if count != 1 else ''} in the configuration:"
        super().__init__("\n".join([header, *(f"  {e}" for e in self.errors)]))
