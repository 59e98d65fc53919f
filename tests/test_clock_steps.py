"""Durations the agent enforces survive wall-clock steps in both directions, and restarts.

A robot without a battery-backed clock boots in 1970 and is set to today by NTP
minutes later; an operator sets a wrong clock back by a year. Neither may drop
queued alerts, keep stale ones forever, collapse heartbeats or silence a stream.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from agent.config import OutboxConfig
from agent.contract.alerts import WindowRef
from agent.contract.topics import RobotTopics
from agent.outbox import Outbox
from agent.policy import AlertPolicy
from agent.publish.delivery import Delivery
from agent.publish.telemetry import heartbeat_message, heartbeat_record
from agent.seams import OutboundMessage
from agent.state import StateStore
from agent.testing import InMemoryTransport, ManualClock
from tests.test_policy import make_manifest, make_policy

BOOT_1970 = 86_400.0
"""A wall clock one day after the epoch: a controller without RTC, before NTP."""
TODAY = 1_780_000_000.0


class SteppingClock(ManualClock):
    """`ManualClock` whose wall time can also be set, while monotonic time only moves forward."""

    __slots__ = ()

    def __init__(self, wall: float, monotonic: float = 0.0) -> None:
        super().__init__(wall - monotonic)
        self.advance(monotonic)

    def set_wall(self, wall: float) -> None:
        """NTP or an operator steps the wall clock; monotonic time does not move."""
        self._wall = wall


def alert(i: int) -> OutboundMessage:
    return OutboundMessage(key=f"alert-{i}", kind="alert", topic="robotpm/v1/s/r/alerts", payload=b"{}")


def open_outbox(state_dir: Path, clock: SteppingClock, **config: float) -> Outbox:
    return Outbox(StateStore.in_dir(state_dir), OutboxConfig.model_validate(config), clock)


class TestOutboxAge:
    def test_queued_alerts_survive_ntp_setting_a_1970_clock_to_today(self, tmp_path: Path) -> None:
        """Five alerts queued at boot (1970) are still queued 30 s after NTP set the date."""
        clock = SteppingClock(wall=BOOT_1970)
        outbox = open_outbox(tmp_path, clock)
        outbox.enqueue_now([alert(i) for i in range(5)])
        clock.set_wall(TODAY)
        clock.advance(30.0)
        assert 0 == outbox.expire()
        assert (5, {}) == (outbox.depth(), outbox.dropped())
        assert 30.0 == outbox.oldest_age_s()

    def test_a_clock_set_back_by_years_does_not_keep_rows_past_their_ttl(self, tmp_path: Path) -> None:
        """Telemetry still expires after its TTL of running time when the wall clock went back 10 years."""
        clock = SteppingClock(wall=TODAY)
        outbox = open_outbox(tmp_path, clock, telemetry_ttl_s=60.0)
        outbox.enqueue_now([OutboundMessage("heartbeat:1", "heartbeat", "t/heartbeat", b"{}", retain=True)])
        clock.set_wall(TODAY - 10 * 365 * 86_400)
        clock.advance(59.0)
        assert 0 == outbox.expire()
        clock.advance(2.0)
        assert (1, {"heartbeat:expired": 1}) == (outbox.expire(), outbox.dropped())

    def test_age_accumulates_across_restarts_of_the_real_file_whatever_the_wall_clock_says(
        self, tmp_path: Path
    ) -> None:
        """Age is running time summed over restarts: 60 s before, 45 s after, a TTL of 100 s drops them."""
        clock = SteppingClock(wall=TODAY, monotonic=5_000.0)
        outbox = open_outbox(tmp_path, clock, alert_ttl_s=100.0)
        outbox.enqueue_now([alert(i) for i in range(3)])
        clock.advance(60.0)
        delivery = Delivery(outbox, InMemoryTransport(connected=False), clock=clock)
        delivery.pump()  # the periodic expiry also saves the outbox clock
        outbox.store.close()

        # The process restarts after a reboot: monotonic time starts again near zero, and the
        # wall clock (no RTC) says 1970.
        clock = SteppingClock(wall=BOOT_1970, monotonic=3.0)
        outbox = open_outbox(tmp_path, clock, alert_ttl_s=100.0)
        assert 60.0 == outbox.oldest_age_s()
        clock.advance(30.0)
        clock.set_wall(TODAY + 86_400)  # NTP again
        assert (0, 3) == (outbox.expire(), outbox.depth())
        clock.advance(15.0)
        assert (3, {"alert:expired": 3}) == (outbox.expire(), outbox.dropped())

    def test_rows_of_a_file_written_before_the_outbox_clock_start_their_age_at_the_upgrade(
        self, tmp_path: Path
    ) -> None:
        """An outbox table without the age column (older agent) keeps its rows and ages them from now."""
        older = open_outbox(tmp_path, SteppingClock(wall=TODAY - 30 * 86_400))
        older.enqueue_now([OutboundMessage("old", "alert", "t/alerts", b"{}")])
        conn = older.store.connection
        conn.execute("ALTER TABLE outbox DROP COLUMN born")  # the file as an older agent left it
        conn.execute("DROP TABLE outbox_clock")
        older.store.close()
        clock = SteppingClock(wall=TODAY)
        outbox = open_outbox(tmp_path, clock, alert_ttl_s=100.0)
        assert (1, 0.0) == (outbox.depth(), outbox.oldest_age_s())
        assert 0 == outbox.expire()
        assert ["old"] == [r.message.key for r in outbox.pending(0, 10)]


class TestDeliveryHolds:
    def test_a_rejected_row_is_retried_after_its_hold_whatever_the_wall_clock_does(
        self, tmp_path: Path
    ) -> None:
        """The retry hold after a broker rejection is monotonic time: a wall step back does not extend it."""
        clock = SteppingClock(wall=TODAY)
        outbox = open_outbox(tmp_path, clock)
        transport = InMemoryTransport(auto_ack=False)
        delivery = Delivery(outbox, transport, clock=clock, reject_retry_s=5.0)
        outbox.enqueue_now([alert(1)])
        delivery.pump()
        transport.reject(transport.sent[0].token)
        delivery.pump()
        clock.set_wall(TODAY - 365 * 86_400)
        clock.advance(4.0)
        delivery.pump()
        assert 1 == len(transport.sent), "held back for reject_retry_s"
        clock.advance(1.5)
        delivery.pump()
        assert ["alert-1", "alert-1"] == [s.message.key for s in transport.sent]


class TestHeartbeatKeys:
    def test_heartbeats_at_the_same_wall_time_after_a_step_back_are_both_kept(self, tmp_path: Path) -> None:
        """A wall clock set back so that two heartbeats share a send time must not collapse them into one."""
        clock = SteppingClock(wall=TODAY)
        outbox = open_outbox(tmp_path, clock)
        topics = RobotTopics("s", "r")
        for uptime in (30.0, 60.0):
            record = heartbeat_record(
                robot_id="r",
                site="s",
                now=TODAY,
                uptime_s=uptime,
                counters={},
                outbox=outbox,
                model=None,
                agent_version="0",
            )
            outbox.enqueue_now([heartbeat_message(topics, record)])
        assert {"heartbeat": 2} == outbox.depth_by_kind()


def window_at(index: int, end: float) -> WindowRef:
    return WindowRef(
        index=index, start=end - 1.0, end=end, source_file="/logs/a.csv", byte_start=0, byte_end=1
    )


class TestPolicyDataTime:
    def _policy(self, **config: object) -> AlertPolicy:
        manifest = make_manifest(heads=tuple((f"j{i}", "wear", "higher_is_worse") for i in range(3)))
        return make_policy(manifest, **{"on_delay_windows": 1, "off_delay_windows": 1, **config})

    def _run(self, policy: AlertPolicy, scores: list[float], index: int, end: float) -> list[str]:
        n = len(scores)
        k = len(policy.manifest.heads)
        array = np.repeat(np.asarray(scores, dtype=np.float64).reshape(-1, 1), k, axis=1)
        features = np.tile(np.asarray(policy.manifest.reference.mean), (n, 1))
        refs = [window_at(index + i, end + i) for i in range(n)]
        events = policy.evaluate({"scores": array}, refs, features, replayed=False)
        return [f"{e.component}:{e.state}" for e in events]

    def test_a_data_clock_set_back_a_year_does_not_silence_the_rate_limited_stream(self) -> None:
        """After the controller's clock went back a year, events flow again within a minute of data time."""
        policy = self._policy(max_events_per_minute=3)
        assert 3 == len(self._run(policy, [0.9], index=0, end=TODAY))  # three raises fill the budget
        stepped = TODAY - 365 * 86_400
        assert 3 == len(self._run(policy, [0.1], index=1, end=stepped))  # three clears, a year earlier
        assert "rate_limit_cleared" not in policy.counters()["suppressed"]

    def test_a_data_clock_set_back_does_not_block_severity_updates_until_it_catches_up(self) -> None:
        """min_update_interval_s measures data time forward; a step back of more than it starts anew."""
        policy = self._policy(min_update_interval_s=10.0, off_delay_windows=5)
        assert ["j0:raised", "j1:raised", "j2:raised"] == self._run(policy, [0.7], index=0, end=TODAY)
        stepped = TODAY - 365 * 86_400
        updates = self._run(policy, [0.9], index=1, end=stepped)
        assert ["j0:updated", "j1:updated", "j2:updated"] == updates
        assert datetime.fromtimestamp(stepped, tz=timezone.utc).year < 2027
