"""Can a Raspberry Pi install the runtime from wheels? `python .ci/check_pi_wheels.py`

Resolves the project's default dependencies for 64-bit Raspberry Pi OS (aarch64; Bookworm's Python
3.11 and Trixie's 3.13, glibc 2.36) with pip's own resolver, wheels only, without downloading them
(pip reads the wheels' metadata) and without emulation. A dependency that has no aarch64 wheel fails
with one line naming it. Run by .ci/run before the tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

PYTHONS = ("3.11", "3.13")
# pip matches --platform tags exactly: list every manylinux level a glibc 2.36 system accepts.
PLATFORMS = [f"manylinux_2_{v}_aarch64" for v in range(17, 37)] + ["manylinux2014_aarch64"]


def default_dependencies() -> list[str]:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    return project["dependencies"]


def missing_package(pip_output: str) -> str:
    """The package pip could not find a wheel for, from its error message."""
    found = re.findall(r"No matching distribution found for (\S+)", pip_output)
    return found[-1] if found else pip_output.strip().splitlines()[-1] if pip_output.strip() else "unknown"


def check(python: str, requirements: list[str]) -> str | None:
    """None if every requirement resolves to aarch64 wheels for this Python, else the failing package."""
    abi = "cp" + python.replace(".", "")
    with tempfile.TemporaryDirectory() as target:
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--abi", abi,
               "--target", target, *[a for p in PLATFORMS for a in ("--platform", p)], *requirements]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return None if r.returncode == 0 else missing_package(r.stderr + r.stdout)


def main() -> int:
    requirements = default_dependencies()
    failed = False
    for python in PYTHONS:
        package = check(python, requirements)
        if package:
            print(f"Pi install check FAILED: no aarch64 wheel for cp{python.replace('.', '')}: {package}")
            failed = True
        else:
            print(f"Pi install check: every default dependency has an aarch64 wheel for Python {python}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
