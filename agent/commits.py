"""The commit: the streams' positions, the alerts their lines raised, the queued messages: one transaction.

This is the rule exactly-once scoring rests on (`agent.state`): what was read and
what it produced are committed together or not at all. A `Committer` makes that
commit for the daemon:

* the streams' states are written when asked (``force``), when a message or alert
  goes with them, or at most every ``ingest.checkpoint_interval_s`` otherwise;
* alert events pass the field operations first (journal, shelves), then go into the
  outbox with the messages; alert rows are handed to the transport just before the
  COMMIT, so the broker round trip overlaps the fsync (~3 ms; a rollback takes them
  back). A crash in between cannot lose an alert (nothing was committed, the lines
  are read again); it can only repeat one, with the same ``event_id``;
* on a full disk nothing is lost: what the commit carried is kept and tried again,
  with the disk's back-off (`agent.state.DiskSpace`), until there is room.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.config import AgentConfig
from agent.contract.alerts import AlertEvent
from agent.outbox import Outbox
from agent.publish import Delivery
from agent.seams import Clock, OutboundMessage
from agent.state import DiskSpace, StateStore, is_disk_full
from agent.streams.runner import StreamRunner
from agent.technician.operations import FieldOperations


@dataclass(eq=False)
class Committer:
    """Commits for one running agent; `delivery` is set once the transport is up."""

    config: AgentConfig
    store: StateStore
    outbox: Outbox
    fieldops: FieldOperations
    streams: Sequence[StreamRunner]
    clock: Clock
    disk: DiskSpace
    delivery: Delivery | None = None
    last: float = 0.0
    """When the streams' states were last committed (the daemon's monotonic clock)."""
    _unsaved: list[OutboundMessage] = field(default_factory=list, init=False)
    """Messages of a commit the full disk refused, tried again once there is room."""
    _unsaved_events: list[AlertEvent] = field(default_factory=list, init=False)
    """And that commit's alert events."""

    def due(self, now: float) -> bool:
        """Whether a checkpoint interval has passed since the streams' states were last committed."""
        return now - self.last >= self.config.ingest.checkpoint_interval_s

    @property
    def unsaved_events(self) -> int:
        """How many alert events wait for room on the disk."""
        return len(self._unsaved_events)

    def commit(
        self,
        *,
        force: bool,
        messages: Sequence[OutboundMessage] = (),
        events: Sequence[AlertEvent] = (),
        streams: bool = True,
    ) -> None:
        """Commit the streams' states (unless not `streams`), `events` and `messages`; kept on a full disk."""
        now = self.clock.monotonic()
        messages, self._unsaved = [*self._unsaved, *messages], []
        events, self._unsaved_events = [*self._unsaved_events, *events], []
        dirty = any(s.unsaved for s in self.streams)
        due = force or self.disk.full or self.due(now)
        if not self.disk.due(now) or not (messages or events or (dirty and due)):
            self._unsaved, self._unsaved_events = messages, events
            return
        overlap = False
        try:
            with self.store.transaction() as conn:
                for s in self.streams if streams else ():
                    StateStore.save_stream_state(conn, s.name, s.state(), self.clock.wall())
                # Journaled with their outbox rows; a shelve withholds some from the broker.
                rows = [*self.fieldops.admit(conn, events), *messages]
                if rows:
                    self.outbox.enqueue(conn, rows)
                    overlap = not self.disk.full and any(m.kind == "alert" for m in rows)
                    if overlap and self.delivery is not None:
                        self.delivery.send_pending()  # overlap the network trip with the fsync
        except Exception as exc:
            if overlap and self.delivery is not None:
                self.delivery.rewind()  # row ids handed over may be reused after the rollback
            if not is_disk_full(exc, self.config.state_dir):
                raise
            self.disk.failed(now, exc)
            self._unsaved, self._unsaved_events = messages, events  # tried again once there is room
            return
        self.disk.recovered(now)
        if streams:
            self.last = now
            for s in self.streams:
                s.saved()
