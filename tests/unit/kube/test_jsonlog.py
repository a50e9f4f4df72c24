"""The JSON log lines of the operator and the agent."""

from __future__ import annotations

import json
import logging
import sys

from secprofiles.kube.jsonlog import JsonFormatter


class Settings:
    """Stands for the settings object Kopf attaches to its records."""


def test_plain_extras_are_kept_and_objects_left_out() -> None:
    record = logging.makeLogRecord({"name": "secprofiles.agent", "levelname": "INFO", "msg": "listening %s",
                                    "args": ("now",), "endpoint": "health", "port": 8081,
                                    "k8s_ref": {"kind": "SeccompProfile", "name": "p"}, "settings": Settings()})
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "listening now" and line["logger"] == "secprofiles.agent" and line["level"] == "INFO"
    assert (line["endpoint"], line["port"], line["k8s_ref"]) == ("health", 8081, {"kind": "SeccompProfile", "name": "p"})
    assert "settings" not in line


def test_an_exception_is_one_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, exc_info=sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in line["exception"]
