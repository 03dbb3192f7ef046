"""Log lines of the long-running commands: text or JSON, and never a private key."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meshplane.controlplane import logs
from meshplane.controlplane.cli import main
from meshplane.injector import pki

LOGGER = "meshplane.test"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A stream to log to; the root logger's handlers and level are put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield io.StringIO()
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="module")
def key_pem() -> str:
    return pki.PrivateKey.generate().pem().reveal().decode()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_time_level_logger_and_message(stream: io.StringIO) -> None:
    logs.configure(fmt="json", level="info", stream=stream)
    logging.getLogger(LOGGER).info("proxy %s connected", "web-1")
    logging.getLogger(LOGGER).error("second")
    first, second = json_lines(stream)
    assert {k: first[k] for k in ("level", "logger", "message")} == {
        "level": "INFO", "logger": LOGGER, "message": "proxy web-1 connected"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert abs(datetime.fromisoformat(first["time"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert second["level"] == "ERROR"


def test_extra_fields_become_fields_of_the_line(stream: io.StringIO) -> None:
    logs.configure(fmt="json", level="info", stream=stream)
    logging.getLogger(LOGGER).info("pushed", extra={"proxy": "web-1", "types": ["CDS", "EDS"], "count": 2,
                                                    "level": "mine", "when": datetime(2026, 1, 1, tzinfo=UTC)})
    [line] = json_lines(stream)
    assert (line["proxy"], line["types"], line["count"]) == ("web-1", ["CDS", "EDS"], 2)
    assert (line["level"], line["extra_level"]) == ("INFO", "mine"), "a fixed key is never overwritten"
    assert line["when"] == "2026-01-01 00:00:00+00:00", "what JSON cannot encode is written as text"


def test_an_exception_comes_with_its_traceback(stream: io.StringIO) -> None:
    logs.configure(fmt="json", level="info", stream=stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger(LOGGER).exception("failed")
    [line] = json_lines(stream)
    assert line["message"] == "failed"
    assert line["exception"].startswith("Traceback") and "ValueError: boom" in line["exception"]


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_a_private_key_never_reaches_a_log_line(stream: io.StringIO, key_pem: str, fmt: str) -> None:
    logs.configure(fmt=fmt, level="debug", stream=stream)
    log = logging.getLogger(LOGGER)
    log.info("loaded %s", key_pem)
    log.info("secret %r", {"key": key_pem.encode()})  # a repr: the newlines are escaped
    log.info("cut off: " + key_pem[:80])
    log.info("fields", extra={"key": key_pem, "nested": {"pem": [key_pem]}, "raw": key_pem.encode()})
    try:
        raise ValueError(f"not a certificate: {key_pem}")
    except ValueError:
        log.exception("parse failed")
    text = stream.getvalue()
    body = key_pem.splitlines()[1]
    assert "PRIVATE KEY" not in text and body not in text and body[:20] not in text
    assert text.count(logs.REDACTED) >= (7 if fmt == "json" else 4), "text lines do not show extra fields"
    if fmt == "json":
        first, _, _, fields, failed = json_lines(stream)
        assert first["message"] == f"loaded {logs.REDACTED}\n"
        assert (fields["key"], fields["nested"], fields["raw"]) == (
            f"{logs.REDACTED}\n", {"pem": [f"{logs.REDACTED}\n"]}, f"{logs.REDACTED}\n")
        assert "ValueError: not a certificate: " + logs.REDACTED in failed["exception"]


def test_text_that_only_mentions_keys_is_left_alone() -> None:
    text = "no PRIVATE KEY here; -----BEGIN CERTIFICATE----- stays"
    assert logs.redact_private_keys(text) == text
    assert logs.redact_private_keys("a -----BEGIN EC PRIVATE KEY-----\nQUJD\n-----END EC PRIVATE KEY----- b") \
        == f"a {logs.REDACTED} b"


def test_text_lines_read_time_level_logger_and_message(stream: io.StringIO) -> None:
    logs.configure(fmt="text", level="info", stream=stream)
    logging.getLogger(LOGGER).warning("proxy %s rejected CDS", "web-1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING meshplane\.test: proxy web-1 rejected CDS\n",
                        stream.getvalue())


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_records_below_the_level_are_dropped(stream: io.StringIO, fmt: str) -> None:
    logs.configure(fmt=fmt, level="WARNING", stream=stream)
    log = logging.getLogger(LOGGER)
    log.debug("no")
    log.info("no")
    log.warning("yes")
    log.error("yes")
    assert [line.endswith("yes") or '"yes"' in line for line in stream.getvalue().splitlines()] == [True, True]


def test_configuring_again_replaces_the_handler_it_installed(stream: io.StringIO) -> None:
    before = io.StringIO()
    logs.configure(fmt="text", level="info", stream=before)
    logs.configure(fmt="json", level="info", stream=stream)
    logging.getLogger(LOGGER).info("once")
    assert before.getvalue() == ""
    assert [line["message"] for line in json_lines(stream)] == ["once"]


def test_an_unknown_format_or_level_is_refused(stream: io.StringIO) -> None:
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        logs.configure(fmt="xml", level="info", stream=stream)
    with pytest.raises(ValueError, match="log level must be one of"):
        logs.configure(fmt="text", level="loud", stream=stream)


@pytest.mark.parametrize("command", ["serve", "proxy"])
def test_the_long_running_commands_take_log_format_and_level(command: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"], out=io.StringIO(), err=io.StringIO())
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert "--log-format {text,json}" in help_text
    assert "--log-level {debug,info,warning,error}" in help_text
