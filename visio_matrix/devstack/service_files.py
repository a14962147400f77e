"""Writes a visio-matrix config and its appservice registration for a local homeserver.

Used by ``scripts/demo`` and the integration tests, through the same code paths an admin uses
(``generate-config`` text, then ``load_config`` and the registration generator).
"""

from __future__ import annotations

import os
from pathlib import Path

from visio_matrix.config import generate_config_text, load_config, registration_text


def write_service_files(
    workdir: Path,
    *,
    homeserver_url: str,
    server_name: str,
    port: int,
    database_url: str | None = None,
    **overrides: object,
) -> tuple[Path, Path]:
    """Creates ``config.yaml`` (kept if it exists, so secrets and keys survive restarts) and
    ``registration.yaml`` in ``workdir``. Returns both paths."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    if not config_path.exists():
        text = generate_config_text(
            homeserver_url=homeserver_url,
            server_name=server_name,
            port=port,
            database_url=database_url,
            **overrides,
        )
        config_path.write_text(text)
        os.chmod(config_path, 0o600)
    config, _ = load_config(config_path)
    registration_path = workdir / "registration.yaml"
    registration_path.write_text(registration_text(config))
    os.chmod(registration_path, 0o600)
    return config_path, registration_path
