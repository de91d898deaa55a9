"""Native libraries (LiteRT, OpenCV) print start-up chatter straight to the process's stderr, below
Python's logging. `known_noise_dropped()` wraps the calls that do it: lines known to be harmless are
dropped, anything else is passed on unchanged, so a real native warning or error is never hidden."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

KNOWN_NOISE = (
    "Created TensorFlow Lite XNNPACK delegate for CPU",  # LiteRT, at every interpreter start
    "setPreferableTarget Targets are not supported by the new graph engine",  # OpenCV 5 DNN, YuNet start
)


@contextlib.contextmanager
def known_noise_dropped():
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr is not a file (captured, GUI): leave it alone
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not any(noise in line for noise in KNOWN_NOISE))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
