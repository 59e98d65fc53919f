"""sd_notify(3) client: readiness, status, watchdog pings and stopping, sent to systemd.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Without that variable, as
when run outside systemd, every method does nothing, so the daemon calls them unconditionally::

    notifier = Notifier.from_env()
    notifier.ready("scoring arm1 with model 3")
    ...
    notifier.watchdog()  # from the main loop, every notifier.watchdog_interval_s, on real progress
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    """Sends notifications to systemd's notify socket; a no-op when there is none."""

    __slots__ = ("_address", "_socket", "watchdog_usec")

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._socket: socket.socket | None = None
        self.watchdog_usec = watchdog_usec
        """The watchdog timeout systemd enforces, in microseconds, or None when there is none."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier configured by ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog is ours only if ``WATCHDOG_PID`` is unset or names this process.
        """
        env = os.environ if environ is None else environ
        watchdog: int | None = None
        pid = env.get("WATCHDOG_PID", "")
        if env.get("WATCHDOG_USEC", "").isdigit() and (not pid or pid == str(os.getpid())):
            watchdog = int(env["WATCHDOG_USEC"]) or None
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog)

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to call `watchdog` (half the timeout, as sd_watchdog_enabled(3) advises)."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def ready(self, status: str | None = None) -> bool:
        """The service is up (``READY=1``), with an optional status line."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """A human-readable status line, shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        """Keep-alive ping (``WATCHDOG=1``): call it only when the pipeline really progressed."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """The service is shutting down (``STOPPING=1``)."""
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def extend_timeout(self, usec: int) -> bool:
        """Ask for ``usec`` more microseconds to start or stop (e.g. a slow model load)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(usec)}")

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; False if there is no socket or sending failed."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Close the socket (it is reopened on the next notification)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
