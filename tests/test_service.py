"""The kiosk's systemd unit, checked by systemd itself (`systemd-analyze verify`)."""

import shutil
import subprocess
import sys

import pytest

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")


def unit(tmp_path, *args):
    r = subprocess.run([sys.executable, "-m", "feredge.cli", "systemd-unit", *args], capture_output=True, text=True,
                       timeout=60, check=True)
    path = tmp_path / "feredge-kiosk.service"
    path.write_text(r.stdout)
    return path, r.stdout


def verify(path):
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=60)


def test_the_printed_unit_verifies_and_restarts_the_kiosk(tmp_path):
    path, text = unit(tmp_path, "--face-model", str(tmp_path / "yunet.onnx"), "--", "0", "--kiosk", "--events", "k.jsonl")
    r = verify(path)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr  # no warning either (an unknown key is one)
    assert "Restart=always" in text and "RestartSec=5" in text and "StartLimitIntervalSec=0" in text
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_line.endswith(" detect 0 --kiosk --events k.jsonl") and exec_line.split("=", 1)[1].startswith("/")
    assert f"Environment=FEREDGE_FACE_MODEL={tmp_path / 'yunet.onnx'}" in text


def test_the_default_unit_runs_the_pi_kiosk_with_a_report(tmp_path):
    _, text = unit(tmp_path)
    assert " detect 0 --kiosk --pi --report /var/lib/feredge/report" in text and "StateDirectory=feredge" in text


def test_verify_catches_a_unit_whose_command_is_missing(tmp_path):
    # The check can fail: the same unit pointing at an executable that is not there.
    path, text = unit(tmp_path)
    exe = next(line for line in text.splitlines() if line.startswith("ExecStart=")).split("=", 1)[1].split()[0]
    path.write_text(text.replace(exe, str(tmp_path / "no" / "feredge")))
    r = verify(path)
    assert r.returncode != 0 and "not executable" in r.stderr
