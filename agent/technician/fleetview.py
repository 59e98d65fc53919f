"""What the operations team sees of a robot besides its alerts: open alerts, metrics, drift reports.

The builders are in `agent.publish.telemetry` and `agent.metrics`; this module
decides when they run, for the daemon:

* the retained open-alerts view (``…/open_alerts``) after every tick with alert
  events, every shelve change, and at start; shelved alerts are marked in it;
* the node_exporter textfile each heartbeat (when ``[agent.metrics] textfile`` is set);
* a drift report (``…/drift``) for each stream whose drift state changed since its
  last report, and each heartbeat while it drifts; the heartbeat's per-stream summary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from agent.config import AgentConfig
from agent.contract.alerts import Heartbeat, ModelRef, StreamDrift
from agent.contract.topics import RobotTopics
from agent.metrics import LatencyHistogram, MetricsSnapshot, StreamMetrics, write_textfile
from agent.publish import telemetry
from agent.seams import OutboundMessage
from agent.technician.shelving import Shelving
from agent.technician.statusfile import StreamStatus


class FleetView:
    """When the open-alerts view, the metrics file and the drift reports are made; see the docstring."""

    def __init__(self, config: AgentConfig, topics: RobotTopics) -> None:
        self._config = config
        self._topics = topics
        self._drift_reported: dict[str, str] = {}

    def use_config(self, config: AgentConfig) -> None:
        """A reloaded config (the metrics file's path can change live)."""
        self._config = config

    def open_alerts(self, policies: Sequence[Any], shelving: Shelving, now: float) -> OutboundMessage:
        """The retained open-alerts message of every stream's policy, shelved alerts marked."""
        shelved: dict[str, tuple[datetime | None, str]] = {}
        for policy in policies:
            for alert in policy.open_alert_records():
                shelf = shelving.covering_head(alert.stream, alert.component, alert.failure_mode)
                if shelf is not None:
                    shelved[alert.alert_id] = (shelf.until, f"{shelf.kind}: {shelf.reason}")
        record = telemetry.open_alerts_state(
            self._config.robot_id, self._config.site, policies, now=now, shelved=shelved
        )
        return telemetry.open_alerts_message(self._topics, record)

    def drift_summaries(self, pipelines: Sequence[Any]) -> dict[str, StreamDrift]:
        """Each stream's drift summary for the heartbeat."""
        return {p.name: telemetry.drift_summary(p.drift) for p in pipelines}

    def drift_reports(self, pipelines: Sequence[Any], model: ModelRef, now: float) -> list[OutboundMessage]:
        """Reports of streams whose drift state changed since their last report, or that drift."""
        out: list[OutboundMessage] = []
        for pipeline in pipelines:
            state = pipeline.drift.state
            if state == self._drift_reported.get(pipeline.name, "unknown") and state != "drifting":
                continue
            self._drift_reported[pipeline.name] = state
            report = telemetry.drift_report(
                pipeline.drift,
                robot_id=self._config.robot_id,
                site=self._config.site,
                stream=pipeline.name,
                model=model,
                now=now,
            )
            out.append(telemetry.drift_message(self._topics, report))
        return out

    def write_metrics(
        self,
        heartbeat: Heartbeat,
        pipelines: Sequence[Any],
        streams: Mapping[str, StreamStatus],
        *,
        broker_connected: bool,
        inference: LatencyHistogram | None,
        open_alerts: Any,
    ) -> bool | None:
        """Write the metrics textfile, if one is configured (None: not configured; False: failed)."""
        path = self._config.metrics.textfile
        if path is None:
            return None
        rows = []
        for pipeline in pipelines:
            status = streams.get(pipeline.name)
            rows.append(
                StreamMetrics.from_pipeline(
                    pipeline,
                    lag_bytes=None if status is None else status.lag_bytes,
                    lag_seconds=None if status is None else status.lag_s,
                    degraded=None if status is None else status.degraded,
                    drift=telemetry.drift_summary(pipeline.drift),
                )
            )
        snapshot = MetricsSnapshot(
            heartbeat=heartbeat,
            streams=rows,
            broker_connected=broker_connected,
            inference=inference,
            open_alerts=open_alerts,
        )
        return write_textfile(path, snapshot)
