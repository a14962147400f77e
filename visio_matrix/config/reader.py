"""Typed reading of one YAML mapping with every problem recorded against its key path.

``Problems`` collects errors and warnings for the whole file; ``Section`` reads the keys of one
mapping (``appservice``, ``relay``, ...). A getter always returns a usable value (the default when
the key is absent or wrong) so that parsing goes on and every mistake in the file gets reported;
``Section.ok(key)`` tells whether the value read is the one the admin wrote. Secret values are
never echoed in messages.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path

from visio_matrix.config.errors import Issue

MIN_SECRET_LENGTH = 16


class Problems:
    """Every error and warning found while reading one configuration."""

    def __init__(self) -> None:
        self.errors: list[Issue] = []
        self.warnings: list[Issue] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(Issue(path, message))

    def warn(self, path: str, message: str, *, prefix: bool = True) -> None:
        self.warnings.append(Issue(path, message, prefix=prefix))

    def errors_at(self, path: str) -> bool:
        return any(e.path == path for e in self.errors)


def describe(value: object) -> str:
    """How a wrong value is shown in a message: short, YAML-flavoured, never a whole document."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def describe_secret(value: object) -> str:
    """Like ``describe`` but never shows the value itself."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number (put the secret in quotes)"
    return (
        describe(value) if value is None or isinstance(value, Mapping | list) else f"a {type(value).__name__}"
    )


def suggest(key: str, known: Iterable[str], prefix: str = "") -> str:
    matches = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{matches[0]}'?)" if matches else ""


class Section:
    """The keys of one mapping at ``path`` (``""`` for the top level)."""

    def __init__(self, problems: Problems, path: str, data: object, known: Iterable[str]) -> None:
        self.problems = problems
        self.path = path
        self.known = tuple(known)
        if data is None:
            # `metrics:` with nothing under it: an empty section, all defaults.
            data = {}
        if not isinstance(data, Mapping):
            problems.error(
                path, f"expected a mapping of keys ({', '.join(self.known)}), got {describe(data)}"
            )
            data = {}
        self.data: Mapping[object, object] = data

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> object:
        return self.data.get(key)

    def ok(self, key: str) -> bool:
        return not self.problems.errors_at(self.key_path(key))

    def error(self, key: str, message: str) -> None:
        self.problems.error(self.key_path(key), message)

    def warn_unknown(self) -> None:
        for key in self.data:
            if key not in self.known:
                name = key if isinstance(key, str) else repr(key)
                path = self.key_path(str(name))
                self.problems.warn(
                    path,
                    f"unknown key '{path}'{suggest(str(name), self.known, f'{self.path}.' if self.path else '')}; it is ignored",
                    prefix=False,
                )

    def section(self, key: str, known: Iterable[str]) -> Section:
        return Section(self.problems, self.key_path(key), self.data.get(key), known)

    # -- scalar getters ---------------------------------------------------------------------------

    def string(self, key: str, default: str | None = None, *, what: str = "a string") -> str:
        """A non-empty string; ``default=None`` makes the key required."""
        if key not in self.data or self.data[key] is None:
            if default is None:
                self.error(key, f"required: {what}")
                return ""
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            self.error(key, f"expected {what}, got {describe(value)}")
            return default or ""
        return value.strip()

    def integer(
        self,
        key: str,
        default: int | None,
        *,
        low: int | None = None,
        high: int | None = None,
        what: str = "",
    ) -> int:
        if not what and low is not None and high is not None:
            what = f"an integer {low}-{high}"
        elif not what:
            what = f"an integer >= {low}" if low is not None else "an integer"
        if key not in self.data or self.data[key] is None:
            if default is None:
                self.error(key, f"required: {what}")
                return 0
            return default
        value = self.data[key]
        # YAML `true` is a Python bool, which is an int: refuse it explicitly.
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            self.error(key, f"expected {what}, got {describe(value)}")
            return default if default is not None else 0
        return value

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            self.error(key, f"expected true or false, got {describe(value)}")
            return default
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str, *, upper: bool = False) -> str:
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        normal = value.strip().upper() if upper and isinstance(value, str) else value
        if normal not in choices:
            self.error(key, f"expected one of {', '.join(choices)}, got {describe(value)}")
            return default
        assert isinstance(normal, str)
        return normal

    def string_list(
        self, key: str, default: list[str] | None, *, what: str = "a list of strings"
    ) -> list[tuple[int, str]]:
        """``(index, item)`` for each valid item of a list of non-empty strings (a single string is a
        one-item list); invalid items are reported under ``key[index]`` and left out."""
        if key not in self.data or self.data[key] is None:
            if default is None:
                self.error(key, f"required: {what}")
                return []
            return list(enumerate(default))
        value = self.data[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.error(key, f"expected {what}, got {describe(value)}")
            return list(enumerate(default or []))
        items: list[tuple[int, str]] = []
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.problems.error(
                    f"{self.key_path(key)}[{index}]", f"expected a string, got {describe(item)}"
                )
            else:
                items.append((index, item.strip()))
        return items

    def path_value(self, key: str, default: str, base_dir: Path) -> Path:
        """A filesystem path; relative paths are taken from the configuration file's folder."""
        text = self.string(key, default, what="a path")
        return base_dir / Path(text).expanduser()

    def secret(self, key: str, base_dir: Path, *, file_key: str | None = None) -> str:
        """Exactly one of ``key`` (inline) or ``key_file`` (a file holding it; content stripped)."""
        file_key = file_key or f"{key}_file"
        inline, from_file = self.has(key) and self.raw(key) is not None, self.has(file_key)
        if from_file and self.raw(file_key) is None:
            from_file = False
        if inline and from_file:
            self.error(key, f"set either {self.key_path(key)} or {self.key_path(file_key)}, not both")
            return ""
        if not inline and not from_file:
            self.error(
                key, f"required: set {self.key_path(key)} or {self.key_path(file_key)} (a file holding it)"
            )
            return ""
        if inline:
            value = self.raw(key)
            if not isinstance(value, str):
                self.error(key, f"expected a string, got {describe_secret(value)}")
                return ""
            return self._check_secret(key, value.strip(), source="")
        name = self.raw(file_key)
        if not isinstance(name, str) or not name.strip():
            self.error(file_key, f"expected a path, got {describe(name)}")
            return ""
        file_path = base_dir / Path(name.strip()).expanduser()
        try:
            text = file_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            self.error(file_key, f"cannot read {str(file_path)!r}: {reason}")
            return ""
        return self._check_secret(file_key, text.strip(), source=f" in {str(file_path)!r}")

    def _check_secret(self, key: str, value: str, *, source: str) -> str:
        if len(value) < MIN_SECRET_LENGTH:
            self.error(key, f"too short{source}: at least {MIN_SECRET_LENGTH} characters, got {len(value)}")
            return ""
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            self.error(key, f"must not contain spaces or control characters{source}")
            return ""
        return value
