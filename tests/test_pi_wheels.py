"""The Pi install check's parts that need no network (CI runs the whole check: .ci/check_pi_wheels.py)."""

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / ".ci"))
import check_pi_wheels  # noqa: E402


def test_failing_package_is_named_from_pips_message():
    out = ("ERROR: Could not find a version that satisfies the requirement tflite-runtime (from versions: none)\n"
           "ERROR: No matching distribution found for tflite-runtime\n")
    assert check_pi_wheels.missing_package(out) == "tflite-runtime"


def test_checks_the_default_dependencies_on_every_pi_glibc_level():
    deps = check_pi_wheels.default_dependencies()
    assert any(d.startswith("onnxruntime") for d in deps) and any(d.startswith("ai-edge-litert") for d in deps)
    assert "manylinux_2_17_aarch64" in check_pi_wheels.PLATFORMS and "manylinux_2_36_aarch64" in check_pi_wheels.PLATFORMS
