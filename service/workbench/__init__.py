"""The workbench: offline reports, tuning, config checks and explanations, all driven
through the pipeline the daemon runs (:mod:`service.backtest`), so that what a team
measures offline is what it gets live.

Modules with one job each: :mod:`.check` (``forecastd check``), :mod:`.collect` (every
scored prediction with its key, time and truth), :mod:`.analysis` (figures and error
analysis), :mod:`.plots` and :mod:`.report` (the report folder), :mod:`.explain`
(feature attributions) and :mod:`.tune` (``forecastd tune``). The heavy dependencies
(matplotlib, optuna, captum) come with the ``workbench`` extra; :func:`require` turns
a missing one into a one-line error naming the extra.
"""

from __future__ import annotations

import importlib.util

from service.errors import ConfigError

EXTRA_HINT = "pip install 'forecastd[workbench]'"


def require(*modules: str) -> None:
    """Raise :class:`ConfigError` (exit 2, one line) unless every module imports.

    Checked up front, so that a long replay never fails at its end for want of a
    plotting library."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"this command needs the workbench extra ({', '.join(missing)} missing): {EXTRA_HINT}"
        )
