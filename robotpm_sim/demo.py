"""The end-to-end demo: a simulated robot develops a fault, the agent scores it, alerts arrive over MQTT.

Run it with ``./dev demo`` (or ``python -m robotpm_sim.demo``). It uses the broker at
``--broker`` (default 127.0.0.1:1883) when one answers there; otherwise it starts
its own on a free loopback port: the ``mosquitto`` binary when installed, else an
embedded Python broker (amqtt, from the ``demo`` extra). Everything it writes goes
to ``--workdir`` (default ``demo-run/``), wiped at start.

It exits 0 once the subscriber has seen an alert raised (and, within the time
limit, cleared), 1 if no alert arrived in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBSCRIBER_ID = "robotpm-demo-subscriber"


@dataclass
class DemoBroker:
    """Where the demo's broker is, and how to stop it if the demo started it."""

    host: str
    port: int
    kind: str
    stop: Any = None


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not _answers("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the demo broker did not start listening on 127.0.0.1:{port}")
        time.sleep(0.05)


def start_broker(host: str, port: int, workdir: Path, prefer: str = "auto") -> DemoBroker:
    """Use a reachable broker, else start mosquitto, else an embedded amqtt broker."""
    if prefer == "auto" and _answers(host, port):
        return DemoBroker(host, port, "existing")
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )
    own_port = _free_port()
    if binary and prefer in ("auto", "mosquitto"):
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {own_port} 127.0.0.1\nallow_anonymous true\n")
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_port(own_port)

        def stop_mosquitto() -> None:
            proc.terminate()
            proc.wait(timeout=10)

        return DemoBroker("127.0.0.1", own_port, f"mosquitto (pid {proc.pid})", stop_mosquitto)
    return _start_amqtt(own_port)


def _start_amqtt(port: int) -> DemoBroker:
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise RuntimeError(
            "no MQTT broker reachable, no mosquitto binary, and the embedded broker is not installed: "
            "pip install 'robotpm[demo]'"
        ) from None
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)  # it logs every probe of its port as an error
    ready, stopping = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(config)
        await broker.start()
        ready.set()
        while not stopping.is_set():
            await asyncio.sleep(0.1)
        await broker.shutdown()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported to the main thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="demo-amqtt", daemon=True)
    thread.start()
    ready.wait(15)
    if failure:
        raise RuntimeError(f"the embedded broker failed to start: {failure[0]}")
    _wait_port(port)

    def stop_amqtt() -> None:
        stopping.set()
        thread.join(10)

    return DemoBroker("127.0.0.1", port, "embedded amqtt (MQTT 3.1.1)", stop_amqtt)


@dataclass
class AlertWatcher:
    """An MQTT subscriber that prints the robot's alerts live and remembers what it saw."""

    host: str
    port: int
    site: str
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    raised: threading.Event = field(default_factory=threading.Event)
    cleared: threading.Event = field(default_factory=threading.Event)
    _client: Any = None

    def start(self) -> None:
        """Connect and subscribe to the site's topics."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=SUBSCRIBER_ID, protocol=mqtt.MQTTv311)
        client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"robotpm/v1/{self.site}/#", qos=1)
        client.on_message = self._on_message
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        self._client = client

    def stop(self) -> None:
        """Disconnect."""
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        kind = message.topic.rsplit("/", 1)[-1]
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        stamp = time.strftime("%H:%M:%S")
        if kind == "alerts":
            event_id = body["event_id"]
            if event_id in self.seen:
                self.duplicates += 1
                return
            self.seen[event_id] = body
            top = body.get("top_features") or []
            why = ", ".join(f"{f['name']} z={f['z']:+.1f}" for f in top[:3])
            print(
                f"{stamp}  ALERT {body['state']:<8} {body['severity'] or '-':<8} {body['robot_id']}/"
                f"{body['component']}/{body['failure_mode']}  score {body['score']:.2f} "
                f"(threshold {body['threshold']:.2f})  window #{body['window']['index']}  why: {why}",
                flush=True,
            )
            if body["state"] == "raised":
                self.raised.set()
            elif body["state"] == "cleared":
                self.cleared.set()
        elif kind == "status":
            print(f"{stamp}  presence: {body.get('robot_id')} is {body.get('state')}", flush=True)
        elif kind == "model":
            model = body.get("model", {})
            print(
                f"{stamp}  model: {body.get('robot_id')} runs {model.get('id')}@{model.get('version')}",
                flush=True,
            )


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; see the module docstring."""
    from agent.cli import stop_on_signals
    from agent.config import load_agent_config
    from agent.daemon import AgentDaemon
    from agent.logs import configure_logging
    from robotpm_sim.live import run_live

    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    logs = workdir / "logs" / "arm1"
    logs.mkdir(parents=True)
    host, _, port = args.broker.partition(":")
    broker = start_broker(host, int(port or 1883), workdir, args.broker_kind)
    print(f"broker: {broker.kind} at {broker.host}:{broker.port}", flush=True)
    base = load_agent_config(args.config, environ={})
    config = base.model_copy(
        update={
            "state_dir": workdir / "state",
            "log_level": "warning" if not args.verbose else "info",
            "streams": (base.streams[0].model_copy(update={"directory": logs}),),
            "model": base.model.model_copy(update={"directory": workdir / "models"}),
            # amqtt speaks MQTT 3.1.1 only and drops an MQTT 5 CONNECT instead of refusing it,
            # so the transport's automatic fallback never sees a refusal to act on.
            "mqtt": base.mqtt.model_copy(
                update={
                    "host": broker.host,
                    "port": broker.port,
                    "protocol": "3.1.1" if broker.kind.startswith("embedded") else base.mqtt.protocol,
                }
            ),
            "heartbeat_interval_s": 5.0,
        }
    )
    configure_logging(config.log_level, "console")
    watcher = AlertWatcher(broker.host, broker.port, config.site)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        watcher.start()
        simulator = threading.Thread(
            target=run_live,
            name="demo-simulator",
            kwargs={
                "out_dir": logs,
                "rate_hz": args.rate_hz,
                "seed": args.seed,
                "fault": args.fault,
                "fault_after_s": args.fault_after_s,
                "fault_duration_s": args.fault_duration_s,
                "rotate_bytes": 2_000_000,
                "keep": 3,
                "duration_s": None,
                "stop_event": stop,
            },
        )
        agent = AgentDaemon(config)
        agent_thread = threading.Thread(target=agent.run, args=(stop,), name="demo-agent")
        threads = [simulator, agent_thread]
        print(
            f"robot {config.robot_id}: healthy for {args.fault_after_s:.0f} s, then {args.fault} "
            f"develops over {args.fault_duration_s:.0f} s; watching robotpm/v1/{config.site}/# "
            "(Ctrl-C to stop)",
            flush=True,
        )
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + args.timeout_s
        with stop_on_signals(stop):
            while not stop.is_set() and time.monotonic() < deadline:
                if watcher.raised.is_set() and (watcher.cleared.is_set() or args.stop_after_raise):
                    break
                stop.wait(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        watcher.stop()
        if broker.stop is not None:
            broker.stop()
    states = [a["state"] for a in watcher.seen.values()]
    print(
        f"\nsummary: {len(watcher.seen)} alert event(s) received "
        f"({states.count('raised')} raised, {states.count('updated')} updated, "
        f"{states.count('cleared')} cleared), "
        f"{watcher.duplicates} duplicate(s) de-duplicated by event_id; agent state in {workdir / 'state'}",
        flush=True,
    )
    if not watcher.raised.is_set():
        print("demo: no alert arrived before the time limit", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The demo's argument parser."""
    parser = argparse.ArgumentParser(prog="robotpm-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config.toml"))
    parser.add_argument("--workdir", type=Path, default=Path("demo-run"))
    parser.add_argument("--broker", default="127.0.0.1:1883", help="use this broker if it answers")
    parser.add_argument("--broker-kind", choices=("auto", "mosquitto", "embedded"), default="auto")
    parser.add_argument("--fault", default="bearing_wear")
    parser.add_argument("--fault-after-s", type=float, default=10.0)
    parser.add_argument("--fault-duration-s", type=float, default=30.0)
    parser.add_argument("--rate-hz", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--stop-after-raise", action="store_true", help="stop once an alert is raised")
    parser.add_argument("--verbose", action="store_true", help="show the agent's own log lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the demo."""
    return run_demo(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
