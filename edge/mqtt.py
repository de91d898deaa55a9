"""MQTT for a fleet of kiosks (`feredge detect SOURCE --mqtt mqtt://HOST:PORT/TOPIC`, `pip install
"feredge[mqtt]"`): every face event goes to TOPIC/events and a per-person summary to TOPIC/summary
every `--summary-every` seconds (and once at the end), as JSON, at QoS 1.

paho-mqtt's network thread does the sending, so detection never waits for the broker. While the broker
is away, messages wait in paho's queue, bounded at `queue_size` (default QUEUE_SIZE); paho reconnects
(1 s, doubling to 30 s) and sends them, in order, when the broker is back. When the queue is full, new
messages are dropped (the oldest are kept, so what arrives stays in order), counted, and said once per
outage. QoS 1 means at least once: after a reconnect a message may arrive twice (its `seq` tells).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from urllib.parse import unquote, urlparse

from feredge.edge.analytics import PeopleTally, face_row

# paho-mqtt (the `mqtt` extra) is imported where the client is made.

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000   # messages held while the broker is away: about 5 MB of events
DRAIN_TIMEOUT_S = 5.0  # at the end, how long to wait for the queue to reach the broker


class MqttError(Exception):
    """A bad --mqtt URL or option, or paho-mqtt missing; one line."""


def parse_url(url: str) -> dict:
    """mqtt://[user[:password]@]host[:port]/topic (mqtts:// for TLS; default ports 1883 / 8883)."""
    parts = urlparse(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise MqttError(f"--mqtt wants mqtt://HOST[:PORT]/TOPIC or mqtts://..., got {url!r}")
    topic = parts.path.strip("/")
    if not topic or "+" in topic or "#" in url:  # urlparse reads a '#' as the start of a fragment
        raise MqttError(f"--mqtt {url!r}: name a topic without wildcards, e.g. mqtt://{parts.hostname}/kiosks/door")
    tls = parts.scheme == "mqtts"
    return {"host": parts.hostname, "port": parts.port or (8883 if tls else 1883), "topic": topic, "tls": tls,
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None}


class MqttPublisher:
    """Publishes JSON messages to one broker from paho's background thread."""

    def __init__(self, url: str, username: str | None = None, password: str | None = None, tls: bool = False,
                 ca_file: str | None = None, queue_size: int = QUEUE_SIZE, client_id: str | None = None):
        try:
            import paho.mqtt.client as paho
        except ImportError:
            raise MqttError('--mqtt needs paho-mqtt: pip install "feredge[mqtt]"') from None
        self.paho = paho
        cfg = parse_url(url)
        self.topic, self.where = cfg["topic"], f"{cfg['host']}:{cfg['port']}"
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or f"feredge-{socket.gethostname()}-{os.getpid()}")
        user = username or cfg["username"]
        secret = password or cfg["password"] or os.environ.get("FEREDGE_MQTT_PASSWORD")
        if user:
            self.client.username_pw_set(user, secret)
        if tls or cfg["tls"] or ca_file:
            if ca_file and not os.path.isfile(ca_file):
                raise MqttError(f"--mqtt-ca: no such file: {ca_file}")
            self.client.tls_set(ca_certs=ca_file)
        self.client.max_queued_messages_set(queue_size)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect, self.client.on_disconnect = self._on_connect, self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.queue_size, self.seq, self.dropped = queue_size, 0, 0
        self.connected = threading.Event()
        self._outage_said = self._dropping = False
        self.client.connect_async(cfg["host"], cfg["port"], keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            self._say_outage(f"refused the connection: {reason}")
            return
        if self._outage_said:
            log.warning("MQTT broker %s is back: sending what was queued", self.where)
        self._outage_said = self._dropping = False
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        self.connected.clear()
        if reason.is_failure:
            self._say_outage(f"went away ({reason})")

    def _on_connect_fail(self, client, userdata):
        self._say_outage("does not answer")

    def _say_outage(self, what: str):
        if not self._outage_said:  # once per outage, not once per retry
            log.warning("MQTT broker %s %s: detection goes on, up to %d messages are queued and sent when it is "
                        "back (paho reconnects)", self.where, what, self.queue_size)
            self._outage_said = True

    def publish(self, kind: str, payload: dict):
        self.seq += 1
        info = self.client.publish(f"{self.topic}/{kind}", json.dumps({"seq": self.seq, **payload}), qos=1)
        if info.rc == self.paho.MQTT_ERR_QUEUE_SIZE:
            if not self._dropping:  # once until the broker is back
                log.warning("MQTT queue full (%d messages for %s): dropping new messages", self.queue_size, self.where)
                self._dropping = True
            self.dropped += 1

    def pending(self) -> int:
        return len(self.client._out_messages)  # paho keeps unacknowledged and queued messages here

    def close(self, timeout_s: float = DRAIN_TIMEOUT_S) -> dict:
        """Wait (up to timeout_s) for what is queued to be acknowledged, then disconnect."""
        end = time.monotonic() + timeout_s
        while self.pending() and time.monotonic() < end:
            time.sleep(0.05)
        left = self.pending()
        if left:
            log.warning("MQTT: %d messages not delivered to %s (broker away at the end)", left, self.where)
        self.client.disconnect()
        self.client.loop_stop()
        return {"mqtt_sent": self.seq - self.dropped - left, "mqtt_dropped": self.dropped, "mqtt_undelivered": left}


class MqttSink:
    """The capture loop's MQTT output: face events, and a per-person summary at an interval."""

    def __init__(self, publisher: MqttPublisher, source: str, live: bool, summary_every_s: float):
        self.publisher, self.source, self.summary_every_s = publisher, source, summary_every_s
        self.tally = PeopleTally(source, live)
        self.last_summary = time.monotonic()

    def add(self, frame: int, t: float, faces, detected: bool, wall: float | None = None):
        for face in faces:
            self.publisher.publish("events", {"source": self.source, **face_row(frame, t, face, detected, wall)})
        self.tally.add(t, faces)
        if time.monotonic() - self.last_summary >= self.summary_every_s:
            self.publisher.publish("summary", self.tally.summary())
            self.last_summary = time.monotonic()

    def close(self) -> dict:
        self.tally.finish()
        self.publisher.publish("summary", {**self.tally.summary(), "final": True})
        return self.publisher.close()
