"""Database URLs: parsing into a typed target, and masking passwords for logs and errors.

Accepted forms:

- ``sqlite:///abs/path.db``   (everything after ``sqlite://`` is the path; ``sqlite://rel.db`` is relative
  to the working directory)
- ``sqlite://:memory:``       (a private in-memory database, gone on close)
- ``postgresql://user:password@host:port/dbname?...`` (``postgres://`` too), handed to asyncpg as is.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

from .errors import StoreError

Backend = Literal["sqlite", "postgres"]

_PASSWORD_RE = re.compile(r"^(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/@:?#]*:)(?P<password>[^@]*)(?P<at>@)")
_QUERY_PASSWORD_RE = re.compile(r"(?P<key>[?&]password=)[^&#]*", re.IGNORECASE)


@dataclass(frozen=True)
class DatabaseUrl:
    """Where the store lives: the backend and its target (a file path, ``:memory:`` or a DSN)."""

    backend: Backend
    target: str

    @property
    def masked(self) -> str:
        """A form safe to log: the SQLite path, or the DSN with its password replaced by ``***``."""
        return mask_url(self.target) if self.backend == "postgres" else f"sqlite://{self.target}"


def mask_url(url: str) -> str:
    """Replace the password of a URL (``user:secret@`` or ``?password=secret``) by ``***``."""
    masked = _PASSWORD_RE.sub(r"\g<head>***\g<at>", url)
    return _QUERY_PASSWORD_RE.sub(r"\g<key>***", masked)


def parse_database_url(url: str) -> DatabaseUrl:
    """Parse a ``database.url`` value; raise :class:`StoreError` naming what is wrong (password masked)."""
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path:
            raise StoreError("sqlite URL without a path: use sqlite:///abs/path.db or sqlite://:memory:")
        return DatabaseUrl("sqlite", path)
    if url.startswith(("postgresql://", "postgres://")):
        return DatabaseUrl("postgres", url)
    raise StoreError(
        f"unsupported database URL {mask_url(url)!r}: expected sqlite:///path, sqlite://:memory: "
        f"or postgresql://..."
    )


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The store URL of a SQLite file (made absolute, so the working directory no longer matters)."""
    return f"sqlite://{os.path.abspath(os.fspath(path))}"
