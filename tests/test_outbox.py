"""The durable outbox and its delivery: idempotent keys, bounds, drop counts, acks and replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import OutboxConfig
from agent.contract.alerts import ModelRef
from agent.contract.topics import RobotTopics
from agent.outbox import Outbox
from agent.publish.delivery import Delivery
from agent.publish.telemetry import heartbeat_message, heartbeat_record
from agent.seams import OutboundMessage
from agent.state import StateStore
from agent.testing import InMemoryTransport, ManualClock


def alert(i: int, size: int = 100) -> OutboundMessage:
    return OutboundMessage(key=f"alert-{i}", kind="alert", topic="robotpm/v1/s/r/alerts", payload=b"a" * size)


def heartbeat(i: int, size: int = 100) -> OutboundMessage:
    return OutboundMessage(
        key=f"heartbeat:{i}",
        kind="heartbeat",
        topic="robotpm/v1/s/r/heartbeat",
        payload=b"h" * size,
        retain=True,
    )


@pytest.fixture(name="clock")
def _clock() -> ManualClock:
    return ManualClock()


def open_outbox(path: Path, clock: ManualClock, **config: float) -> Outbox:
    return Outbox(StateStore(path / "agent.db"), OutboxConfig.model_validate(config), clock)


def alerts(n: int) -> list[OutboundMessage]:
    """Alerts 0 to n - 1."""
    return [alert(i) for i in range(n)]


def queued(
    path: Path,
    clock: ManualClock,
    transport: InMemoryTransport,
    messages: list[OutboundMessage],
    **delivery: int,
) -> tuple[Outbox, InMemoryTransport, Delivery]:
    """A new outbox, a `Delivery` from it to `transport`, then `messages` enqueued: the three of them."""
    outbox = open_outbox(path, clock)
    pump = Delivery(outbox, transport, clock=clock, **delivery)
    outbox.enqueue_now(messages)
    return outbox, transport, pump


class TestOutbox:
    def test_enqueue_is_idempotent_by_key(self, tmp_path: Path, clock: ManualClock) -> None:
        """Enqueueing the same alert twice (a replay) stores it once."""
        outbox = open_outbox(tmp_path, clock)
        with outbox.store.transaction() as conn:
            outbox.enqueue(conn, [alert(1), alert(2)])
        with outbox.store.transaction() as conn:
            outbox.enqueue(conn, [alert(1)])
        assert 2 == outbox.depth()

    def test_status_and_model_rows_are_replaced_by_newer_ones(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """Retained latest-state kinds keep only the newest message per key."""
        outbox = open_outbox(tmp_path, clock)
        for body in (b"v1", b"v2"):
            outbox.enqueue_now([OutboundMessage("model", "model", "t/model", body, retain=True)])
        rows = outbox.pending(0, 10)
        assert [b"v2"] == [r.message.payload for r in rows]
        assert 1 == outbox.depth()
        assert len(b"v2") + len("t/model") == outbox.size_bytes()

    def test_committed_rows_survive_a_reopen_and_rolled_back_rows_do_not(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """Committed rows are there after reopening; rows of a rolled-back transaction are not."""
        outbox = open_outbox(tmp_path, clock)
        outbox.enqueue_now([alert(1)])

        def crash_before_commit() -> None:
            with outbox.store.transaction() as conn:
                outbox.enqueue(conn, [alert(2)])
                raise RuntimeError("crash before commit")

        with pytest.raises(RuntimeError):
            crash_before_commit()
        outbox.store.close()
        reopened = open_outbox(tmp_path, clock)
        assert ["alert-1"] == [r.message.key for r in reopened.pending(0, 10)]
        assert 1 == reopened.depth()

    def test_full_outbox_keeps_alerts_and_drops_oldest_telemetry_with_matching_counts(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """Over max_bytes, heartbeats go oldest first, every alert stays, and drops are counted."""
        outbox = open_outbox(tmp_path, clock, max_bytes=64 * 1024)
        heartbeats = 300
        for i in range(heartbeats):
            outbox.enqueue_now([heartbeat(i)])
            clock.advance(1)
        alerts = 500
        for i in range(0, alerts, 25):
            outbox.enqueue_now([alert(j) for j in range(i, i + 25)])
        kinds = outbox.depth_by_kind()
        assert alerts == kinds["alert"]
        dropped = outbox.dropped()
        assert heartbeats == kinds.get("heartbeat", 0) + dropped.get("heartbeat:full", 0)
        assert dropped.get("heartbeat:full", 0) > 0
        assert outbox.size_bytes() <= 64 * 1024
        assert kinds["heartbeat"] > 0, "only as many heartbeats as needed were dropped"
        remaining = [
            int(r.message.key.split(":")[1])
            for r in outbox.pending(0, 10_000)
            if r.message.kind == "heartbeat"
        ]
        assert remaining == list(range(heartbeats - len(remaining), heartbeats)), "oldest dropped first"
        assert "alert:full" not in dropped

    def test_alerts_beyond_the_budget_are_kept_and_counted_as_over_budget(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """When alerts alone exceed max_bytes, new alerts are still stored (never dropped before TTL)."""
        outbox = open_outbox(tmp_path, clock, max_bytes=64 * 1024)
        for i in range(100):
            outbox.enqueue_now([alert(i, size=1024)])
        assert 100 == outbox.depth()
        assert outbox.dropped()["alert:over_budget"] > 0

    def test_rows_past_their_ttl_are_dropped_and_counted(self, tmp_path: Path, clock: ManualClock) -> None:
        """Telemetry expires after telemetry_ttl_s and alerts only after alert_ttl_s."""
        outbox = open_outbox(tmp_path, clock, alert_ttl_s=100, telemetry_ttl_s=10)
        outbox.enqueue_now([alert(1), heartbeat(1)])
        clock.advance(11)
        assert 1 == outbox.expire()
        assert {"alert": 1} == outbox.depth_by_kind()
        clock.advance(90)
        assert 1 == outbox.expire()
        assert 0 == outbox.depth()
        assert {"heartbeat:expired": 1, "alert:expired": 1} == outbox.dropped()

    def test_depth_and_oldest_age(self, tmp_path: Path, clock: ManualClock) -> None:
        """Depth and oldest_age_s describe the waiting rows."""
        outbox = open_outbox(tmp_path, clock)
        assert (0, None) == (outbox.depth(), outbox.oldest_age_s())
        outbox.enqueue_now([alert(1)])
        clock.advance(5)
        outbox.enqueue_now([alert(2)])
        assert (2, 5.0) == (outbox.depth(), outbox.oldest_age_s())


class TestDelivery:
    def test_rows_are_deleted_only_after_their_ack(self, tmp_path: Path, clock: ManualClock) -> None:
        """A sent row stays until the transport reports its acknowledgement."""
        outbox, transport, delivery = queued(tmp_path, clock, InMemoryTransport(auto_ack=False), alerts(3))
        assert 0 == delivery.pump()
        assert 3 == len(transport.sent)
        assert 3 == outbox.depth()
        transport.ack_all()
        assert 3 == delivery.pump()
        assert 0 == outbox.depth()

    def test_an_idle_pump_does_not_query_the_outbox_until_a_row_is_enqueued(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """Once every row was handed over, pumps cost no SELECT; the next enqueue is sent at once."""
        outbox, transport, delivery = queued(tmp_path, clock, InMemoryTransport(), [alert(1)])
        delivery.pump()
        statements: list[str] = []
        outbox.store.connection.set_trace_callback(statements.append)
        for _ in range(5):
            delivery.pump()
        assert not [q for q in statements if q.startswith("SELECT")]
        outbox.enqueue_now([alert(2)])
        delivery.pump()
        assert ["alert-1", "alert-2"] == [m.key for m in transport.messages()]

    def test_rows_refused_by_a_full_transport_are_offered_again_without_a_new_enqueue(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """A transport that takes only some rows gets the rest on later pumps."""
        outbox, transport, delivery = queued(
            tmp_path,
            clock,
            InMemoryTransport(auto_ack=False, max_inflight=2),
            [alert(i) for i in range(5)],
            max_inflight=10,
        )
        delivery.pump()
        assert 2 == len(transport.sent)
        while outbox.depth():
            transport.ack_all()
            delivery.pump()
        assert [f"alert-{i}" for i in range(5)] == [m.key for m in transport.messages()]

    def test_in_flight_is_bounded(self, tmp_path: Path, clock: ManualClock) -> None:
        """Never more than max_inflight rows wait for an ack; the rest wait in the outbox."""
        _, transport, delivery = queued(
            tmp_path, clock, InMemoryTransport(auto_ack=False), alerts(12), max_inflight=5
        )
        for _ in range(3):
            delivery.pump()
        assert 5 == transport.inflight
        transport.ack_all()
        delivery.pump()
        assert [f"alert-{i}" for i in range(10)] == [s.message.key for s in transport.sent]

    def test_rows_go_out_in_enqueue_order_and_nothing_is_sent_while_disconnected(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """While the link is down nothing is handed over; afterwards rows go in order."""
        outbox, transport, delivery = queued(tmp_path, clock, InMemoryTransport(connected=False), alerts(4))
        delivery.pump()
        assert [] == transport.sent
        transport.reconnect()
        while outbox.depth():
            delivery.pump()
        assert [f"alert-{i}" for i in range(4)] == [m.key for m in transport.messages()]

    def test_in_flight_rows_are_resent_by_the_transport_not_twice_by_the_pump(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """After a dropped link the transport resends with DUP; each row is deleted once."""
        outbox, transport, delivery = queued(tmp_path, clock, InMemoryTransport(auto_ack=False), alerts(3))
        delivery.pump()
        transport.drop_connection()
        delivery.pump()
        transport.reconnect()
        transport.ack_all()
        assert 3 == delivery.pump()
        assert [False] * 3 + [True] * 3 == [s.dup for s in transport.sent]
        assert 0 == outbox.depth()

    def test_a_restarted_process_replays_every_unacknowledged_row_with_the_same_key(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """Rows sent but not acknowledged before a crash are sent again after reopening."""
        outbox = open_outbox(tmp_path, clock)
        first = InMemoryTransport(auto_ack=False)
        Delivery(outbox, first, clock=clock).pump()
        outbox.enqueue_now([alert(i) for i in range(3)])
        Delivery(outbox, first, clock=clock).pump()
        outbox.store.close()
        reopened = open_outbox(tmp_path, clock)
        second = InMemoryTransport()
        delivery = Delivery(reopened, second, clock=clock)
        delivery.pump()
        delivery.pump()
        assert [m.message.key for m in first.sent] == [m.key for m in second.messages()]
        assert 0 == reopened.depth()


class TestHeartbeat:
    def test_heartbeat_reports_counters_outbox_state_drops_model_and_uptime(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """A heartbeat carries lines, windows, alerts, quarantined, outbox depth/age/drops, model, drift."""
        outbox = open_outbox(tmp_path, clock, telemetry_ttl_s=5)
        outbox.enqueue_now([alert(1), heartbeat(1)])
        clock.advance(6)
        outbox.expire()
        record = heartbeat_record(
            robot_id="r1",
            site="s1",
            now=clock.wall(),
            uptime_s=6.0,
            counters={"lines": 1000, "windows": 31, "alerts": 2, "quarantined": 3},
            outbox=outbox,
            model=ModelRef(id="m", version=4),
            agent_version="0.1.0",
            drift="ok",
            suppressed={"rate_limit_raised": 1},
        )
        message = heartbeat_message(RobotTopics("s1", "r1"), record)
        body = json.loads(message.payload)
        assert (1000, 31, 2, 3) == (body["lines"], body["windows"], body["alerts"], body["quarantined"])
        assert (1, 6.0, {"heartbeat:expired": 1}) == (
            body["outbox_depth"],
            body["outbox_oldest_age_s"],
            body["outbox_dropped"],
        )
        assert ({"id": "m", "version": 4}, "ok", 6.0) == (body["model"], body["drift"], body["uptime_s"])
        assert {"rate_limit_raised": 1} == body["alerts_suppressed"]
        assert ("1.3", True, "robotpm/v1/s1/r1/heartbeat") == (
            body["schema_version"],
            message.retain,
            message.topic,
        )

    def test_a_rejected_publish_keeps_its_row_and_is_sent_again_later(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """A PUBACK with a failure reason code does not delete the row; it is retried after a pause."""
        outbox, transport, delivery = queued(
            tmp_path, clock, InMemoryTransport(auto_ack=False), [alert(1), alert(2)]
        )
        delivery.pump()
        first, second = transport.sent
        transport.reject(first.token)
        transport.ack(second.token)
        assert 1 == delivery.pump()
        assert (1, 1) == (outbox.depth(), delivery.rejected)
        delivery.pump()
        assert 2 == len(transport.sent), "not resent at once"
        clock.advance(6)
        delivery.pump()
        assert ["alert-1", "alert-2", "alert-1"] == [s.message.key for s in transport.sent]
        transport.ack_all()
        delivery.pump()
        assert 0 == outbox.depth()

    def test_a_message_the_transport_can_never_take_is_dropped_and_counted_not_blocking(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        """An unpublishable row (PublishError) is dropped as '<kind>:unpublishable'; the rest flow."""
        outbox, transport, delivery = queued(
            tmp_path, clock, InMemoryTransport(max_payload=150), [alert(1), alert(2, size=1000), alert(3)]
        )
        delivery.pump()
        delivery.pump()
        assert ["alert-1", "alert-3"] == [m.key for m in transport.messages()]
        assert (0, {"alert:unpublishable": 1}) == (outbox.depth(), outbox.dropped())
