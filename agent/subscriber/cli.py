"""``robotpm-alerts``: the subscriber's tool. Watch the alerts of a robot, a site or the fleet.

It subscribes (QoS 1) to the alert topics, the retained presence and the retained
open-alerts state of the chosen scope, drops duplicates by ``event_id`` (delivery is
at least once), and prints a live table for people or JSON lines for programs. It
starts from each robot's retained open alerts, so a restarted tool knows what is open
without replaying history. It can store every distinct event into SQLite
(``--store alerts.db``; de-duplicated across runs too) or CSV (``--store alerts.csv``).

``--drift-dir DIR`` makes it the bridge from MQTT to the trainer's stream mode: it
subscribes to the drift reports too and writes each one that asks for a retraining
into DIR as ``drift-<site>-<robot>-<stream>-<time>.json`` (written aside, then
renamed, so the trainer never reads half a file).

With ``--client-id`` the subscription is a persistent MQTT 5 session: alerts
published while the tool is not running are delivered when it comes back.
``--count N`` exits after N distinct alert events, ``--timeout S`` after S seconds.

Exit codes: 0 done (count reached, timeout without ``--count``, or interrupted);
1 ``--timeout`` passed before ``--count`` events arrived; 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import csv
import json
import queue
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from agent import __version__
from agent.atomicfile import write_atomically
from agent.config import MqttConfig, TlsConfig, load_agent_config
from agent.contract.alerts import AlertEvent, DriftReport, Heartbeat, OpenAlert, OpenAlerts, Presence
from agent.contract.errors import ConfigError
from agent.contract.topics import parse_robot_topic, subscription
from agent.publish.mqtt import read_credentials, tls_context

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_CONFIG = 2

_SESSION_EXPIRY_S = 7 * 24 * 3600


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``robotpm-alerts``."""
    p = argparse.ArgumentParser(
        prog="robotpm-alerts",
        description="Watch RobotPM alerts over MQTT: one robot, a site, or the whole fleet.",
    )
    p.add_argument("--version", action="version", version=f"robotpm-alerts {__version__}")
    scope = p.add_argument_group("scope")
    scope.add_argument("--site", default=None, help="only this site (default: every site)")
    scope.add_argument("--robot", default=None, help="only this robot (default: every robot)")
    scope.add_argument("--heartbeats", action="store_true", help="also show heartbeats")
    scope.add_argument("--no-presence", action="store_true", help="do not show robot presence")
    scope.add_argument("--drift", action="store_true", help="also show drift reports")
    broker = p.add_argument_group("broker")
    broker.add_argument("--config", type=Path, default=None, help="take the broker settings from agent.mqtt")
    broker.add_argument("--profile", default=None, help="profile of --config to apply")
    broker.add_argument("--host", default=None, help="broker host (default 127.0.0.1)")
    broker.add_argument("--port", type=int, default=None, help="broker port (default 1883)")
    broker.add_argument("--ca-file", type=Path, default=None, help="CA certificate: turns TLS on")
    broker.add_argument("--cert-file", type=Path, default=None, help="client certificate (TLS)")
    broker.add_argument("--key-file", type=Path, default=None, help="client key (TLS)")
    broker.add_argument("--credentials-file", type=Path, default=None, help="file holding username:password")
    broker.add_argument(
        "--client-id", default=None, help="persistent session under this id (default: a throw-away session)"
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    out.add_argument("--store", type=Path, default=None, help="also store events: *.csv, else SQLite")
    out.add_argument(
        "--drift-dir",
        type=Path,
        default=None,
        help="write drift reports that ask for a retraining here, for robotpm-train --mode stream",
    )
    out.add_argument("--count", type=int, default=None, help="exit after this many distinct alert events")
    out.add_argument("--timeout", type=float, default=None, help="exit after this many seconds")
    return p


# -- sinks -----------------------------------------------------------------------------------


class Store(Protocol):
    """Where distinct alert events are kept."""

    def add(self, event: AlertEvent, payload: bytes) -> bool:
        """Store one event; False if it was already stored (a duplicate across runs)."""

    def close(self) -> None:
        """Flush and close."""


_CSV_FIELDS = (
    "event_id",
    "alert_id",
    "emitted_at",
    "site",
    "robot_id",
    "stream",
    "component",
    "failure_mode",
    "state",
    "severity",
    "score",
    "threshold",
    "window_start",
    "window_end",
    "source_file",
    "model",
    "replayed",
    "top_features",
)


def _row(event: AlertEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "alert_id": event.alert_id,
        "emitted_at": event.emitted_at.isoformat(),
        "site": event.site,
        "robot_id": event.robot_id,
        "stream": event.stream,
        "component": event.component,
        "failure_mode": event.failure_mode,
        "state": event.state,
        "severity": event.severity or "",
        "score": event.score,
        "threshold": event.threshold,
        "window_start": event.window.start,
        "window_end": event.window.end,
        "source_file": event.window.source_file,
        "model": f"{event.model.id}@{event.model.version}",
        "replayed": int(event.replayed),
        "top_features": ";".join(f"{f.name}={f.value:.6g}(z={f.z:+.2f})" for f in event.top_features),
    }


class SqliteStore:
    """Events in a SQLite table keyed by ``event_id`` (duplicates ignored, across runs too)."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(str(path))
        columns = ", ".join(
            f"{c} TEXT" if c != "event_id" else "event_id TEXT PRIMARY KEY" for c in _CSV_FIELDS
        )
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS alerts ({columns}, payload TEXT NOT NULL)")
        self._conn.commit()

    def add(self, event: AlertEvent, payload: bytes) -> bool:
        """Insert unless the event_id is already stored."""
        row = _row(event)
        names = (*_CSV_FIELDS, "payload")
        cursor = self._conn.execute(
            f"INSERT OR IGNORE INTO alerts ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            [*(row[c] for c in _CSV_FIELDS), payload.decode()],
        )
        self._conn.commit()
        return cursor.rowcount == 1

    def close(self) -> None:
        """Close the database."""
        self._conn.close()


class CsvStore:
    """Events appended to a CSV file with a header (written when the file is new)."""

    def __init__(self, path: Path) -> None:
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=_CSV_FIELDS)
        if new:
            self._writer.writeheader()

    def add(self, event: AlertEvent, payload: bytes) -> bool:
        """Append one row."""
        self._writer.writerow(_row(event))
        self._file.flush()
        return True

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def open_store(path: Path) -> Store:
    """A CSV store for ``*.csv``, else SQLite."""
    return CsvStore(path) if path.suffix.lower() == ".csv" else SqliteStore(path)


# -- the watcher -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What was seen so far."""

    alerts: int = 0
    duplicates: int = 0
    invalid: int = 0
    presence: int = 0
    heartbeats: int = 0
    drift: int = 0


class Printer:
    """Renders events as a live table or JSON lines."""

    _HEADER = (
        f"{'time (UTC)':<19}  {'site/robot':<24}  {'component/failure mode':<30}  {'state':<8}  "
        f"{'severity':<8}  {'score':>8}  {'thr':>7}  top feature"
    )

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self._out = out
        self._json = as_json
        self._header = False

    def _line(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def alert(self, event: AlertEvent, payload: bytes) -> None:
        """One distinct alert event."""
        if self._json:
            self._line(json.dumps({"kind": "alert", "event": json.loads(payload)}, separators=(",", ":")))
            return
        if not self._header:
            self._line(self._HEADER)
            self._header = True
        top = event.top_features[0] if event.top_features else None
        feature = f"{top.name}={top.value:.4g} (z {top.z:+.1f})" if top else ""
        flag = " [replayed]" if event.replayed else ""
        self._line(
            f"{event.emitted_at.strftime('%Y-%m-%d %H:%M:%S'):<19}  "
            f"{event.site + '/' + event.robot_id:<24.24}  "
            f"{event.component + '/' + event.failure_mode:<30.30}  {event.state:<8}  "
            f"{event.severity or '-':<8}  {event.score:>8.4g}  {event.threshold:>7.4g}  {feature}{flag}"
        )

    def open_summary(self, open_alerts: Sequence[tuple[str, str, OpenAlert]]) -> None:
        """The alerts still open when the tool exits (table mode only; JSON readers keep their own)."""
        if self._json:
            return
        if not open_alerts:
            self._line("# no open alerts seen")
            return
        self._line(f"# {len(open_alerts)} open alert(s):")
        for site, robot, alert in sorted(
            open_alerts, key=lambda a: (a[0], a[1], a[2].component, a[2].failure_mode)
        ):
            self._line(f"#   {site}/{robot}  {_describe(alert)}")

    def open_alerts(self, record: OpenAlerts, retained: bool) -> None:
        """A robot's open alerts (retained: the state when we subscribed)."""
        if self._json:
            body = {
                "kind": "open_alerts",
                "retained": retained,
                "open_alerts": record.model_dump(mode="json"),
            }
            self._line(json.dumps(body, separators=(",", ":")))
            return
        self._line(f"# robot {record.site}/{record.robot_id} has {record.count} open alert(s)")
        for alert in record.alerts:
            self._line(f"#   {_describe(alert)}")

    def drift(self, report: DriftReport) -> None:
        """A drift report."""
        if self._json:
            self._line(
                json.dumps({"kind": "drift", "drift": report.model_dump(mode="json")}, separators=(",", ":"))
            )
            return
        top = report.features[0] if report.features else None
        detail = ""
        if top is not None:
            psi = "-" if top.psi is None else f"{top.psi:.3g}"
            detail = f"; top {top.name} (PSI {psi}, shift {top.shift:+.2f} std)"
        self._line(
            f"# drift {report.site}/{report.robot_id}/{report.stream}: {report.state}, "
            f"{report.drifting_features} feature(s) drifting over {report.windows} windows{detail}"
        )

    def presence(self, record: Presence, retained: bool) -> None:
        """A robot going online or offline (retained: the state when we subscribed)."""
        if self._json:
            body = {"kind": "presence", "retained": retained, "presence": record.model_dump(mode="json")}
            self._line(json.dumps(body, separators=(",", ":")))
            return
        since = f" since {record.since.strftime('%Y-%m-%d %H:%M:%S')}" if record.since else ""
        reason = f" ({record.reason})" if record.reason else ""
        self._line(f"# robot {record.site}/{record.robot_id} is {record.state.upper()}{since}{reason}")

    def heartbeat(self, record: Heartbeat) -> None:
        """A heartbeat."""
        if self._json:
            body = {"kind": "heartbeat", "heartbeat": record.model_dump(mode="json")}
            self._line(json.dumps(body, separators=(",", ":")))
            return
        model = f"{record.model.id}@{record.model.version}" if record.model else "-"
        self._line(
            f"# heartbeat {record.site}/{record.robot_id}: lines {record.lines}, windows {record.windows}, "
            f"alerts {record.alerts}, quarantined {record.quarantined}, outbox {record.outbox_depth}, "
            f"model {model}, drift {record.drift}, up {record.uptime_s:.0f}s"
        )


def _describe(alert: OpenAlert) -> str:
    shelved = " [shelved]" if alert.shelved else ""
    return (
        f"{alert.component}/{alert.failure_mode}  {alert.severity}{shelved}  "
        f"since window {alert.raised_window} ({alert.stream}, model {alert.model.id}@{alert.model.version})"
    )


def _open_from_event(event: AlertEvent) -> OpenAlert:
    assert event.severity is not None  # raised and updated events carry one
    return OpenAlert(
        alert_id=event.alert_id,
        stream=event.stream,
        component=event.component,
        failure_mode=event.failure_mode,
        severity=event.severity,
        score=event.score,
        raised_window=event.window.index,  # an update seen without its raise: open at least since then
        last_event_time=event.window.end,
        model=event.model,
    )


def write_drift_report(directory: Path, report: DriftReport, payload: bytes) -> Path:
    """Write a drift report into `directory` under a new name, atomically (aside, then renamed)."""
    stamp = report.sent_at.strftime("%Y%m%dT%H%M%S%fZ")
    name = f"drift-{report.site}-{report.robot_id}-{report.stream}-{stamp}.json"
    return write_atomically(directory / name, payload, 0o644, sync_directory=False)


class Watcher:
    """Subscribes and turns received messages into printed, stored, de-duplicated events."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        site: str | None,
        robot: str | None,
        client_id: str | None,
        presence: bool,
        heartbeats: bool,
        printer: Printer,
        store: Store | None,
        drift: bool = False,
        drift_dir: Path | None = None,
    ) -> None:
        self._config = config
        self._printer = printer
        self._store = store
        self._drift_dir = drift_dir
        self._show_drift = drift
        self._seen: set[str] = set()
        self.tally = Tally()
        self.open_alerts: dict[str, tuple[str, str, OpenAlert]] = {}  # alert_id -> (site, robot, alert)
        self.drift_files: list[Path] = []
        self._queue: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._topics = [subscription("alerts", site, robot), subscription("open_alerts", site, robot)]
        if presence:
            self._topics.append(subscription("status", site, robot))
        if heartbeats:
            self._topics.append(subscription("heartbeat", site, robot))
        if drift or drift_dir is not None:
            self._topics.append(subscription("drift", site, robot))
        persistent = client_id is not None
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"robotpm-alerts-{uuid.uuid4().hex[:12]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.reconnect_delay_set(1, 10)
        if config.tls is not None:
            self._client.tls_set_context(tls_context(config.tls))
        credentials = read_credentials(config)
        if credentials is not None:
            self._client.username_pw_set(*credentials)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = _SESSION_EXPIRY_S if persistent else 0
        self._client.connect_async(
            config.host,
            config.port,
            keepalive=config.keepalive_s,
            clean_start=not persistent,
            properties=properties,
        )

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            sys.stderr.write(f"robotpm-alerts: broker refused the connection: {reason}\n")
            return
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put((message.topic, bytes(message.payload), bool(message.retain)))

    def start(self) -> None:
        """Connect in the background."""
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def next(self, timeout: float) -> bool:
        """Handle one received message; False if none arrived within `timeout`."""
        try:
            topic, payload, retained = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return False
        self.handle(topic, payload, retained)
        return True

    def handle(self, topic: str, payload: bytes, retained: bool) -> None:
        """Validate, de-duplicate, print and store one message."""
        parsed = parse_robot_topic(topic)
        kind = parsed[2] if parsed else ""
        try:
            if kind == "alerts":
                event = AlertEvent.model_validate_json(payload)
                if event.event_id in self._seen:
                    self.tally.duplicates += 1
                    return
                self._seen.add(event.event_id)
                if self._store is not None and not self._store.add(event, payload):
                    self.tally.duplicates += 1
                    return
                self.tally.alerts += 1
                if event.state == "cleared":
                    self.open_alerts.pop(event.alert_id, None)
                else:
                    known = self.open_alerts.get(event.alert_id)
                    alert = _open_from_event(event)
                    if known is not None and event.state == "updated":
                        alert = alert.model_copy(update={"raised_window": known[2].raised_window})
                    self.open_alerts[event.alert_id] = (event.site, event.robot_id, alert)
                self._printer.alert(event, payload)
            elif kind == "open_alerts":
                if not payload:
                    return  # a cleared retained state
                state = OpenAlerts.model_validate_json(payload)
                # The robot's retained state is authoritative: it replaces what we knew of it.
                for alert_id, (site, robot, _) in list(self.open_alerts.items()):
                    if (site, robot) == (state.site, state.robot_id):
                        del self.open_alerts[alert_id]
                for alert in state.alerts:
                    self.open_alerts[alert.alert_id] = (state.site, state.robot_id, alert)
                self._printer.open_alerts(state, retained)
            elif kind == "drift":
                report = DriftReport.model_validate_json(payload)
                self.tally.drift += 1
                if self._drift_dir is not None and report.retrain:
                    self.drift_files.append(write_drift_report(self._drift_dir, report, payload))
                if self._show_drift:
                    self._printer.drift(report)
            elif kind == "status":
                if not payload:
                    return  # a cleared retained status
                self.tally.presence += 1
                self._printer.presence(Presence.model_validate_json(payload), retained)
            elif kind == "heartbeat":
                self.tally.heartbeats += 1
                self._printer.heartbeat(Heartbeat.model_validate_json(payload))
        except OSError as exc:
            self.tally.invalid += 1
            sys.stderr.write(f"robotpm-alerts: cannot write the drift report from {topic}: {exc}\n")
        except ValidationError as exc:
            self.tally.invalid += 1
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            sys.stderr.write(f"robotpm-alerts: invalid message on {topic}: {where}: {first['msg']}\n")


def _mqtt_config(args: argparse.Namespace) -> MqttConfig:
    base = MqttConfig()
    if args.config is not None:
        base = load_agent_config(args.config, args.profile).mqtt
    data = base.model_dump()
    data["client_id"] = None
    if args.host is not None:
        data["host"] = args.host
    if args.port is not None:
        data["port"] = args.port
    if args.credentials_file is not None:
        data["credentials_file"] = args.credentials_file
    if args.ca_file is not None:
        data["tls"] = TlsConfig(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file)
    try:
        return MqttConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError("(arguments)", ".".join(str(p) for p in first["loc"]), first["msg"]) from None


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the tool; returns the exit code."""
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    if args.count is not None and args.count < 1:
        sys.stderr.write("robotpm-alerts: --count must be at least 1\n")
        return EXIT_CONFIG
    store: Store | None = None
    printer = Printer(out, as_json=args.json)
    try:
        config = _mqtt_config(args)
        store = open_store(args.store) if args.store is not None else None
        if args.drift_dir is not None:
            args.drift_dir.mkdir(parents=True, exist_ok=True)
        watcher = Watcher(
            config,
            site=args.site,
            robot=args.robot,
            client_id=args.client_id,
            presence=not args.no_presence,
            heartbeats=args.heartbeats,
            printer=printer,
            store=store,
            drift=args.drift,
            drift_dir=args.drift_dir,
        )
    except (ConfigError, ValueError) as exc:
        sys.stderr.write(f"robotpm-alerts: {exc}\n")
        return EXIT_CONFIG
    except (OSError, sqlite3.Error) as exc:
        sys.stderr.write(f"robotpm-alerts: cannot open the store: {exc}\n")
        return EXIT_CONFIG
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    watcher.start()
    try:
        while not stop.is_set():
            if args.count is not None and watcher.tally.alerts >= args.count:
                break
            remaining = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if remaining <= 0:
                break
            watcher.next(remaining)
    finally:
        watcher.stop()
        if store is not None:
            store.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    printer.open_summary(list(watcher.open_alerts.values()))
    t = watcher.tally
    sys.stderr.write(
        f"robotpm-alerts: {t.alerts} alert events, {t.duplicates} duplicates dropped, "
        f"{t.invalid} invalid, {t.presence} presence updates\n"
    )
    if args.count is not None and t.alerts < args.count:
        return EXIT_INCOMPLETE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
