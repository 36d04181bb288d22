"""One root exception for forecastd, with one small subclass per domain.

Bad *input records* are never exceptions: they go to the dead-letter topic. The
exceptions here are for conditions an operator must fix (a bad config, a broker that
refuses writes); the daemon exits non-zero on them and lets its supervisor restart it.
"""

from __future__ import annotations


class ForecastdError(Exception):
    """Root of every error forecastd raises on purpose."""


class ConfigError(ForecastdError):
    """The configuration is invalid; the message names the key and what to fix."""


class BrokerError(ForecastdError):
    """The broker failed to take a write or a commit after the client's retries."""


class DatasetError(ForecastdError):
    """A replay input (file or bundled dataset) cannot be read as asked."""
