"""Reading the configuration file: YAML syntax, line numbers for messages, duplicate keys.

The only place (with ``generate`` and ``registration``) that touches YAML. The document is
composed into nodes first so that every error and warning can point at its line.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from visio_matrix.config.errors import ConfigError, Issue
from visio_matrix.config.model import Config
from visio_matrix.config.parse import raise_for, validate


def load_config(path: Path) -> tuple[Config, list[str]]:
    """Read and validate ``path``; returns ``(config, warnings)`` or raises ``ConfigError``.

    Relative paths inside the file (database, key store, ``*_file`` secrets) are taken from the
    folder holding the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{path}: cannot read the configuration file: {reason}"]) from exc
    return parse_config_text(text, path.absolute().parent, name=str(path))


def parse_config_text(text: str, base_dir: Path, *, name: str = "<config>") -> tuple[Config, list[str]]:
    """Like ``load_config`` for YAML text already in memory (``name`` prefixes syntax errors)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([f"{name}: {where}invalid YAML: {problem}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{name}: invalid YAML: {exc}"]) from exc
    finally:
        loader.dispose()

    lines: dict[str, int] = {}
    duplicates: list[Issue] = []
    if node is not None:
        lines[""] = node.start_mark.line + 1
        _index(node, "", lines, duplicates)
    config, problems = validate(data, base_dir)
    errors = [_with_line(issue, lines) for issue in problems.errors]
    warnings = [*duplicates, *(_with_line(w, lines) for w in problems.warnings)]
    raise_for(problems, errors, warnings)
    assert config is not None
    return config, [str(w) for w in warnings]


def _index(node: yaml.Node, prefix: str, lines: dict[str, int], duplicates: list[Issue]) -> None:
    """Record the line of every key path under ``node``, and keys written twice in one mapping."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            line = key_node.start_mark.line + 1
            if path in seen:
                duplicates.append(
                    Issue(
                        path,
                        f"written twice (lines {seen[path]} and {line}); the last one is used",
                        line=None,
                    )
                )
            seen[path] = line
            lines[path] = line
            _index(value_node, path, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = f"{prefix}[{index}]"
            lines[path] = item.start_mark.line + 1
            _index(item, path, lines, duplicates)


def _with_line(issue: Issue, lines: dict[str, int]) -> Issue:
    """Attach the line of the key, or of its closest written parent when the key is missing."""
    path = issue.path
    while True:
        if path in lines:
            return Issue(issue.path, issue.message, line=lines[path], prefix=issue.prefix)
        if not path:
            return issue
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
