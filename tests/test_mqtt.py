"""MQTT against a real Mosquitto broker (Debian's `mosquitto`, started here on a loopback port):
events complete and in order, a broker restart mid-run loses nothing within the queue's bound, a full
queue drops new messages and says so, a broker that is not there is a warning, not an error."""

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from feredge.benchmarks.synthetic import make_video, sample_face
from feredge.edge.preprocess import LABELS

# Debian installs the broker in /usr/sbin, which is not on every user's PATH.
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="Debian's mosquitto is not installed (apt-get install mosquitto)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto process on 127.0.0.1:port that keeps sessions on disk across restarts."""

    def __init__(self, folder):
        self.port, self.folder = free_port(), folder
        self.conf = folder / "mosquitto.conf"
        # `user`: started as root, mosquitto would switch to its own user and could not write the sessions here.
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\nuser {getpass.getuser()}\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self):
        self.proc.terminate()  # SIGTERM: mosquitto writes its sessions to disk
        self.proc.wait(timeout=10)


@pytest.fixture()
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    if b.proc.poll() is None:
        b.stop()


class Subscriber:
    """A persistent-session QoS 1 subscriber to TOPIC/#; it reconnects by itself."""

    def __init__(self, port, topic, ca=None, user=None, password=None):
        import paho.mqtt.client as paho

        self.messages, self.lock = [], threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-subscriber", clean_session=False)
        if ca:
            self.client.tls_set(ca_certs=str(ca))
        if user:
            self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{topic}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        time.sleep(0.5)

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def wait_for_final(self, timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if any(p.get("final") for _, p in self.messages):
                    break
            time.sleep(0.1)
        self.client.loop_stop()
        self.client.disconnect()
        return self.messages


class Camera:
    """A live camera of the sample face: `frames` frames, `delay` s apart, `on_frame(i)` called on each."""

    def __init__(self, frames, delay=0.0, on_frame=None):
        self.frames, self.delay, self.on_frame, self.i = frames, delay, on_frame, 0
        self.image = np.full((480, 640, 3), 120, np.uint8)
        crop = sample_face(150)
        self.image[150 : 150 + crop.shape[0], 240 : 240 + crop.shape[1]] = crop

    def read(self):
        if self.on_frame:
            self.on_frame(self.i)
        time.sleep(self.delay)
        self.i += 1
        return self.i <= self.frames, self.image.copy()

    def get(self, prop):
        return 0

    def release(self):
        pass


def run_camera(detector, publisher, camera, summary_every_s=0.5):
    from feredge.edge.loop import LoopOptions, VideoLoop

    return VideoLoop(detector, "0", LoopOptions(mqtt=publisher, summary_every_s=summary_every_s),
                     open_source=lambda *a: camera).run()


def seqs(messages):
    return [p["seq"] for _, p in messages]


def test_events_arrive_complete_and_in_order(broker, detector, tmp_path):
    from feredge.edge.loop import LoopOptions, VideoLoop
    from feredge.edge.mqtt import MqttPublisher

    sub = Subscriber(broker.port, "kiosks/door")
    video = make_video(tmp_path / "clip.mp4", faces=1, frames=30)
    publisher = MqttPublisher(f"mqtt://127.0.0.1:{broker.port}/kiosks/door")
    summary = VideoLoop(detector, str(video), LoopOptions(mqtt=publisher, summary_every_s=3600)).run()
    messages = sub.wait_for_final()
    events = [p for t, p in messages if t == "kiosks/door/events"]
    assert summary["mqtt_sent"] == len(messages) == 31 and summary["mqtt_dropped"] == 0  # 30 faces + the final summary
    assert seqs(messages) == list(range(1, 32))  # in order, none missing, none twice
    assert [e["frame"] for e in events] == list(range(30))
    for e in events:
        assert {"source", "frame", "time_s", "track_id", "x", "y", "w", "h", "label", "detected", *LABELS} <= set(e)
        assert e["label"] in LABELS and abs(sum(e[k] for k in LABELS) - 1) < 1e-2 and e["source"] == str(video)
    final = messages[-1]
    assert final[0] == "kiosks/door/summary" and final[1]["people"] == 1 and final[1]["frames"] == 30


def test_a_broker_restart_mid_run_loses_nothing_within_the_queue(broker, detector):
    from feredge.edge.mqtt import MqttPublisher

    sub = Subscriber(broker.port, "kiosk")
    timing = {}

    def outage(i):  # frames 20-..: the broker is down for about 2 s while the camera goes on
        if i == 20:
            broker.stop()
            timing["down"] = time.monotonic()
        if i == 20 + 40:
            broker.start()

    publisher = MqttPublisher(f"mqtt://127.0.0.1:{broker.port}/kiosk")
    t0 = time.monotonic()
    summary = run_camera(detector, publisher, Camera(100, delay=0.05, on_frame=outage))
    loop_s = time.monotonic() - t0
    messages = sub.wait_for_final()
    got = sorted(set(seqs(messages)))  # QoS 1: at least once, a resent message may come twice
    assert got == list(range(1, publisher.seq + 1)), f"missing: {sorted(set(range(1, publisher.seq + 1)) - set(got))}"
    events = sorted({p["frame"] for t, p in messages if t.endswith("/events")})
    assert events == list(range(100))
    assert summary["mqtt_dropped"] == 0 and summary["mqtt_undelivered"] == 0
    # Detection did not wait for the broker: 100 frames at 50 ms take about 5 s plus the classifier's time.
    assert summary["frames_in"] == 100 and loop_s < 5 + 100 * 0.05


def test_a_full_queue_drops_new_messages_and_says_so(detector, caplog):
    from feredge.edge.mqtt import MqttPublisher

    publisher = MqttPublisher(f"mqtt://127.0.0.1:{free_port()}/kiosk", queue_size=10)  # nobody listens there
    summary = run_camera(detector, publisher, Camera(30), summary_every_s=3600)
    # 30 events and the final summary: the first 10 wait in the queue (and are never delivered), the rest are dropped.
    assert publisher.seq == 31 and summary["mqtt_undelivered"] == 10 and summary["mqtt_dropped"] == 21
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("queue full" in w for w in warnings) == 1  # said once, not once per message
    assert any("not delivered" in w for w in warnings)


def test_a_broker_that_is_not_there_is_a_warning_and_detection_goes_on(tmp_path, yunet):
    video = make_video(tmp_path / "clip.mp4", faces=1, frames=10)
    r = subprocess.run([sys.executable, "-m", "feredge.cli", "detect", str(video), "--face-model", str(yunet),
                        "--mqtt", f"mqtt://127.0.0.1:{free_port()}/kiosk"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames_in"] == 10 and "Traceback" not in r.stderr
    assert sum("does not answer" in line or "refused" in line for line in r.stderr.splitlines()) == 1


@pytest.mark.parametrize("url, message", [("http://host/topic", "mqtt://HOST"), ("mqtt://host", "name a topic"),
                                          ("mqtt://host/a/#", "without wildcards")])
def test_a_bad_mqtt_url_is_one_line(tmp_path, yunet, url, message):
    r = subprocess.run([sys.executable, "-m", "feredge.cli", "detect", str(tmp_path / "clip.mp4"), "--face-model",
                        str(yunet), "--mqtt", url], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("feredge: error")]) == 1


def make_certificates(folder):
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=feredge test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return folder / "ca.crt"


@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None,
                    reason="openssl or mosquitto_passwd not installed")
def test_tls_with_a_password_delivers_and_a_wrong_password_is_a_warning(tmp_path, yunet):
    ca = make_certificates(tmp_path)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(tmp_path / "passwd"), "kiosk", "s3cret"], check=True, timeout=30)
    (tmp_path / "passwd").chmod(0o644)
    broker = Broker(tmp_path)
    broker.conf.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous false\npassword_file {tmp_path}/passwd\n"
                           f"cafile {ca}\ncertfile {tmp_path}/server.crt\nkeyfile {tmp_path}/server.key\n"
                           f"user {getpass.getuser()}\n")
    broker.start()
    try:
        sub = Subscriber(broker.port, "secure", ca=ca, user="kiosk", password="s3cret")
        video = make_video(tmp_path / "clip.mp4", faces=1, frames=10)
        url = f"mqtts://127.0.0.1:{broker.port}/secure"
        command = [sys.executable, "-m", "feredge.cli", "detect", str(video), "--face-model", str(yunet), "--mqtt", url,
                   "--mqtt-ca", str(ca), "--mqtt-user", "kiosk"]
        r = subprocess.run(command, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "FEREDGE_MQTT_PASSWORD": "s3cret"})  # kept out of the process list
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["mqtt_sent"] == 11
        messages = sub.wait_for_final()
        assert seqs(messages) == list(range(1, 12))
        wrong = subprocess.run(command, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "FEREDGE_MQTT_PASSWORD": "wrong"})
        assert wrong.returncode == 0 and json.loads(wrong.stdout)["frames_in"] == 10  # detection went on
        assert "refused the connection" in wrong.stderr and "Traceback" not in wrong.stderr
    finally:
        broker.stop()
