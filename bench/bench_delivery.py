"""Delivery benchmarks: outbox catch-up throughput and live latency, each against a baseline in the same run.

1. Catch-up: N alert events (real AlertEvent JSON, ~1 KiB) wait in the outbox, as
   after an outage; then the broker is reachable and Delivery drains them through
   MqttTransport. Baseline: plain paho publishing the same payloads at QoS 1
   with the same in-flight window and no outbox (nothing durable).
2. Live: a 1 kHz loop (the line rate) pumps delivery every tick; every
   ``--alert-every``-th tick an alert is enqueued in its own SQLite transaction
   (synchronous=FULL, as the daemon commits a tick with alerts); latency is
   enqueue → received by an MQTT subscriber. Baseline: plain paho publish → received.

The broker runs with ``set_tcp_nodelay true`` (mosquitto's default is Nagle on,
which adds ~40 ms to the broker → subscriber leg).

Usage: .venv/bin/python bench/bench_delivery.py [--n 20000] [--seconds 5] [--alert-every 20]
Needs the mosquitto binary; starts its own broker on a free loopback port.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.config import MqttConfig, OutboxConfig  # noqa: E402
from agent.contract.topics import RobotTopics  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from agent.publish.delivery import Delivery  # noqa: E402
from agent.publish.mqtt import MqttTransport  # noqa: E402
from agent.publish.telemetry import alert_message  # noqa: E402
from agent.seams import OutboundMessage, SystemClock  # noqa: E402
from agent.state import StateStore  # noqa: E402
from tests.mosquitto import Broker  # noqa: E402
from tests.test_policy import make_policy, run  # noqa: E402

TOPICS = RobotTopics("bench", "robot1")


def sample_payload() -> bytes:
    event = run(make_policy(on_delay_windows=1, top_features=5), [0.9])[0]
    return alert_message(TOPICS, event).payload


class Subscriber:
    """Counts messages and records the receive time of each, keyed by the first 12 payload bytes."""

    def __init__(self, port: int) -> None:
        self.received: dict[bytes, float] = {}
        self.count = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_connect = lambda c, *a: c.subscribe(TOPICS.alerts, qos=1)
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.on_socket_open = lambda c, u, s: s.setsockopt(6, 1, 1)  # TCP_NODELAY
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._ready.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        with self._lock:
            self.received[bytes(msg.payload[:12])] = now
            self.count += 1

    def wait_count(self, n: int, timeout: float = 120.0) -> None:
        """Block until n messages arrived (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def paho_client() -> mqtt.Client:
    return mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)


def keyed(i: int, body: bytes) -> bytes:
    return f"{i:012d}".encode() + body


def transport(port: int, inflight: int) -> MqttTransport:
    cfg = MqttConfig(port=port, max_inflight=inflight, reconnect_min_s=1, reconnect_max_s=1)
    t = MqttTransport(cfg, robot_id="robot1", site="bench", agent_version="bench", clock=SystemClock())
    t.start()
    while not t.connected:
        time.sleep(0.01)
    return t


def catch_up_outbox(port: int, workdir: Path, n: int, body: bytes, inflight: int, run: int = 0) -> float:
    outbox = Outbox(StateStore(workdir / f"catchup-{inflight}-{run}.db"), OutboxConfig(), SystemClock())
    with outbox.store.transaction() as conn:
        outbox.enqueue(
            conn, [OutboundMessage(f"k{i}", "alert", TOPICS.alerts, keyed(i, body)) for i in range(n)]
        )
    sub = Subscriber(port)
    t = transport(port, inflight)
    delivery = Delivery(outbox, t, max_inflight=inflight)
    start = time.perf_counter()
    while outbox.depth():
        if not delivery.pump():
            time.sleep(0.0002)
    sub.wait_count(n)
    elapsed = time.perf_counter() - start
    t.stop()
    sub.close()
    outbox.store.close()
    return n / elapsed


def catch_up_paho(port: int, n: int, body: bytes, inflight: int) -> float:
    sub = Subscriber(port)
    done = threading.Event()
    acked = [0]

    def on_publish(*args: object) -> None:
        acked[0] += 1
        if acked[0] >= n:
            done.set()

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.max_inflight_messages_set(inflight)
    client.on_publish = on_publish
    client.on_socket_open = lambda c, u, s: s.setsockopt(6, 1, 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    for i in range(n):
        client.publish(TOPICS.alerts, keyed(i, body), qos=1)
    done.wait(120)
    sub.wait_count(n)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    sub.close()
    return n / elapsed


def paced(seconds: float, rate_hz: float, step: Callable[[int], None], idle: Callable[[], None]) -> int:
    """Call step(i) at rate_hz for `seconds`, idle() in between; returns how many steps ran."""
    period = 1.0 / rate_hz
    start = time.perf_counter()
    i = 0
    while True:
        now = time.perf_counter()
        if now - start >= seconds:
            return i
        due = start + i * period
        if now >= due:
            step(i)
            i += 1
        else:
            idle()
            time.sleep(min(0.0002, max(0.0, due - time.perf_counter())))


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return statistics.median(ordered), p99, ordered[-1]


def live_outbox(port: int, workdir: Path, seconds: float, body: bytes, every: int) -> tuple[list[float], int]:
    outbox = Outbox(StateStore(workdir / "live.db"), OutboxConfig(), SystemClock())
    sub = Subscriber(port)
    t = transport(port, 20)
    delivery = Delivery(outbox, t, max_inflight=20)
    sent: dict[bytes, float] = {}

    def step(i: int) -> None:
        if i % every == 0:
            payload = keyed(i, body)
            sent[payload[:12]] = time.perf_counter()
            with outbox.store.transaction() as conn:
                outbox.enqueue(conn, [OutboundMessage(f"live{i}", "alert", TOPICS.alerts, payload)])
        delivery.pump()

    paced(seconds, 1000.0, step, delivery.pump)
    n = len(sent)
    while outbox.depth():
        delivery.pump()
        time.sleep(0.001)
    sub.wait_count(n, 30)
    t.stop()
    sub.close()
    outbox.store.close()
    return [(sub.received[k] - v) * 1e3 for k, v in sent.items() if k in sub.received], n


def live_paho(port: int, seconds: float, body: bytes, every: int) -> tuple[list[float], int]:
    sub = Subscriber(port)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.max_inflight_messages_set(20)
    client.on_socket_open = lambda c, u, s: s.setsockopt(6, 1, 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent: dict[bytes, float] = {}

    def step(i: int) -> None:
        if i % every == 0:
            payload = keyed(i, body)
            sent[payload[:12]] = time.perf_counter()
            client.publish(TOPICS.alerts, payload, qos=1)

    paced(seconds, 1000.0, step, lambda: None)
    n = len(sent)
    sub.wait_count(n, 30)
    client.disconnect()
    client.loop_stop()
    sub.close()
    return [(sub.received[k] - v) * 1e3 for k, v in sent.items() if k in sub.received], n


def end_to_end(
    port: int, workdir: Path, seconds: float, watch: str, poll: float, coalesce: float
) -> list[float]:
    """The real agent follows a log written at 1 kHz; a spike every 100 lines raises an alert.

    Latency: the write of the line that completes the first window holding the spike
    (window 4, hop 2) → the "raised" event at a subscriber.
    """
    import json
    import os
    import subprocess

    from tests.agent_config import agent_config
    from tests.models import write_linear_model

    root = workdir / f"agent-{watch}"
    (root / "logs").mkdir(parents=True)
    write_linear_model(root / "bundled")
    (root / "config.toml").write_text(
        agent_config(
            port=port,
            robot_id="robot1",
            site="bench",
            ingest={"watch": watch, "poll_interval_s": poll, "coalesce_ms": coalesce},
            policy={"on_delay_windows": 1, "off_delay_windows": 2, "max_events_per_minute": 100000},
        )
    )
    received: dict[int, float] = {}
    sub = Subscriber(port)

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        event = json.loads(msg.payload)
        if event["state"] == "raised":
            received[int(event["window"]["index"])] = now

    sub.client.on_message = on_message
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBOTPM")}
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(root / "config.toml")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    written: dict[int, float] = {}  # window index -> time its completing line was written
    try:
        time.sleep(2.0)  # model load and connect
        log = (root / "logs" / "arm1.csv").open("a", buffering=1)
        log.write("ts,J1,T1\n")
        log.flush()

        def step(n: int) -> None:
            spike = n % 100 == 50
            log.write(f"{time.time():.6f},{100.0 if spike else 0.1},40.0\n")
            log.flush()
            # windows end at samples 3, 5, 7, …: window k ends at 2k + 3
            if n >= 3 and (n - 3) % 2 == 0 and (n % 100) in (50, 51):
                written[(n - 3) // 2] = time.perf_counter()

        paced(seconds, 1000.0, step, lambda: None)
        log.close()
        time.sleep(1.0)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        sub.close()
    return [(received[k] - t) * 1e3 for k, t in written.items() if k in received]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000, help="backlog size for the catch-up run")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each live run")
    parser.add_argument("--repeat", type=int, default=3, help="catch-up repetitions (medians are quoted)")
    parser.add_argument(
        "--alert-every", type=int, default=20, help="live runs: one alert per this many 1 kHz ticks"
    )
    parser.add_argument("--agent", action="store_true", help="also measure line → alert with the real agent")
    args = parser.parse_args()
    body = sample_payload()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(workdir=work / "broker", extra_config="max_queued_messages 0\nset_tcp_nodelay true\n")
        broker.start()
        try:
            print(f"payload {len(body)} bytes; backlog {args.n} alerts; live {args.seconds:.0f} s at 1 kHz\n")
            rows = []
            for inflight in (20, 100):
                base = statistics.median(
                    catch_up_paho(broker.port, args.n, body, inflight) for _ in range(args.repeat)
                )
                ours = statistics.median(
                    catch_up_outbox(broker.port, work, args.n, body, inflight, run=r)
                    for r in range(args.repeat)
                )
                rows.append((inflight, base, ours))
            print("catch-up throughput (messages/s, median of", args.repeat, "runs)")
            print(f"{'in flight':>10} {'paho, in RAM':>14} {'outbox+paho':>13} {'ratio':>7}")
            for inflight, base, ours in rows:
                print(f"{inflight:>10} {base:>14,.0f} {ours:>13,.0f} {ours / base:>7.2f}")
            print()
            base_lat, base_n = live_paho(broker.port, args.seconds, body, args.alert_every)
            ours_lat, ours_n = live_outbox(broker.port, work, args.seconds, body, args.alert_every)
            rate = 1000 / args.alert_every
            print(f"live latency: 1 kHz loop, {rate:.0f} alerts/s; publish or enqueue → subscriber (ms)")
            print(f"{'path':<34} {'sent':>6} {'recv':>6} {'p50':>7} {'p99':>7} {'max':>7}")
            for name, lat, n in (
                ("paho publish (baseline)", base_lat, base_n),
                ("outbox commit (FULL) + delivery", ours_lat, ours_n),
            ):
                p50, p99, worst = percentiles(lat)
                print(f"{name:<34} {n:>6} {len(lat):>6} {p50:>7.2f} {p99:>7.2f} {worst:>7.2f}")
            if args.agent:
                print()
                print("end to end at 1 kHz: line appended → raised alert at a subscriber (ms)")
                print(f"{'agent ingest':<34} {'alerts':>6} {'p50':>7} {'p99':>7} {'max':>7}")
                for label, watch, poll, coalesce in (
                    ("inotify, coalesce 5 ms", "auto", 0.25, 5.0),
                    ("poll every 10 ms", "poll", 0.01, 5.0),
                ):
                    lat = end_to_end(broker.port, work, args.seconds, watch, poll, coalesce)
                    if lat:
                        p50, p99, worst = percentiles(lat)
                        print(f"{label:<34} {len(lat):>6} {p50:>7.2f} {p99:>7.2f} {worst:>7.2f}")
                    else:
                        print(f"{label:<34} {0:>6}   (no alerts received)")
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
