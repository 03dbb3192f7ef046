"""Log lines of the long-running commands (``meshplane serve``, ``meshplane proxy``): text or JSON.

:func:`configure` gives the root logger one handler on the stream it is handed, formatting either as
text (``%(asctime)s %(levelname)s %(name)s: %(message)s``, for people) or as JSON, one object per line
(for log collectors): ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, every field passed
in the call's ``extra``, and ``exception`` when there is one.

Whatever the format, the handler's :class:`RedactPrivateKeys` filter removes PEM private key blocks
from the message, the ``extra`` fields and the exception text before anything is formatted: a key
that ends up in a log call by mistake (a repr, a parse error quoting its input) never reaches a log
line. The filter sits on the handler rather than on loggers because a filter on a logger does not
see records propagated from its children.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted private key]"

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"  # PKCS#8, EC, RSA, ENCRYPTED, OPENSSH ...
    r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)",  # ... up to its end line, or all of a cut-off block
    re.DOTALL)
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_installed: list[logging.Handler] = []


def configure(*, fmt: str, level: str, stream: TextIO) -> logging.Handler:
    """Log records of ``level`` and above to ``stream``, in ``fmt`` ("text" or "json"), keys redacted.

    Calling it again replaces the handler it installed before (so a command can be run twice in one
    process, as tests do) and leaves other handlers on the root logger alone. Returns the handler.
    Raises ValueError for an unknown format or level.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}; got {level!r}")
    root = logging.getLogger()
    while _installed:
        root.removeHandler(_installed.pop())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactPrivateKeys())
    root.addHandler(handler)
    root.setLevel(level.upper())
    _installed.append(handler)
    return handler


def redact_private_keys(text: str) -> str:
    """``text`` with every PEM private key block (and any unterminated one) replaced by ``[redacted ...]``."""
    if "PRIVATE KEY-----" not in text:  # the common case, without running the expression
        return text
    return _PRIVATE_KEY.sub(REDACTED, text)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The attributes a log call's ``extra`` added to ``record`` (everything a LogRecord does not have)."""
    return {key: value for key, value in vars(record).items() if key not in _RECORD_FIELDS}


class RedactPrivateKeys(logging.Filter):
    """Removes private keys from a record's message, ``extra`` fields, exception and stack text.

    The message is formatted here, once, and the record's arguments dropped, so that no formatter can
    put the key back by formatting the original arguments again.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_private_keys(record.getMessage()), ()
        for key, value in extra_fields(record).items():
            setattr(record, key, _redacted(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_private_keys(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_private_keys(record.stack_info)
        return True


def _redacted(value: Any) -> Any:
    """``value`` with keys removed from its text; containers are walked, other objects checked by ``str``."""
    if isinstance(value, str):
        return redact_private_keys(value)
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "replace")
        return redact_private_keys(text) if "PRIVATE KEY-----" in text else value
    if isinstance(value, Mapping):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(item) for item in value]
    text = str(value)
    return redact_private_keys(text) if "PRIVATE KEY-----" in text else value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ``extra`` fields, exception, stack.

    An ``extra`` field named like one of the fixed keys is kept as ``extra_<name>`` rather than
    overwriting it; values JSON cannot encode are written as their ``str``.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": rfc3339(record.created), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()}
        for key, value in extra_fields(record).items():
            entry[f"extra_{key}" if key in entry else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def rfc3339(created: float) -> str:
    """A ``time.time()`` value as RFC 3339 in UTC with milliseconds: ``2026-01-02T03:04:05.678Z``."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
