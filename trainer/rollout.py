"""Who runs what: a channel's rollout, read from the fleet's retained MQTT messages.

``robotpm-train rollout-status --channel C`` subscribes to every robot's retained model
status (``…/model``: the model it runs, on which channel, since when), heartbeat
(``…/heartbeat``: the candidate on probation, counts of model events) and presence
(``…/status``), and to the channel's retained announcement, collects until the retained
messages have arrived (no message for ``quiet_s``), and says for each robot of the channel:

- ``current`` (runs the announced version or newer), ``behind``, ``probation`` (a candidate is
  being shadow-scored), or ``refused`` (it refused or rolled back a model);
- why, when it knows: refusals and rollbacks are events, not retained, so their reason is known
  only if one arrives while listening (``--listen``); otherwise the heartbeat's counts say that
  it happened.

Payloads are read as plain JSON, defensively: a malformed message is counted, not fatal.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.contract.signatures import is_signed_document
from agent.contract.topics import model_announcements, parse_robot_topic, subscription
from trainer.broker import BrokerSettings, connect, disconnect

REFUSAL_STATES = ("rejected", "rolled_back")


@dataclass
class RobotRollout:
    """What the fleet's retained messages say about one robot."""

    site: str
    robot: str
    online: bool | None = None
    model: str | None = None
    version: int | None = None
    channel: str | None = None
    since: str | None = None
    candidate: str | None = None
    candidate_version: int | None = None
    model_events: dict[str, int] = field(default_factory=dict)
    refusal: dict[str, Any] | None = None
    """The latest rejected / rolled_back event seen while listening."""
    state: str = "unknown"
    detail: str = ""


@dataclass
class RolloutStatus:
    """The channel's announced version and every robot on it."""

    channel: str
    announced_version: int | None
    robots: list[RobotRollout]
    malformed: int = 0

    def to_json(self) -> str:
        """The status as JSON (for ``--json``)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def table(self) -> str:
        """The status as a table for people."""
        lines = [
            f"channel {self.channel}: announced version {self.announced_version or '?'}, "
            f"{len(self.robots)} robot(s)"
        ]
        lines.append(f"{'site/robot':28s} {'state':10s} {'runs':24s} {'candidate':20s} detail")
        for r in self.robots:
            runs = f"{r.model}@{r.version}" if r.model else "?"
            candidate = f"{r.candidate}@{r.candidate_version}" if r.candidate else ""
            online = "" if r.online is not False else " (offline)"
            lines.append(
                f"{r.site + '/' + r.robot:28s} {r.state:10s} {runs:24s} {candidate:20s} {r.detail}{online}"
            )
        if self.malformed:
            lines.append(f"({self.malformed} malformed message(s) ignored)")
        return "\n".join(lines)


class _Collector:
    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.robots: dict[tuple[str, str], RobotRollout] = {}
        self.announced: int | None = None
        self.malformed = 0
        self.last_message = time.monotonic()
        self.lock = threading.Lock()

    def take(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.last_message = time.monotonic()
            try:
                self._take(topic, payload)
            except (ValueError, TypeError, KeyError, AttributeError):
                self.malformed += 1

    def _take(self, topic: str, payload: bytes) -> None:
        if topic == model_announcements(self.channel):
            if payload:
                body = payload.split(b"\n\n", 1)[1] if is_signed_document(payload) else payload
                self.announced = int(json.loads(body)["version"])
            return
        parsed = parse_robot_topic(topic)
        if parsed is None or not payload:
            return
        site, robot, kind = parsed
        data = json.loads(payload)
        entry = self.robots.setdefault((site, robot), RobotRollout(site, robot))
        if kind == "status":
            entry.online = data.get("state") == "online"
        elif kind == "heartbeat":
            candidate = data.get("model_candidate") or None
            entry.candidate = candidate["id"] if candidate else None
            entry.candidate_version = int(candidate["version"]) if candidate else None
            entry.model_events = {str(k): int(v) for k, v in (data.get("model_events") or {}).items()}
        elif kind == "model":
            state = data.get("state", "active")
            if state == "active":
                model = data.get("model") or {}
                entry.model, entry.version = model.get("id"), model.get("version")
                entry.channel, entry.since = data.get("channel"), data.get("since")
            elif state in REFUSAL_STATES:
                entry.refusal = {k: data.get(k) for k in ("state", "model", "detail", "source", "since")}
            elif state == "probation":
                model = data.get("model") or {}
                entry.candidate, entry.candidate_version = model.get("id"), model.get("version")


def collect(
    broker: BrokerSettings,
    channel: str,
    *,
    quiet_s: float = 0.5,
    listen_s: float = 0.0,
    timeout_s: float = 10.0,
) -> RolloutStatus:
    """Read the retained messages (and, for `listen_s`, live events) and judge each robot of `channel`."""
    collector = _Collector(channel)
    subscribed = threading.Event()
    client = connect(broker, timeout_s=timeout_s)
    try:
        client.on_message = lambda _c, _u, message: collector.take(message.topic, message.payload)
        client.on_subscribe = lambda *_args: subscribed.set()
        topics = [subscription(kind) for kind in ("model", "heartbeat", "status")] + [
            model_announcements(channel)
        ]
        client.subscribe([(t, 1) for t in topics])
        subscribed.wait(timeout_s)
        started = time.monotonic()
        collector.last_message = started
        while True:
            now = time.monotonic()
            with collector.lock:
                quiet = now - collector.last_message >= quiet_s
            if (quiet and now - started >= listen_s) or now - started >= max(timeout_s, listen_s + quiet_s):
                break
            time.sleep(0.05)
    finally:
        disconnect(client)
    with collector.lock:
        robots = [
            r for r in collector.robots.values() if r.channel == channel or (r.channel is None and r.refusal)
        ]
        for robot in robots:
            _judge(robot, collector.announced)
        return RolloutStatus(
            channel, collector.announced, sorted(robots, key=lambda r: (r.site, r.robot)), collector.malformed
        )


def _judge(robot: RobotRollout, announced: int | None) -> None:
    refusals = {k: v for k, v in robot.model_events.items() if k in REFUSAL_STATES and v}
    if robot.refusal is not None:
        model = robot.refusal.get("model") or {}
        label = f"{model.get('id')}@{model.get('version')}" if model else robot.refusal.get("source") or "?"
        robot.state = "refused"
        robot.detail = f"{robot.refusal.get('state')} {label}: {robot.refusal.get('detail')}"
    elif robot.candidate is not None:
        robot.state = "probation"
        robot.detail = f"{robot.candidate}@{robot.candidate_version} shadow-scored against v{robot.version}"
    elif announced is not None and robot.version is not None and robot.version < announced:
        robot.state = "refused" if refusals else "behind"
        robot.detail = f"runs v{robot.version} < announced v{announced}" + (
            f"; model events since start: {refusals} (reasons on …/model, not retained)" if refusals else ""
        )
    elif robot.version is not None:
        robot.state = "current"
        robot.detail = f"since {robot.since}" if robot.since else ""


__all__ = ["RobotRollout", "RolloutStatus", "collect"]
