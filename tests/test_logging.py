"""The operator's log lines cannot be forged: whatever a logged value holds (a pipeline name from a request's
path, a pipeline's answer, a header), one record is one line of the plain-text log, with control characters
escaped; a traceback keeps its line breaks. JSON logs are escaped by JSON itself."""

from __future__ import annotations

import io
import json
import logging

import pytest

from pipeline_operator.cli import EscapingFormatter, escape_controls

from .operator_harness import wait_for
from .test_api import http_json
from .test_api_hardening import ready

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
HOSTILE = "a\nFAKE LINE\r\x1b[2J\x00\x7f\x85\x9b\u2028\u2029\tz"


def record(message: str, *args, exc_info=None, name: str = "pipeline_operator.audit") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, message, args, exc_info)


def test_control_characters_are_escaped_and_nothing_else_is():
    assert escape_controls(HOSTILE) == "a\\nFAKE LINE\\r\\x1b[2J\\x00\\x7f\\x85\\x9b\\u2028\\u2029\\tz"
    ordinary = "pipeline \"orders\" in data-team: 200 success, é ü 日本 \\n (a backslash stays one)"
    assert escape_controls(ordinary) == ordinary


def test_the_message_and_its_arguments_are_one_line():
    line = EscapingFormatter(FORMAT).format(record("%s start %s/%s: %d", "(unauthenticated)", "ns", HOSTILE, 404))
    assert "\n" not in line and "\r" not in line and len(line.splitlines()) == 1
    assert line.endswith("pipeline_operator.audit: (unauthenticated) start ns/a\\nFAKE LINE\\r\\x1b[2J\\x00\\x7f"
                         "\\x85\\x9b\\u2028\\u2029\\tz: 404")
    # A message that is not a format string, and arguments of any type.
    assert EscapingFormatter(FORMAT).format(record(HOSTILE)).endswith(": " + escape_controls(HOSTILE))
    assert EscapingFormatter(FORMAT).format(record("%r", {"k": "v\n"})).endswith(": {'k': 'v\\n'}")


def test_a_traceback_keeps_its_lines_and_its_exceptions_messages_are_escaped():
    try:
        try:
            raise KeyError("inner\nFAKE LINE")
        except KeyError as exc:
            error = ValueError(f"pipeline {HOSTILE}")
            error.add_note("note\nFAKE NOTE")
            raise error from exc
    except ValueError:
        import sys
        info = sys.exc_info()
    text = EscapingFormatter(FORMAT).format(record("failed: %s", "x\ny", exc_info=info))
    lines = text.split("\n")
    assert lines[0].endswith("pipeline_operator.audit: failed: x\\ny")
    assert lines[1] == "Traceback (most recent call last):"  # the traceback, line by line, as Python writes it
    assert any(line.startswith('  File "') for line in lines)
    assert "The above exception was the direct cause of the following exception:" in lines
    assert "KeyError: 'inner\\nFAKE LINE'" in lines
    assert f"ValueError: pipeline {escape_controls(HOSTILE)}" in lines
    assert "note\\nFAKE NOTE" in lines
    assert not any(line.startswith("FAKE") for line in lines)
    assert all(c == "\n" or c.isprintable() or c == " " for c in text), text


def test_json_logs_are_one_line_per_record_and_keep_the_value():
    from pythonjsonlogger.json import JsonFormatter
    line = JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s").format(record("%s", HOSTILE))
    assert len(line.split("\n")) == 1 and "\u2028" not in line and "\x85" not in line and "\r" not in line
    assert json.loads(line)["message"] == HOSTILE


def test_the_operators_handlers_escape(monkeypatch):
    """setup_logging installs the escaping formatter for plain text, and JSON's for --log-format json."""
    from pipeline_operator.cli import setup_logging
    from pipeline_operator.settings import OperatorSettings
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    saved = logging.root.handlers[:], logging.root.level
    try:
        setup_logging(OperatorSettings())
        logging.getLogger("pipeline_operator.audit").info("%s", HOSTILE)
        setup_logging(OperatorSettings(log_format="json"))
        logging.getLogger("pipeline_operator.audit").info("%s", HOSTILE)
    finally:
        logging.root.handlers[:], _ = saved
        logging.root.setLevel(saved[1])
    plain, as_json = stream.getvalue().split("\n")[:2]
    assert plain.endswith("pipeline_operator.audit: " + escape_controls(HOSTILE))
    assert json.loads(as_json)["message"] == HOSTILE and stream.getvalue().count("\n") == 2


@pytest.mark.apiserver
def test_a_pipeline_name_with_a_newline_is_one_audit_line(operators, namespace):
    """GET /v0/pipelines/a%0aFAKE%20LINE and the like: the name is decoded from the path and audited as it is
    asked for; the plain-text log gets one line for it, with the line break escaped."""
    op = operators(namespace, "--api-auth", "none", "--api-default-namespace", namespace)
    ready(op)
    status, body = http_json(f"{op.api_url}/v0/pipelines/a%0aFAKE%20LINE%0d%e2%80%a8X%c2%85Y/start", "POST")
    assert status == 404 and body["error_code"] == "UnknownPipelineName", body

    def audited() -> list[str]:
        return [line for line in op.log().split("\n") if "pipeline_operator.audit" in line]
    lines = wait_for("the audit line", audited, 30, operator=op)
    assert len(lines) == 1, lines
    assert lines[0].endswith(f": anonymous start {namespace}/a\\nFAKE LINE\\r\\u2028X\\x85Y: 404 refused")
    assert not any(line.startswith("FAKE LINE") for line in op.log().split("\n"))
