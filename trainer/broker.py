"""The trainer's MQTT connection: TLS with a verified server certificate, and credentials.

`robotpm-train publish` and ``rollout-status`` connect through `connect`. Credentials come
from a file holding ``username:password`` on its first line (``--mqtt-credentials``, e.g. a
systemd credential) or from ``ROBOTPM_MQTT_USERNAME`` / ``ROBOTPM_MQTT_PASSWORD``; never from
the command line, where other users can read them. A password is never sent over a plain
TCP connection, and plain TCP at all needs ``allow_plain`` (a broker on the same host in
development): the broker's ACL (models/README.md) can only single out a trainer it
authenticates.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError

USERNAME_ENV = "ROBOTPM_MQTT_USERNAME"
PASSWORD_ENV = "ROBOTPM_MQTT_PASSWORD"


class BrokerError(TrainerError):
    """The broker cannot be reached, refuses the trainer, or the settings are unsafe."""


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is and how the trainer proves who it is."""

    host: str
    port: int = 8883
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    allow_plain: bool = False

    def __repr__(self) -> str:  # never the password
        return (
            f"BrokerSettings({self.host}:{self.port}, tls={self.ca_file is not None}, user={self.username!r})"
        )

    @classmethod
    def build(
        cls,
        host: str,
        port: int,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        credentials_file: Path | None = None,
        allow_plain: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> BrokerSettings:
        """Settings with credentials read from `credentials_file`, else the environment."""
        env = os.environ if environ is None else environ
        username, password = env.get(USERNAME_ENV) or None, env.get(PASSWORD_ENV) or None
        if credentials_file is not None:
            try:
                first = (
                    credentials_file.read_text().splitlines()[0] if credentials_file.stat().st_size else ""
                )
            except OSError as exc:
                raise BrokerError(f"{credentials_file}: cannot read the credentials: {exc.strerror}") from exc
            name, sep, secret = first.partition(":")
            if not name or not sep:
                raise BrokerError(f"{credentials_file}: expected 'username:password' on the first line")
            username, password = name, secret
        return cls(host, port, ca_file, cert_file, key_file, username, password, allow_plain)

    def check(self) -> None:
        """Raise `BrokerError` for settings that would expose the trainer."""
        if self.ca_file is None:
            if self.password is not None:
                raise BrokerError("a password is never sent over plain TCP: give --mqtt-ca-file for TLS")
            if not self.allow_plain:
                raise BrokerError(
                    "the broker connection needs TLS (--mqtt-ca-file) and credentials; plain TCP only with "
                    "--mqtt-allow-plain (a broker on this host, in development)"
                )


def connect(settings: BrokerSettings, *, client_id: str = "", timeout_s: float = 10.0) -> Any:
    """A connected paho client with its network loop running; `BrokerError` if that fails."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    settings.check()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
    if settings.ca_file is not None:
        try:
            context = ssl.create_default_context(cafile=str(settings.ca_file))
            if settings.cert_file is not None:
                context.load_cert_chain(
                    str(settings.cert_file), None if settings.key_file is None else str(settings.key_file)
                )
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"cannot load the TLS files: {exc}") from exc
        client.tls_set_context(context)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    outcome: dict[str, str] = {}
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            outcome["error"] = str(reason)
        done.set()

    client.on_connect = on_connect
    where = f"{settings.host}:{settings.port}"
    try:
        client.connect(settings.host, settings.port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"cannot connect to the broker {where}: {exc}") from exc
    client.loop_start()
    if not done.wait(timeout_s) or "error" in outcome:
        client.loop_stop()
        client.disconnect()
        raise BrokerError(f"the broker {where} refused the connection: {outcome.get('error', 'no answer')}")
    return client


def disconnect(client: Any) -> None:
    """Disconnect cleanly and stop the network loop."""
    client.disconnect()
    client.loop_stop()
