"""Drift reports reach the trainer: robotpm-alerts --drift-dir bridges them; stream mode retrains once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.contract.alerts import DriftReport, DriftThresholds, FeatureDriftRecord, ModelRef
from agent.contract.manifest import ModelManifest
from agent.contract.topics import RobotTopics
from agent.publish.telemetry import presence
from agent.subscriber.cli import write_drift_report
from robotpm_sim.fleet import simulate_fleet
from tests.mosquitto import Broker
from tests.test_alerts_cli import Publisher, Tool
from tests.test_trainer_stream import _config
from trainer.stream import CONSUMED_DIR, check_once


def report(state: str = "drifting", robot: str = "r1", stream: str = "arm1") -> DriftReport:
    return DriftReport(
        robot_id=robot,
        site="s1",
        stream=stream,
        model=ModelRef(id="arm-stream", version=1),
        state=state,  # type: ignore[arg-type]
        windows=900,
        effective_windows=640.5,
        drifting_features=2 if state == "drifting" else 0,
        features=(
            FeatureDriftRecord(name="j3_temp__mean", psi=1.7, shift=3.1, drifting=state == "drifting"),
        ),
        thresholds=DriftThresholds(
            psi_raise=0.25, psi_clear=0.1, shift_raise=2.0, shift_clear=1.0, min_features=1
        ),
        retrain=state == "drifting",
        sent_at=datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc),
    )


@pytest.fixture(name="publisher")
def _publisher(broker: Broker) -> Iterator[Publisher]:
    pub = Publisher(broker.port)
    yield pub
    pub.close()


def test_the_bridge_writes_each_report_asking_for_a_retrain_as_a_whole_file(
    broker: Broker, publisher: Publisher, tmp_path: Path
) -> None:
    """--drift-dir: a drifting report becomes drift-<site>-<robot>-<stream>-<time>.json; ok ones do not."""
    out = tmp_path / "incoming"
    tool = Tool("--port", str(broker.port), "--json", "--drift", "--drift-dir", str(out), "--timeout", "20")
    topics = RobotTopics("s1", "r1")
    # The tool subscribes to every topic in one SUBSCRIBE: once the retained presence is there, so is
    # the drift subscription (drift reports are not retained).
    online = presence("r1", "s1", "online", "0.1.0", since=1_780_000_000.0)
    publisher.send(topics.status, online.model_dump_json().encode(), retain=True)
    tool.wait_for_line('"kind":"presence"')
    publisher.send(topics.drift, report("ok").model_dump_json().encode())
    publisher.send(topics.drift, report("drifting").model_dump_json().encode())
    tool.wait_for_line('"state":"drifting"')
    tool.process.terminate()
    assert 0 == tool.finish()[0]
    files = sorted(p.name for p in out.iterdir())
    assert ["drift-s1-r1-arm1-20261201T120000000000Z.json"] == files
    written = DriftReport.model_validate_json((out / files[0]).read_bytes())
    assert (written.retrain, written.features[0].name) == (True, "j3_temp__mean")
    kinds = [json.loads(line)["kind"] for line in tool.lines]
    assert 2 == kinds.count("drift")


def test_stream_mode_retrains_once_per_agent_drift_report_and_ignores_reports_that_do_not_ask(
    tmp_path: Path,
) -> None:
    """An agent's report with retrain=true trains once and is moved aside; an ok report trains nothing."""
    config = _config(tmp_path, min_new_rows=1)
    incoming = config.incoming.incoming
    simulate_fleet(
        incoming, robots=4, seconds=1200.0, rate_hz=10.0, seed=9, fault_duration_s=150.0, mean_healthy_s=200.0
    )
    assert "promoted" == check_once(config).action
    [manifest_path] = (config.registry / "arm-stream").glob("*/manifest.json")
    manifest = ModelManifest.read(manifest_path.parent)
    assert manifest.reference.bins is not None, "the trainer writes the quantile bins drift needs"
    assert manifest.feature_spec.n_features == len(manifest.reference.bins.edges)
    config = config.model_copy(
        update={"incoming": config.incoming.model_copy(update={"min_new_rows": 10**9})}
    )
    ok = report("ok", robot="r2")
    write_drift_report(incoming, ok, ok.model_dump_json().encode())
    assert "waiting" == check_once(config).action
    drifting = report("drifting")
    written = write_drift_report(incoming, drifting, drifting.model_dump_json().encode())
    assert "trained" == check_once(config).action
    assert not written.exists()
    assert [written.name] == [p.name for p in (config.work_dir / CONSUMED_DIR).iterdir()]
    assert "waiting" == check_once(config).action, "a consumed report does not retrain again"
