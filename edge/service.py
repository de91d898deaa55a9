"""A systemd unit that runs a kiosk unattended: `feredge systemd-unit > feredge-kiosk.service`.

It restarts the detector whenever it ends (a camera that never comes back, a crash, an upgrade), at
most every RESTART_SEC seconds and forever; it stops it with SIGTERM, which ends the loop cleanly with
the video, events and report complete. Its working and state folder is /var/lib/feredge (systemd's
StateDirectory), where the default command writes its report; nothing else is stored (no images
unless the command asks for a video). Installation: docs/kiosk.md.
"""

from __future__ import annotations

import getpass
import shlex
import shutil
import sys
from pathlib import Path

DEFAULT_DETECT = ["0", "--kiosk", "--pi", "--report", "/var/lib/feredge/report"]
RESTART_SEC = 5


def feredge_executable() -> str:
    """The `feredge` of this environment (a venv's bin/feredge), as an absolute path, which systemd needs."""
    beside = Path(sys.executable).with_name("feredge")
    found = beside if beside.exists() else shutil.which("feredge")
    return str(Path(found).resolve()) if found else str(beside)


def systemd_unit(detect_args: list[str] | None = None, user: str | None = None, face_model: str | None = None,
                 executable: str | None = None) -> str:
    args = list(detect_args or DEFAULT_DETECT)
    env = f"Environment=FEREDGE_FACE_MODEL={shlex.quote(str(Path(face_model).resolve()))}\n" if face_model else ""
    return f"""[Unit]
Description=feredge facial-emotion kiosk
Wants=network-online.target
After=network-online.target
# Restart forever: no rate limit that would leave a kiosk dark after a bad hour.
StartLimitIntervalSec=0

[Service]
Type=simple
User={user or getpass.getuser()}
SupplementaryGroups=video
StateDirectory=feredge
WorkingDirectory=/var/lib/feredge
{env}ExecStart={shlex.join([executable or feredge_executable(), "detect", *args])}
Restart=always
RestartSec={RESTART_SEC}
KillSignal=SIGTERM
TimeoutStopSec=30
NoNewPrivileges=true

[Install]
WantedBy=multi-user.target
"""
