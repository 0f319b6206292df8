"""Structured logs: one JSON object per line on stderr, carrying the request id of the RPC being handled.

The request id comes from the client's ``x-request-id`` metadata when it sends one, otherwise the server makes one
up; it is returned in the ``x-request-id`` trailing metadata and quoted in INTERNAL error messages, so a user's
error report leads straight to the log line with the traceback.

:class:`LogSettings` is Triton's logging extension on the running process: ``log_info`` / ``log_warning`` /
``log_error`` switch INFO, WARNING and ERROR lines on or off (CRITICAL always passes), ``log_verbose_level`` ≥ 1 turns
on DEBUG lines (the server has one verbose level: higher values act like 1), ``log_format`` is ``json`` or ``text``
(Triton's ``ISO8601`` is our ``text``, whose lines start with an ISO 8601 UTC time; ``default`` is the format the
server started with). ``log_file`` is refused unless empty: a client must not make the server write to a path.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import IO

from serving.errors import InvalidInput

request_id_var: ContextVar[str] = ContextVar("request_id", default="")

# Attributes every LogRecord has; anything else was passed with ``extra=`` and goes into the JSON object.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


# A random per-process prefix and a counter: unique across replicas in practice, and ~20× cheaper than uuid4
# (which reads /dev/urandom on every call) on a path taken by every request.
_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_PREFIX}{next(_COUNTER):08x}"


def _utc(record: logging.LogRecord) -> str:
    """The record's time in ISO 8601, UTC, to the millisecond: ``2024-05-20T20:03:26.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if rid := request_id_var.get():
            entry["request_id"] = rid
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RateLimit:
    """At most ``per_second`` events a second for each key. ``allow`` returns None for an event to drop, else how
    many of that key were dropped since the last one allowed (so the line that gets through can say so)."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._windows: dict[object, list[float | int]] = {}  # key → [window start, allowed, dropped]

    def allow(self, key: object) -> int | None:
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None or now - window[0] >= 1.0:
            dropped = int(window[2]) if window else 0
            self._windows[key] = [now, 1, 0]
            return dropped
        if window[1] < self.per_second:
            window[1] += 1
            dropped, window[2] = int(window[2]), 0
            return dropped
        window[2] += 1
        return None


def escape(text: str) -> str:
    """Control characters as escapes (``\n`` → ``\\n``): a value quoted in a text log line stays on that line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class TextFormatter(logging.Formatter):
    """Plain text lines with control characters escaped, so a quoted client string cannot start a forged line."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's)
        return _utc(record)  # the JSON lines' time: ISO 8601 (Triton's "ISO8601" log format), UTC

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id_var.get()
        return f"{line} [request_id={escape(rid)}]" if rid else line


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("json", "text")
# Triton's names for its two formats, which differ only in how the time is written.
TRITON_FORMATS = {"ISO8601": "text"}
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT)


class _LevelSwitch(logging.Filter):
    """Drops the records of the classes switched off (Triton's booleans are per class, not a threshold)."""

    def __init__(self) -> None:
        super().__init__()
        self.off: frozenset[int] = frozenset()

    def filter(self, record: logging.LogRecord) -> bool:
        level = record.levelno
        klass = logging.ERROR if level >= logging.ERROR else logging.WARNING if level >= logging.WARNING \
            else logging.INFO if level >= logging.INFO else logging.DEBUG
        return level >= logging.CRITICAL or klass not in self.off


class LogSettings:
    """The process's log settings under Triton's names, applied to the root logger and to the server's handler.

    ``level`` and ``fmt`` (``--log-level``, ``--log-format``) are where they start, and what a setting returns to
    when a client clears it (an empty value). Without a handler (a library user's own logging setup) the switches
    still set the root logger's level, and the format is only recorded."""

    def __init__(self, level: str = "INFO", fmt: str = "json", handler: logging.Handler | None = None) -> None:
        level = level.upper()
        if level not in LEVELS:
            raise ValueError(f"log level {level!r}: choose one of {', '.join(LEVELS)}")
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r}: choose one of {', '.join(FORMATS)}")
        self.handler = handler
        self._switch = _LevelSwitch()
        if handler is not None:
            handler.addFilter(self._switch)
        threshold = logging.getLevelName(level)
        self.defaults: dict[str, bool | int | str] = {
            "log_file": "",
            "log_info": threshold <= logging.INFO,
            "log_warning": threshold <= logging.WARNING,
            "log_error": threshold <= logging.ERROR,
            "log_verbose_level": int(threshold <= logging.DEBUG),
            "log_format": fmt,
        }
        self._values = dict(self.defaults)
        self._apply()

    def get(self) -> dict[str, bool | int | str]:
        return dict(self._values)

    def update(self, changes: Mapping[str, object]) -> dict[str, bool | int | str]:
        """Apply ``changes`` (None: back to the start value) all at once, or none if one is invalid (InvalidInput);
        returns every setting after the change."""
        values = dict(self._values)
        for name, value in changes.items():
            if value is None and name in self.defaults:
                values[name] = self.defaults[name]
            else:
                values[name] = _checked(name, value, self.defaults)
        changed = {k: v for k, v in values.items() if v != self._values[k]}
        self._values = values
        self._apply()
        if changed:  # under the new settings: a change that turns INFO lines off is not logged
            logging.getLogger(__name__).info("log settings changed: %s", changed)
        return self.get()

    def _apply(self) -> None:
        v = self._values
        on = [level for level, key in ((logging.DEBUG, "log_verbose_level"), (logging.INFO, "log_info"),
                                       (logging.WARNING, "log_warning"), (logging.ERROR, "log_error")) if v[key]]
        # The root level is the lowest class switched on: loggers skip everything below it before any record is
        # made (``isEnabledFor`` is cached), and the handler's filter drops the classes in between that are off.
        logging.getLogger().setLevel(min(on, default=logging.CRITICAL))
        self._switch.off = frozenset({logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR} - set(on))
        if self.handler is not None:
            self.handler.setFormatter(formatter(str(v["log_format"])))


def _checked(name: str, value: object, defaults: Mapping[str, object]) -> bool | int | str:
    """A new value for setting ``name``, in its type and range, or InvalidInput saying what is expected."""
    if name == "log_file":
        if value != "":
            raise InvalidInput("log_file: writing the log to a file named by a client is refused; the log goes to "
                               "stderr (collect it there), so log_file can only be \"\"")
        return ""
    if name in ("log_info", "log_warning", "log_error"):
        if not isinstance(value, bool):
            raise InvalidInput(f"{name} takes a boolean (true or false), got {_shown(value)}")
        return value
    if name == "log_verbose_level":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            raise InvalidInput(f"log_verbose_level takes an unsigned integer (0: no verbose lines, 1 or more: DEBUG "
                               f"lines), got {_shown(value)}")
        return value
    if name == "log_format":
        if value == "default":
            return defaults["log_format"]  # type: ignore[return-value]
        fmt = TRITON_FORMATS.get(value, value) if isinstance(value, str) else value
        if fmt not in FORMATS:
            raise InvalidInput(f"log_format {_shown(value)}: choose json, text, ISO8601 (= text) or default (the "
                               "server's --log-format)")
        return fmt  # type: ignore[return-value]
    raise InvalidInput(f"unknown log setting {_shown(name)}; the settings are {', '.join(defaults)}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


_settings: LogSettings | None = None


def log_settings() -> LogSettings:
    """The process's log settings: those of ``setup_logging``, or (library use) settings over the root logger's
    current level with no handler of ours."""
    global _settings
    if _settings is None:
        level = logging.getLogger().getEffectiveLevel()
        _settings = LogSettings(next((name for name in LEVELS if logging.getLevelName(name) >= level), "CRITICAL"))
    return _settings


def setup_logging(level: str = "INFO", fmt: str = "json", stream: IO[str] | None = None) -> LogSettings:
    """Configure the root logger once (the ``serve`` CLI calls this; library users keep their own setup); returns
    the settings that the logging extension changes at run time, starting from ``level`` and ``fmt``."""
    global _settings
    handler = logging.StreamHandler(stream or sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _settings = LogSettings(level, fmt, handler)
    # Pillow logs some damaged files at ERROR while it decodes them; the request already gets INVALID_ARGUMENT,
    # so those lines would only page someone for a client's bad upload.
    logging.getLogger("PIL").setLevel(logging.CRITICAL)
    return _settings
