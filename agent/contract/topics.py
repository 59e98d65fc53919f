"""The MQTT topic tree: one place that builds and parses every topic.

    robotpm/v1/<site>/<robot>/alerts      alert events (raised / updated / cleared), QoS 1
    robotpm/v1/<site>/<robot>/status      retained presence: "online" / "offline" JSON
    robotpm/v1/<site>/<robot>/heartbeat   periodic counters
    robotpm/v1/<site>/<robot>/model       retained: the model the robot runs
    robotpm/v1/<site>/<robot>/drift       feature drift reports
    robotpm/v1/<site>/<robot>/open_alerts retained: every open alert of the robot
    robotpm/v1/models/<channel>           retained model announcements

Subscribers use wildcards: ``robotpm/v1/+/+/alerts`` for the fleet,
``robotpm/v1/<site>/+/alerts`` for a site.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

ROOT = "robotpm/v1"

RobotTopicKind = Literal["alerts", "status", "heartbeat", "model", "drift", "open_alerts"]
ROBOT_TOPIC_KINDS: tuple[str, ...] = get_args(RobotTopicKind)

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_segment(value: str, what: str) -> str:
    """Return `value` if it is a safe topic segment (no wildcards, slashes or spaces)."""
    if not _SEGMENT.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return value


@dataclass(frozen=True, slots=True)
class RobotTopics:
    """The topics of one robot."""

    site: str
    robot: str

    def __post_init__(self) -> None:
        check_segment(self.site, "site")
        check_segment(self.robot, "robot id")

    def topic(self, kind: RobotTopicKind) -> str:
        """The full topic of one kind for this robot."""
        return f"{ROOT}/{self.site}/{self.robot}/{kind}"

    @property
    def alerts(self) -> str:
        """Topic for alert events."""
        return self.topic("alerts")

    @property
    def status(self) -> str:
        """Retained presence topic."""
        return self.topic("status")

    @property
    def heartbeat(self) -> str:
        """Topic for heartbeats."""
        return self.topic("heartbeat")

    @property
    def model(self) -> str:
        """Retained topic of the model in use."""
        return self.topic("model")

    @property
    def drift(self) -> str:
        """Topic for drift reports."""
        return self.topic("drift")

    @property
    def open_alerts(self) -> str:
        """Retained topic of the robot's open alerts."""
        return self.topic("open_alerts")


def model_announcements(channel: str) -> str:
    """Retained topic where new models of a channel are announced."""
    return f"{ROOT}/models/{check_segment(channel, 'model channel')}"


def subscription(kind: RobotTopicKind, site: str | None = None, robot: str | None = None) -> str:
    """A subscription filter for one kind: a robot, a whole site, or the fleet (None = any)."""
    site_part = "+" if site is None else check_segment(site, "site")
    robot_part = "+" if robot is None else check_segment(robot, "robot id")
    return f"{ROOT}/{site_part}/{robot_part}/{kind}"


def parse_robot_topic(topic: str) -> tuple[str, str, str] | None:
    """``(site, robot, kind)`` of a robot topic, or None if it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT or parts[4] not in ROBOT_TOPIC_KINDS:
        return None
    return parts[2], parts[3], parts[4]
