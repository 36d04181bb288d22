"""How the daemon's log lines look: text for a terminal, or one JSON object a line.

``processing.log_format: json`` is for log pipelines that parse JSON (Loki, Elastic,
Cloud Logging, ``kubectl logs | jq``): each line holds ``time`` (UTC, ISO 8601 with
milliseconds), ``level``, ``logger``, ``message``, ``worker`` (a worker process's
index, with ``processing.workers`` above 1) and, when the line comes with one,
``exception`` (the formatted traceback). Text stays the default: a person reading a
terminal reads it best. Both go to standard error, as before; what is logged does
not change, only its form (and no setting's secret reaches a log in either).

>>> record = logging.LogRecord("forecastd", logging.INFO, __file__, 1, "hi %s", ("u",), None)
>>> record.created = 0.0
>>> print(JsonFormatter(worker=2).format(record))
{"time":"1970-01-01T00:00:00.000Z","level":"INFO","logger":"forecastd","message":"hi u","worker":2}
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from service.config import Settings


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON (module docstring)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            line["worker"] = self._worker
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def configure(settings: Settings, worker: int | None = None) -> None:
    """The root logger at ``processing.log_level``, in ``processing.log_format``, on
    standard error; ``worker``: the index of a worker process, named in each line."""
    handler = logging.StreamHandler()
    if settings.processing.log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        who = "" if worker is None else f"worker-{worker} "
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s")
        )
    logging.basicConfig(level=settings.processing.log_level, handlers=[handler])
