"""Metrics without a port: the node_exporter textfile, checked by promtool and scraped by node_exporter."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import structlog

from agent.contract.alerts import Heartbeat, ModelRef, StreamDrift
from agent.metrics import (
    LatencyHistogram,
    MetricsSnapshot,
    StreamMetrics,
    metric_names,
    render,
    write_textfile,
)
from agent.publish.telemetry import open_alerts_state
from tests.mosquitto import free_port, wait_for_port
from tests.test_policy import make_policy, run

REPO = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


def full_snapshot() -> MetricsSnapshot:
    """A snapshot with every part filled: what a busy agent with two streams writes."""
    beat = Heartbeat(
        robot_id="r1",
        site="s1",
        sent_at=datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc),
        uptime_s=3600.5,
        lines=12_345,
        windows=120,
        alerts=3,
        quarantined=7,
        outbox_depth=4,
        outbox_oldest_age_s=12.5,
        outbox_bytes=4096,
        outbox_dropped={"heartbeat:full": 2, "alert:expired": 1},
        alerts_suppressed={"rate_limit_raised": 5},
        model=ModelRef(id="robot-arm", version=3),
        model_candidate=ModelRef(id="robot-arm", version=4),
        model_events={"probation": 1, "rejected": 2},
        drift="drifting",
        agent_version="0.3.0",
    )
    latency = LatencyHistogram()
    for seconds in (0.0002, 0.0008, 0.003, 0.2, 2.0):
        latency.observe(seconds)
    policy = make_policy(on_delay_windows=1)
    run(policy, [0.9])
    drifting = StreamDrift(
        state="drifting", drifting_features=2, max_psi=1.7, max_shift=3.2, top_feature="j1"
    )
    return MetricsSnapshot(
        heartbeat=beat,
        streams=(
            StreamMetrics(
                name="arm1",
                lines=10_000,
                windows=100,
                quarantined={"time_backwards": 5, "not_finite": 1},
                events={"raised": 2, "updated": 0, "cleared": 1},
                lag_bytes=2048,
                lag_seconds=1.25,
                drift=drifting,
            ),
            StreamMetrics(
                name='arm"2',
                lines=2345,
                windows=20,
                quarantined={"bad_header": 1},
                events={"raised": 0, "updated": 0, "cleared": 0},
                lag_bytes=0,
                lag_seconds=0.0,
                degraded="permission denied: /var/log/arm2",
            ),
        ),
        broker_connected=True,
        inference=latency,
        open_alerts=open_alerts_state("r1", "s1", [policy], now=1_780_000_000.0),
    )


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` → value of every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


class TestTheFile:
    def test_every_figure_is_written_with_its_labels(self) -> None:
        """Lines, windows, quarantine, latency, alerts, outbox, broker, model, lag, degraded, drift."""
        got = samples(render(full_snapshot()))
        expected = {
            'robotpm_agent_info{robot="r1",site="s1",version="0.3.0"}': 1,
            'robotpm_lines_total{stream="arm1"}': 10_000,
            'robotpm_windows_total{stream="arm\\"2"}': 20,
            'robotpm_quarantined_lines_total{stream="arm1",reason="time_backwards"}': 5,
            'robotpm_alert_events_total{stream="arm1",state="raised"}': 2,
            'robotpm_alert_events_suppressed_total{reason="rate_limit_raised"}': 5,
            'robotpm_open_alerts{severity="critical"}': 1,
            'robotpm_open_alerts{severity="warning"}': 0,
            'robotpm_inference_latency_seconds_bucket{le="0.001"}': 2,
            'robotpm_inference_latency_seconds_bucket{le="+Inf"}': 5,
            "robotpm_inference_latency_seconds_count": 5,
            "robotpm_outbox_messages": 4,
            "robotpm_outbox_oldest_age_seconds": 12.5,
            'robotpm_outbox_dropped_total{kind="heartbeat",reason="full"}': 2,
            "robotpm_broker_connected": 1,
            'robotpm_model_info{model="robot-arm",version="3"}': 1,
            'robotpm_model_candidate_info{model="robot-arm",version="4"}': 1,
            'robotpm_stream_lag_bytes{stream="arm1"}': 2048,
            'robotpm_stream_lag_seconds{stream="arm1"}': 1.25,
            'robotpm_stream_degraded{stream="arm\\"2"}': 1,
            'robotpm_stream_degraded_info{stream="arm\\"2",reason="permission denied: /var/log/arm2"}': 1,
            'robotpm_drift_state{stream="arm1",state="drifting"}': 1,
            'robotpm_drift_state{stream="arm1",state="ok"}': 0,
            'robotpm_drift_max_psi{stream="arm1"}': 1.7,
        }
        assert expected == {k: got.get(k) for k in expected}

    def test_promtool_check_metrics_finds_no_problem(self) -> None:
        """Prometheus' own linter accepts the file: types, HELP, counter names, units."""
        if PROMTOOL is None:
            pytest.fail("promtool is not installed (.ci/run installs Debian's prometheus package)")
        for snapshot in (full_snapshot(), MetricsSnapshot(heartbeat=full_snapshot().heartbeat)):
            done = subprocess.run(
                [PROMTOOL, "check", "metrics"],
                input=render(snapshot),
                capture_output=True,
                text=True,
                check=False,
            )
            assert (0, "", "") == (done.returncode, done.stdout, done.stderr)

    def test_the_file_appears_whole_and_nothing_else_is_left_beside_it(self, tmp_path: Path) -> None:
        """Written aside and renamed: a reader polling the file only ever sees complete contents."""
        path = tmp_path / "robotpm.prom"
        snapshot = full_snapshot()
        whole = render(snapshot)
        seen: list[str] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                try:
                    seen.append(path.read_text())
                except FileNotFoundError:
                    continue

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for _ in range(200):
                assert write_textfile(path, snapshot)
        finally:
            stop.set()
            thread.join()
        assert seen
        assert {whole} == set(seen)
        assert ["robotpm.prom"] == [p.name for p in tmp_path.iterdir()]

    def test_a_write_that_fails_is_reported_once_not_raised_and_the_recovery_too(
        self, tmp_path: Path
    ) -> None:
        """A missing directory: False, not an exception (metrics never stop the agent); logged once."""
        path = tmp_path / "absent" / "robotpm.prom"
        with structlog.testing.capture_logs() as logs:
            assert not write_textfile(path, full_snapshot())
            assert not write_textfile(path, full_snapshot())
            path.parent.mkdir()
            assert write_textfile(path, full_snapshot())
            assert write_textfile(path, full_snapshot())
        assert ["metrics_not_written", "metrics_written_again"] == [e["event"] for e in logs]


@pytest.fixture(name="node_exporter")
def _node_exporter(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """prometheus-node-exporter with only the textfile collector, on a free loopback port."""
    if NODE_EXPORTER is None:
        pytest.fail("prometheus-node-exporter is not installed (.ci/run installs it)")
    directory = tmp_path / "textfile"
    directory.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [
            NODE_EXPORTER,
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={directory}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout_s=30)
        yield f"http://127.0.0.1:{port}/metrics", directory
    finally:
        process.terminate()
        process.wait(timeout=10)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


class TestScrapedByNodeExporter:
    def test_node_exporter_serves_the_agents_figures_from_the_textfile_directory(
        self, node_exporter: tuple[str, Path]
    ) -> None:
        """Written each heartbeat, scraped by node_exporter: the figures arrive, no scrape error."""
        url, directory = node_exporter
        snapshot = full_snapshot()
        assert write_textfile(directory / "robotpm.prom", snapshot)
        deadline = time.monotonic() + 30
        while True:
            body = scrape(url)
            got = samples(body)
            if 'robotpm_lines_total{stream="arm1"}' in got:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        assert 0 == got["node_textfile_scrape_error"]
        assert 10_000 == got['robotpm_lines_total{stream="arm1"}']
        assert 1 == got['robotpm_drift_state{state="drifting",stream="arm1"}']  # node_exporter sorts labels
        served = {re.sub(r"(_bucket|_sum|_count)$", "", k.partition("{")[0]) for k in got}
        assert metric_names(snapshot) <= served


class TestGrafanaDashboard:
    def test_every_query_uses_only_metric_names_the_agent_writes(self) -> None:
        """docs/grafana-dashboard.json: each panel query names robotpm_ metrics that render() writes."""
        dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        variables = [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
        assert len(exprs) >= 10
        written = metric_names(full_snapshot())
        used: set[str] = set()
        for expr in exprs:
            names = {
                re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\brobotpm_[a-z0-9_]+", expr)
            }
            assert names, f"a query without an agent metric: {expr}"
            used |= names
        for definition in variables:
            used |= set(re.findall(r"\brobotpm_[a-z0-9_]+", definition))
        assert used <= written, f"unknown metrics: {sorted(used - written)}"
        assert written - used <= {"robotpm_uptime_seconds", "robotpm_shelved_alerts"}, (
            "metrics left off the dashboard"
        )
        # histogram suffixes are only stripped for the histogram itself
        for expr in exprs:
            for name in re.findall(r"\brobotpm_[a-z0-9_]+_(?:bucket|sum|count)\b", expr):
                assert name.rsplit("_", 1)[0] == "robotpm_inference_latency_seconds"
