"""Shelving and maintenance (ISA-18.2): alerts keep being scored and journaled, none is raised.

A *shelf* covers one alert head (``robotpm-agent shelve ALERT_ID``: the head that
alert belongs to, so its next raises are covered too), one stream (``--stream``)
or the whole robot (``--all``), for a limited time, with a reason and the user who
asked. ``--maintenance`` marks it as maintenance (out of service) rather than a
nuisance shelve; both behave the same. While an event is covered:

* ``raised`` and ``updated`` are journaled (``published = 0``, with the shelf) and
  not published;
* ``cleared`` is published when subscribers saw the alert, else journaled only, so
  no subscriber keeps an alert open that nothing will clear.

A shelf ends by itself (`Shelving.expire`) when its time is up on the wall clock
**or** on the agent's running clock, whichever comes first: a wall clock stepped
back never makes a shelve last longer than asked, one stepped forward only ends
it early (the safe side). It ends early with ``unshelve``. When a shelf ends, the
alerts it withheld that are still open are published then (their journaled raise,
then their latest update): the alarm returns to its real state.

Shelves live in the state database (table ``shelves``) and survive restarts.
Requests come as files in the control directory (`agent.technician.control`),
are validated here (`ShelveRequest`) and answered with a `ShelveResult`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.contract.alerts import AlertEvent
from agent.errors import StateError
from agent.journal import read_episode, resolve_id
from agent.state import StateStore
from agent.technician.settings import ShelvingConfig

REQUEST_SCHEMA_VERSION: Final = "1.0"

_DDL: Final = ("CREATE TABLE IF NOT EXISTS shelves (id TEXT PRIMARY KEY, body TEXT NOT NULL)",)

ShelfKind = Literal["shelved", "maintenance"]
ShelfScope = Literal["alert", "stream", "all"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Shelf(_Model):
    """One active shelve or maintenance period."""

    id: str
    kind: ShelfKind
    scope: ShelfScope = Field(description="alert: one alert head (component/failure mode of a stream).")
    stream: str | None = None
    component: str | None = None
    failure_mode: str | None = None
    alert_id: str | None = Field(default=None, description="The alert named when shelving an alert head.")
    reason: str
    by: str = Field(description="Who asked: the user name the CLI ran as, and the request file's owner uid.")
    since: datetime
    until: datetime
    until_running_s: float = Field(description="The agent running clock at which it ends at the latest.")

    def covers(self, event: AlertEvent) -> bool:
        """Whether this shelf covers an event."""
        return self.covers_head(event.stream, event.component, event.failure_mode)

    def covers_head(self, stream: str, component: str | None, failure_mode: str | None) -> bool:
        """Whether this shelf covers an alert head (component and failure mode None: the stream as such)."""
        if self.scope == "all":
            return True
        if self.stream != stream:
            return False
        return self.scope == "stream" or (self.component, self.failure_mode) == (component, failure_mode)

    def target(self) -> str:
        """What it covers, for people."""
        if self.scope == "all":
            return "all streams"
        if self.scope == "stream":
            return f"stream {self.stream}"
        return f"{self.stream} {self.component}/{self.failure_mode}"


class ShelveRequest(_Model):
    """A request file the CLI writes into the control directory's ``requests/``."""

    schema_version: Literal["1.0"] = REQUEST_SCHEMA_VERSION
    id: str = Field(pattern=r"^[0-9a-f]{16}-[0-9a-f]{8}$")
    action: Literal["shelve", "unshelve"]
    alert_id: str | None = Field(default=None, max_length=64)
    stream: str | None = Field(default=None, max_length=200)
    all: bool = False
    for_s: float | None = Field(default=None, gt=0)
    reason: str = Field(default="", max_length=500)
    maintenance: bool = False
    by: str = Field(default="?", max_length=100)
    requested_at: datetime

    @model_validator(mode="after")
    def _one_target(self) -> ShelveRequest:
        if sum((self.alert_id is not None, self.stream is not None, self.all)) != 1:
            raise ValueError("name exactly one of an alert id, a stream, or all")
        if self.action == "shelve" and not self.reason.strip():
            raise ValueError("a shelve needs a reason")
        return self


class ShelveResult(_Model):
    """The daemon's answer to one request, in ``results/<id>.json``."""

    schema_version: Literal["1.0"] = REQUEST_SCHEMA_VERSION
    request_id: str
    action: Literal["shelve", "unshelve", "unknown"] = "unknown"
    ok: bool
    detail: str
    shelves: tuple[Shelf, ...] = Field(default=(), description="Shelves added (shelve) or ended (unshelve).")
    still_shelved_by: tuple[Shelf, ...] = Field(
        default=(), description="After an unshelve: shelves that still cover the same target."
    )


class Shelving:
    """The active shelves of one agent, and the publish gate; see the module docstring."""

    def __init__(
        self,
        store: StateStore,
        config: ShelvingConfig,
        *,
        wall: Callable[[], float],
        running_s: Callable[[], float],
    ) -> None:
        self._store = store
        self._config = config
        self._wall = wall
        self._running_s = running_s
        try:
            store.migrate(*_DDL)
            rows = store.connection.execute("SELECT body FROM shelves ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"{store.path}: cannot read the shelves: {exc}") from exc
        self._shelves: dict[str, Shelf] = {}
        for (body,) in rows:
            try:
                shelf = Shelf.model_validate_json(body)
            except ValidationError:
                continue  # a damaged shelf ends: alerts are raised again (the safe side)
            self._shelves[shelf.id] = shelf

    @property
    def shelves(self) -> list[Shelf]:
        """The active shelves, oldest first."""
        return sorted(self._shelves.values(), key=lambda s: (s.since, s.id))

    def use_config(self, config: ShelvingConfig) -> None:
        """New defaults and limits for the next requests (a reload)."""
        self._config = config

    def covering(self, event: AlertEvent) -> Shelf | None:
        """The first active shelf that covers this event, or None."""
        return self.covering_head(event.stream, event.component, event.failure_mode)

    def covering_head(self, stream: str, component: str | None, failure_mode: str | None) -> Shelf | None:
        """The first active shelf that covers this alert head (or stream), or None."""
        return next((s for s in self.shelves if s.covers_head(stream, component, failure_mode)), None)

    def publishes(self, event: AlertEvent, shelf: Shelf | None, seen: bool) -> bool:
        """Whether an event goes to the broker: not covered, or a clear of an alert subscribers saw."""
        return shelf is None or (event.state == "cleared" and seen)

    def expire(self, conn: sqlite3.Connection) -> list[Shelf]:
        """End the shelves whose time is up (inside the caller's transaction); returns them."""
        wall, running = self._wall(), self._running_s()
        ended = [
            s for s in self._shelves.values() if s.until.timestamp() <= wall or s.until_running_s <= running
        ]
        self._remove(conn, ended)
        return ended

    def handle(self, conn: sqlite3.Connection, body: bytes, owner_uid: int) -> ShelveResult:
        """Apply one request file's content (inside the caller's transaction); never raises for bad input."""
        try:
            request = ShelveRequest.model_validate_json(body)
        except ValidationError as exc:
            problem = "; ".join(e["msg"] for e in exc.errors()[:3])
            return ShelveResult(request_id=_request_id(body), ok=False, detail=f"bad request: {problem}")
        if request.action == "shelve":
            return self._shelve(conn, request, owner_uid)
        return self._unshelve(conn, request)

    # -- internals ---------------------------------------------------------------------------------

    def _shelve(self, conn: sqlite3.Connection, request: ShelveRequest, owner_uid: int) -> ShelveResult:
        cfg = self._config
        duration = request.for_s if request.for_s is not None else cfg.default_for_s
        if duration > cfg.max_for_s:
            return ShelveResult(
                request_id=request.id,
                action="shelve",
                ok=False,
                detail=f"refused: {duration:g} s is longer than [agent.shelving] max_for_s"
                f" = {cfg.max_for_s:g}",
            )
        target = self._target(conn, request)
        if isinstance(target, str):
            return ShelveResult(
                request_id=request.id, action=request.action, ok=False, detail=f"refused: {target}"
            )
        scope, stream, component, failure_mode = target
        now = self._wall()
        shelf = Shelf(
            id=request.id,
            kind="maintenance" if request.maintenance else "shelved",
            scope=scope,
            stream=stream,
            component=component,
            failure_mode=failure_mode,
            alert_id=request.alert_id,
            reason=request.reason.strip(),
            by=f"{request.by} (uid {owner_uid})",
            since=datetime.fromtimestamp(now, tz=timezone.utc),
            until=datetime.fromtimestamp(now + duration, tz=timezone.utc),
            until_running_s=self._running_s() + duration,
        )
        conn.execute(
            "INSERT OR REPLACE INTO shelves(id, body) VALUES (?, ?)", (shelf.id, shelf.model_dump_json())
        )
        self._shelves[shelf.id] = shelf
        return ShelveResult(
            request_id=request.id,
            action="shelve",
            ok=True,
            detail=f"{shelf.kind} {shelf.target()} until {shelf.until.strftime('%Y-%m-%d %H:%M:%SZ')}",
            shelves=(shelf,),
        )

    def _unshelve(self, conn: sqlite3.Connection, request: ShelveRequest) -> ShelveResult:
        target = self._target(conn, request)
        if isinstance(target, str):
            return ShelveResult(
                request_id=request.id, action=request.action, ok=False, detail=f"refused: {target}"
            )
        scope, stream, component, failure_mode = target
        ended = [
            s
            for s in self._shelves.values()
            if scope == "all"
            or (
                s.stream == stream
                and (scope == "stream" or (s.component, s.failure_mode) == (component, failure_mode))
            )
        ]
        self._remove(conn, ended)
        still = tuple(
            s for s in self.shelves if stream is not None and s.covers_head(stream, component, failure_mode)
        )
        detail = f"ended {len(ended)} shelve(s)" if ended else "nothing was shelved there"
        if still:
            detail += f"; still covered by {', '.join(s.target() for s in still)}"
        return ShelveResult(
            request_id=request.id,
            action="unshelve",
            ok=bool(ended),
            detail=detail,
            shelves=tuple(ended),
            still_shelved_by=still,
        )

    def _target(
        self, conn: sqlite3.Connection, request: ShelveRequest
    ) -> tuple[ShelfScope, str | None, str | None, str | None] | str:
        """(scope, stream, component, failure mode) a request names, or why it names nothing known."""
        if request.all:
            return ("all", None, None, None)
        if request.stream is not None:
            return ("stream", request.stream, None, None)
        assert request.alert_id is not None
        episode = read_episode(conn, resolve_id(conn, request.alert_id))
        if not episode:
            return f"no alert {request.alert_id} in the journal"
        event = episode[0].event
        return ("alert", event.stream, event.component, event.failure_mode)

    def _remove(self, conn: sqlite3.Connection, shelves: Sequence[Shelf]) -> None:
        for shelf in shelves:
            conn.execute("DELETE FROM shelves WHERE id = ?", (shelf.id,))
            self._shelves.pop(shelf.id, None)


def _request_id(body: bytes) -> str:
    """The id a malformed request claims, so its answer lands where the CLI waits (else "invalid")."""
    try:
        value = json.loads(body).get("id")
    except (ValueError, AttributeError):
        return "invalid"
    return (
        value
        if isinstance(value, str) and len(value) <= 64 and value.replace("-", "").isalnum()
        else "invalid"
    )
