"""Publishing: the MQTT transport, outbox delivery and the message builders.

The transport's in-memory twin is `agent.testing.InMemoryTransport`.
"""

from agent.publish.delivery import Delivery
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
    "ModelStatus",
    "MqttTransport",
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
