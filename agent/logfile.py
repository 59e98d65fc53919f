"""The agent's logging as configured: `agent.logs` to stdout, plus an optional rotating file.

``[agent.logging] file`` adds a size-bounded file beside journald: every line the
agent prints (already rendered and redacted by `agent.logs`) is also appended
there, rotated past ``file_max_bytes`` into ``file.1 … file.N`` (``file_backups``).
A file that cannot be opened is reported on stdout and left out: logging to it must
not stop the agent. Calling `configure_agent_logging` again (a reload) closes the
old file and applies the new settings.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.logs import configure_logging
from agent.ownfiles import move_aside

_handler: logging.handlers.RotatingFileHandler | None = None


class TeeLogger:
    """A structlog logger that prints each rendered line to stdout and hands it to a rotating file."""

    def __init__(self, handler: logging.Handler) -> None:
        self._handler = handler

    def msg(self, message: str) -> None:
        """Print the line and append it to the file."""
        print(message, file=sys.stdout, flush=True)
        self._handler.handle(logging.makeLogRecord({"msg": message, "levelno": logging.INFO}))

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg


def configure_agent_logging(config: AgentConfig) -> None:
    """Log as the config says: level and format to stdout, and the rotating file if one is set."""
    global _handler
    configure_logging(config.log_level, config.log_format)
    if _handler is not None:
        _handler.close()
        _handler = None
    settings = config.logging
    if settings.file is None:
        return
    try:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        move_aside(settings.file)  # a FIFO there would block the open for appending: a regular file instead
        handler = logging.handlers.RotatingFileHandler(
            settings.file,
            maxBytes=settings.file_max_bytes,
            backupCount=settings.file_backups,
            encoding="utf-8",
        )
    except OSError as exc:
        structlog.get_logger("robotpm.agent").warning(
            "log_file_unavailable", path=str(settings.file), error=exc.strerror or str(exc)
        )
        return
    handler.setFormatter(logging.Formatter("%(message)s"))
    _handler = handler

    def factory(*args: Any) -> TeeLogger:
        return TeeLogger(handler)

    structlog.configure(logger_factory=factory)
