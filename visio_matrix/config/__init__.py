"""Configuration: YAML file -> validated, frozen ``Config``; example and registration generation.

The only package that imports ``yaml``. Every error names its key path and all errors are
reported together (``ConfigError.errors``); unknown keys are warnings.
"""

from visio_matrix.config.errors import ConfigError
from visio_matrix.config.generate import OVERRIDES, generate_config_text
from visio_matrix.config.loader import load_config, parse_config_text
from visio_matrix.config.model import (
    AppserviceConfig,
    Config,
    CryptoConfig,
    DatabaseConfig,
    FederationConfig,
    FocusConfig,
    HomeserverConfig,
    LoggingConfig,
    MetricsConfig,
    PeerConfig,
    PolicyConfig,
    RelayConfig,
)
from visio_matrix.config.parse import SCHEMA, parse_config
from visio_matrix.config.registration import registration_dict, registration_text

__all__ = [
    "OVERRIDES",
    "SCHEMA",
    "AppserviceConfig",
    "Config",
    "ConfigError",
    "CryptoConfig",
    "DatabaseConfig",
    "FederationConfig",
    "FocusConfig",
    "HomeserverConfig",
    "LoggingConfig",
    "MetricsConfig",
    "PeerConfig",
    "PolicyConfig",
    "RelayConfig",
    "generate_config_text",
    "load_config",
    "parse_config",
    "parse_config_text",
    "registration_dict",
    "registration_text",
]
