"""Publishing: the MQTT transport, its in-memory twin, outbox delivery and message builders."""

from typing import TYPE_CHECKING

from agent.publish.delivery import Delivery
from agent.publish.memory import InMemoryTransport, SentMessage
from agent.publish.mqtt import MqttTransport, read_credentials, tls_context
from agent.publish.telemetry import (
    ModelStatus,
    alert_message,
    heartbeat_message,
    heartbeat_record,
    model_status,
    model_status_message,
    presence,
    presence_message,
)

__all__ = [
    "Delivery",
    "InMemoryTransport",
    "ModelStatus",
    "MqttTransport",
    "SentMessage",
    "alert_message",
    "heartbeat_message",
    "heartbeat_record",
    "model_status",
    "model_status_message",
    "presence",
    "presence_message",
    "read_credentials",
    "tls_context",
]

if TYPE_CHECKING:  # mypy proves both transports satisfy the seam
    from agent.seams import Transport

    def _transports_conform(twin: InMemoryTransport, real: MqttTransport) -> tuple[Transport, Transport]:
        return twin, real
