"""Logging: structlog to stdout, JSON for journald and machines, console for people at a terminal.

Configured once at the entry point (`configure_logging`). Modules take a
module-level logger, ``log = structlog.get_logger("robotpm.<area>")``, and log
events as snake_case names with key-value context ("canonical log lines").

Secrets never leave, whatever a caller passes:

* Exceptions are rendered without local variables, in JSON (``exception``, a list
  of frames) and on the console (a plain traceback: rich and better-exceptions
  would print every frame's locals, e.g. a URL with its password).
* `redact_secrets`, the last processor before rendering, masks in the event and in
  every value, nested in dicts and lists: the user info of URLs
  (``https://***@host``), values of secret-named query parameters and ``key=value``
  pairs (``?token=***``, ``password=***``), ``Authorization`` / ``Bearer`` values, the
  whole value of a secret-named key (``password``, ``token``, ``authorization`` …),
  and any literal registered with `register_secret` (the MQTT password once read).
* Records of the standard ``logging`` module and exceptions that reach
  ``sys.excepthook`` or ``threading.excepthook`` go through the same chain.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from collections.abc import Mapping
from pathlib import PurePath
from types import TracebackType
from typing import Any, Final, Literal, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, ExcInfo, WrappedLogger

LogFormat = Literal["auto", "json", "console"]

MASK: Final = "***"

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

_SECRET_NAMES: Final = (
    "password|passwd|pwd|pass|secret|token|access_token|refresh_token|id_token|auth_token|api_key|apikey"
    "|api-key|client_secret|private_key|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token"
    "|x-goog-signature|x-goog-credential|credential|session|sessionid|auth"
)
_URL_USERINFO: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]*@")
_NAMED_VALUE: Final = re.compile(
    rf"(?i)(?<![A-Za-z0-9_.-])({_SECRET_NAMES})([\"']?\s*[=:]\s*[\"']?)[^\s\"'&#,;)}}\]]+"
)
_AUTH_HEADER: Final = re.compile(
    r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|digest|token|negotiate)\s+)?"
    r"[^\s\"',;]+"
)
_AUTH_SCHEME: Final = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_SECRET_KEY: Final = re.compile(
    r"(?i)(password|passwd|secret|token|authorization|credential|api_?key|private_key|cookie|signature)"
)
_NOT_A_SECRET_KEY: Final = re.compile(r"(?i)(_file|_env|_path|_dir|_count|_ms|_s)$")

_registered: set[str] = set()
_registered_lock = threading.Lock()
_MIN_REGISTERED_LEN: Final = 4


def register_secret(value: str | None) -> None:
    """Mask this literal wherever it appears in a later log line (e.g. a password once read)."""
    if value and len(value) >= _MIN_REGISTERED_LEN:
        with _registered_lock:
            _registered.add(value)


def redact_text(text: str) -> str:
    """`text` with URL user info, secret parameters, authorization values and registered secrets masked."""
    with _registered_lock:
        literals = sorted(_registered, key=len, reverse=True)
    for literal in literals:
        if literal in text:
            text = text.replace(literal, MASK)
    text = _URL_USERINFO.sub(rf"\g<1>{MASK}@", text)
    text = _AUTH_HEADER.sub(rf"\g<1>{MASK}", text)
    text = _AUTH_SCHEME.sub(rf"\g<1> {MASK}", text)
    return _NAMED_VALUE.sub(rf"\g<1>\g<2>{MASK}", text)


def is_secret_key(key: str) -> bool:
    """Whether a log key names a secret, so its whole value is masked (``password``, ``auth_token``)."""
    return bool(_SECRET_KEY.search(key)) and not _NOT_A_SECRET_KEY.search(key)


def redact_value(value: Any) -> Any:
    """A log value with every string in it redacted (dicts and sequences walked, other objects as text)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, Mapping):
        return {
            str(k): (MASK if is_secret_key(str(k)) and v not in (None, "") else redact_value(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact_value(v) for v in value]
    if isinstance(value, (PurePath, BaseException)):
        return redact_text(str(value))
    return redact_text(repr(value))


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Mask secrets in the event and in every key's value: a structlog processor (see the docstring)."""
    return {
        key: (
            value  # left for the console renderer, whose exception formatter redacts it
            if key == "exc_info"
            else MASK
            if is_secret_key(key) and value not in (None, "")
            else redact_value(value)
        )
        for key, value in event_dict.items()
    }


def plain_traceback_without_locals(sio: TextIO, exc_info: ExcInfo) -> None:
    """Console exception formatter: the standard traceback (no locals), redacted."""
    sio.write("\n" + redact_text("".join(traceback.format_exception(*exc_info))))


_JSON_EXCEPTIONS: Final = structlog.processors.ExceptionRenderer(
    ExceptionDictTransformer(show_locals=False, use_rich=False)
)


def _processors(use_console: bool) -> list[structlog.typing.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.dev.set_exc_info if use_console else _JSON_EXCEPTIONS,
    ]


def _renderer(use_console: bool, colors: bool) -> structlog.typing.Processor:
    if not use_console:
        return structlog.processors.JSONRenderer()
    console = structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=plain_traceback_without_locals)

    def render(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        # The exception is formatted inside the renderer: redact the finished line as well.
        return redact_text(str(console(logger, method_name, event_dict)))

    return render


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Route structlog (and stdlib logging) to stdout at `level`; JSON unless console or a TTY."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    renderer = _renderer(use_console, colors=sys.stdout.isatty())
    threshold = _LEVELS.get(level, logging.INFO)
    structlog.configure(
        processors=[*_processors(use_console), redact_secrets, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(use_console, renderer, threshold)
    _install_exception_hooks()


def _route_stdlib_logging(use_console: bool, renderer: structlog.typing.Processor, threshold: int) -> None:
    """Records of libraries that use ``logging`` get the same processors, redaction and renderer."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_processors(use_console)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact_secrets, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    handler.set_name("robotpm")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "robotpm"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(threshold, logging.INFO))


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, thread: str | None = None
) -> None:
    structlog.get_logger("robotpm.agent").critical(
        "uncaught_exception", thread=thread, exc_info=(exc_type, exc, tb)
    )


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    value = args.exc_value if args.exc_value is not None else args.exc_type()
    _log_uncaught(args.exc_type, value, args.exc_traceback, args.thread.name if args.thread else None)


def _main_hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    _log_uncaught(exc_type, exc, tb)


def _install_exception_hooks() -> None:
    """Uncaught exceptions are logged (redacted, no locals) instead of printed raw to stderr."""
    sys.excepthook = _main_hook
    threading.excepthook = _thread_hook
