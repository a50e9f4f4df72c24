"""Structured logs for the operator and the agent: one JSON object per line on stderr.

Each line carries ``time``, ``level``, ``logger``, ``msg``, the ``extra={...}`` fields of the call whose values are
plain JSON (tests and log pipelines read them, e.g. the agent's ``{"endpoint": "health", "port": …}``, Kopf's
``k8s_ref``; objects such as the settings Kopf attaches to every record are left out) and ``exception``.
"""

from __future__ import annotations

import json
import logging
import sys

_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({})))
_PLAIN = (str, int, float, bool, type(None), list, dict)


class JsonFormatter(logging.Formatter):
    """Renders a record as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                                   "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        line.update({k: v for k, v in vars(record).items()
                     if k not in _RECORD_FIELDS and k != "message" and isinstance(v, _PLAIN)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)  # a list or dict may still hold something else


def setup(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
