"""Delivery: moves outbox rows to the transport and deletes them once the broker acknowledged them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import structlog

from agent.errors import PublishError, StateError
from agent.outbox import Outbox
from agent.seams import Clock, SystemClock, Transport
from agent.state import is_disk_full

T = TypeVar("T")

log = structlog.get_logger(__name__)

_REJECT_RETRY_S = 5.0
_EXPIRE_EVERY_S = 60.0


class Delivery:
    """Pumps the outbox into a `Transport`, never more than ``max_inflight`` rows at once.

    Call `pump` from the daemon loop on every iteration; it never blocks on the
    network. Rows go out in id order (enqueue order). A row handed to the
    transport stays in flight until its acknowledgement arrives: the transport
    (paho) resends it after a reconnect with the DUP flag, so the pump never sends
    a row twice within one process. After a restart every row still stored is
    sent again, with the same key.

    A row the transport refuses outright (`PublishError`: it can never be sent) is
    dropped and counted as ``<kind>:unpublishable`` rather than blocking the queue.

    A broker that answers a PUBACK with a failure reason code (MQTT 5, e.g. not
    authorised or quota exceeded) does not delete the row: it is sent again after
    a few seconds and counted in `rejected`.

    On a full disk delivery goes on: rows are read and sent as usual, and the rows
    acknowledged meanwhile are deleted once there is room again (a restart before
    that sends them once more, with the same key).
    """

    def __init__(
        self,
        outbox: Outbox,
        transport: Transport,
        *,
        max_inflight: int = 20,
        clock: Clock | None = None,
        reject_retry_s: float = _REJECT_RETRY_S,
    ) -> None:
        self._outbox = outbox
        self._transport = transport
        self._max_inflight = max(1, max_inflight)
        self._clock = clock or SystemClock()
        self._reject_retry_s = reject_retry_s
        self._inflight: dict[int, int] = {}  # token -> row id
        self._acked: list[int] = []  # row ids acknowledged, not yet deleted (a full disk)
        self._cursor = 0  # highest row id handed to the transport
        self._hold_until = 0.0
        self._next_expire = 0.0
        self._drained_at: int | None = None  # outbox.enqueue_calls when no row was left to hand over
        self.delivered = 0
        self.rejected = 0

    @property
    def inflight(self) -> int:
        """Rows handed to the transport and not yet acknowledged."""
        return len(self._inflight)

    def pump(self) -> int:
        """Delete acknowledged rows, then hand pending rows to the transport; returns rows delivered."""
        self._acked.extend(
            self._inflight.pop(token) for token in self._transport.take_acks() if token in self._inflight
        )
        delivered = 0
        if self._acked:
            gone = self._unless_disk_full(lambda: self._outbox.delete(self._acked))
            if gone is not None:
                delivered, self._acked = gone, []
        self._retry_rejected()
        now = self._clock.monotonic()
        if now >= self._next_expire:
            self._next_expire = now + _EXPIRE_EVERY_S
            self._unless_disk_full(self._outbox.expire)
        if now >= self._hold_until and self._transport.connected:
            self._send_more()
        self.delivered += delivered
        return delivered

    def send_pending(self) -> None:
        """Hand pending rows to the transport now, without waiting for the next `pump`.

        The daemon calls this inside the transaction that inserts a tick's alert rows,
        just before its COMMIT, so the fsync and the network trip overlap. A crash
        between the two loses nothing: the rows' source lines were not committed either,
        so they are read again and yield the same keys (a duplicate at worst).
        """
        if self._clock.monotonic() >= self._hold_until and self._transport.connected:
            self._send_more()

    def rewind(self) -> None:
        """Forget what was handed over (e.g. after the enclosing transaction rolled back)."""
        self._inflight.clear()
        self._cursor = 0
        self._drained_at = None

    def _send_more(self) -> None:
        room = self._max_inflight - len(self._inflight)
        if room <= 0:
            return
        enqueued = self._outbox.enqueue_calls
        if self._drained_at == enqueued:
            return  # every row was handed over and none was added since: no query needed
        busy = set(self._inflight.values())
        limit = room + len(busy)
        rows = self._outbox.pending(self._cursor, limit)
        if len(rows) < limit:
            self._drained_at = enqueued  # unless a row below is refused by a full transport
        for row in rows:
            if row.id in busy:
                self._cursor = max(self._cursor, row.id)
                continue
            if room <= 0:
                self._drained_at = None
                return
            try:
                token = self._transport.send(row.message)
            except PublishError as exc:
                # A message the transport can never take (e.g. larger than the broker allows)
                # must not block every row behind it, nor crash-loop the agent on restart.
                reason = f"{row.message.kind}:unpublishable"
                self._unless_disk_full(partial(self._outbox.drop, [row.id], reason))
                self._cursor = max(self._cursor, row.id)
                log.error("outbox_row_unpublishable", key=row.message.key, error=str(exc))
                continue
            if token is None:
                self._drained_at = None  # the transport is full: try again next pump
                return
            self._inflight[token] = row.id
            self._cursor = max(self._cursor, row.id)
            room -= 1

    def _unless_disk_full(self, write: Callable[[], T]) -> T | None:
        """`write()`, or None when the disk is full (it is tried again later); other errors raise."""
        try:
            return write()
        except (StateError, sqlite3.Error) as exc:
            if not is_disk_full(exc, self._outbox.store.path.parent):
                raise
            log.warning("outbox_write_deferred", reason="disk full", acknowledged=len(self._acked))
            return None

    def _retry_rejected(self) -> None:
        tokens = self._transport.take_rejected()
        rows = [self._inflight.pop(t) for t in tokens if t in self._inflight]
        if rows:
            self.rejected += len(rows)
            self._cursor = min(self._cursor, min(rows) - 1)
            self._drained_at = None
            # Rows above the new cursor that are still in flight are skipped by _send_more.
            self._hold_until = self._clock.monotonic() + self._reject_retry_s
