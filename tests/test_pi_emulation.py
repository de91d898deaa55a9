"""The runtime under aarch64 emulation (.ci/pi_emulation.py): the comparison rules, and the whole run."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, real_data_path, yunet_path

sys.path.insert(0, str(REPO / ".ci"))
import pi_emulation  # noqa: E402


def probe(formats, boxes=((178, 63, 90, 114),)):
    return {"formats": {k: np.asarray(v).tolist() for k, v in formats.items()}, "boxes": [list(b) for b in boxes]}


def test_comparison_rules():
    p = np.array([[0.6, 0.3, 0.1], [0.34, 0.33, 0.33]])
    near_tie_flipped = np.array([[0.6, 0.3, 0.1], [0.32, 0.35, 0.33]])
    clear_flip = np.array([[0.3, 0.6, 0.1], [0.34, 0.33, 0.33]])
    same = probe({"tflite_int8": p, "onnx_int8": p, "onnx_float32": p})
    assert pi_emulation.compare(same, same) == []
    # onnxruntime int8 may flip a near-tie, LiteRT int8 may not.
    assert pi_emulation.compare(probe({"onnx_int8": p}), probe({"onnx_int8": near_tie_flipped})) == []
    assert pi_emulation.compare(probe({"tflite_int8": p}), probe({"tflite_int8": near_tie_flipped}))
    assert pi_emulation.compare(probe({"onnx_int8": p}), probe({"onnx_int8": clear_flip}))
    assert pi_emulation.compare(probe({"onnx_float32": p}), probe({"onnx_float32": p + 2e-4}))
    assert pi_emulation.compare(probe({"onnx_float32": p}), probe({"onnx_float32": p + 5e-5})) == []
    assert pi_emulation.compare(probe({}), probe({}, boxes=[(180, 63, 90, 114)]))
    assert pi_emulation.compare(probe({}), probe({}, boxes=[(179, 63, 90, 114)])) == []
    assert pi_emulation.compare(probe({}), probe({}, boxes=[]))


@pytest.mark.slow
@pytest.mark.realdata
def test_readme_command_and_every_format_give_the_same_answers_on_aarch64():
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("needs Debian's apt-get and dpkg to fetch the aarch64 Python")
    if not real_data_path().exists():
        pytest.skip(f"FER-2013 not found at {real_data_path()} (set FER2013_ZIP)")
    r = subprocess.run([sys.executable, str(REPO / ".ci" / "pi_emulation.py"), "--face-model", str(yunet_path())],
                       capture_output=True, text=True, timeout=1500)
    print(r.stdout)  # the summary line, with its time
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "same answers on aarch64" in r.stdout
