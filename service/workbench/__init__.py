"""The workbench: offline reports, tuning, config checks and explanations, all driven
through the pipeline the daemon runs (:mod:`service.tools.backtest`), so that what a team
measures offline is what it gets live.

Modules with one job each: :mod:`.check` (``forecastd check``), :mod:`.collect` (every
scored prediction with its key, time and truth), :mod:`.analysis` (figures and error
analysis), :mod:`.plots` and :mod:`.report` (the report folder), :mod:`.explain`
(feature attributions) and :mod:`.tune` (``forecastd tune``). The heavy dependencies
(matplotlib, optuna) come with the ``workbench`` extra; the commands check for it
first (:func:`service.extras.require`), so a missing one is a one-line error naming it.
"""

from __future__ import annotations
