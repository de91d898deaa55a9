import json
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from feredge.edge.classifier import load_classifier, sha256_of
from feredge.edge.preprocess import DEFAULT_CROP
from feredge.export.export import FORMATS, OUTLIER_FACTOR, ExportError, GateError, export_model, parse_formats


def test_all_six_formats_pass_the_gate(tiny_models, mini_data):
    m = json.loads((tiny_models / "manifest.json").read_text())
    assert set(m["formats"]) == set(FORMATS) and m["rejected"] == {}
    assert m["keras_reference"]["accuracy"] > 0.7  # chance is 0.14: the predictions mean something
    assert m["evaluation"]["n"] == len(mini_data["test"]) and m["calibration"]["split"] == "Training"
    calib = m["calibration"]
    assert isinstance(calib["outliers_dropped"], int) and calib["n"] + calib["outliers_dropped"] == 100
    assert calib["outlier_rule"] == f"an activation peak > {OUTLIER_FACTOR:g} x the median image's"
    from feredge.edge.classifier import sha256_of

    for fmt, e in m["formats"].items():
        assert e["gate"]["passed"] and (tiny_models / e["file"]).stat().st_size == e["bytes"]
        assert sha256_of(tiny_models / e["file"]) == e["sha256"]
        assert e["agreement_pct"] >= e["gate"]["min_agreement_pct"]
        assert set(e["recall"]) == set(m["labels"]) and all(0 <= r <= 1 for r in e["recall"].values())
    assert m["formats"]["tflite_float32"]["input_dtype"] == "float32"
    assert m["input"]["crop"] == DEFAULT_CROP  # the runtime's crop travels with the model
    assert m["formats"]["onnx_float32"]["opset"] >= 17 and m["formats"]["onnx_int8"]["opset"] >= 17
    assert {"tensorflow", "keras", "tf2onnx", "onnxruntime", "ai-edge-litert"} <= set(m["tools"])
    # The model's own mean output on Training, what --prior balanced divides by.
    assert set(m["output_prior"]) == set(m["labels"]) and abs(sum(m["output_prior"].values()) - 1) < 1e-3
    for f in ("training_config.json", "training_metrics.json", "confusion_test.png", "curves.png"):
        assert (tiny_models / f).exists(), f


def test_exporting_best_keras_of_a_calibrated_run_leaves_the_calibrated_models_evaluation_behind(tmp_path, tiny_run, mini_data):
    # `feredge calibrate` re-evaluates calibrated.keras into the run: its metrics, confusion matrices and
    # offsets don't describe best.keras.
    from feredge.export.export import export_model

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "calibration.json").write_text("{}")
    export_model(run / "best.keras", tmp_path / "out", formats=["tflite_int8"], data=mini_data, calib_n=50, progress=False)
    present = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"training_config.json", "history.csv", "train_prior.json"} <= present
    assert not present & {"calibration.json", "training_metrics.json", "confusion_test.png", "confusion_test.json"}


def test_calibration_leaves_out_the_image_that_would_stretch_the_int8_ranges(tmp_path):
    # A linear network: an image 20x brighter than the rest drives every activation 20x higher.
    import keras

    from feredge.export.export import drop_outlier_faces, to_tflite

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, kernel_initializer="ones", use_bias=False)(inputs)
    x = keras.layers.Conv2D(2, 3, kernel_initializer="ones", use_bias=False)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    saved = tmp_path / "saved_model"
    keras.Model(inputs, outputs).export(str(saved), verbose=False)
    float_tflite = to_tflite(saved, "float32", None)
    pixels = np.random.default_rng(0).uniform(5, 10, (30, 8, 8, 1)).astype(np.float32)
    pixels[7] *= 20
    pixels[11] *= 2  # brighter, but within the default rule's 3x: kept
    kept, dropped = drop_outlier_faces(float_tflite, pixels)
    assert dropped == 1 and len(kept) == 29
    np.testing.assert_array_equal(kept, np.delete(pixels, 7, axis=0))
    assert drop_outlier_faces(float_tflite, pixels, factor=1.5)[1] == 2
    assert drop_outlier_faces(float_tflite, pixels, factor=float("inf"))[1] == 0


def test_gate_fails_on_a_damaged_artifact(tmp_path, tiny_run, mini_data):
    # int8 calibrated on black images: activation ranges collapse, predictions break.
    zeros = np.zeros((8, 48, 48, 1), np.float32)
    with pytest.raises(GateError) as err:
        export_model(tiny_run, tmp_path, formats="tflite_float32,tflite_int8", data=mini_data,
                     calib_pixels=zeros, progress=False)
    assert "tflite_int8" in str(err.value) and "tflite_float32" not in str(err.value)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert list(m["formats"]) == ["tflite_float32"] and not m["rejected"]["tflite_int8"]["gate"]["passed"]
    assert (tmp_path / "rejected" / "model_int8.tflite").exists() and not (tmp_path / "model_int8.tflite").exists()


def test_gate_thresholds_are_enforced(tmp_path, tiny_run, mini_data):
    from feredge.export.export import Gate

    # An impossible threshold must fail even a perfect float export: the gate is not decorative.
    with pytest.raises(GateError, match="tflite_float32"):
        export_model(tiny_run, tmp_path, formats="tflite_float32", data=mini_data, progress=False,
                     gate=Gate(float_min_agreement=100.1))


def test_exported_models_predict_the_same_without_tensorflow(tiny_models, mini_zip):
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import json, hashlib
        import numpy as np
        from feredge.edge.classifier import EmotionClassifier
        from feredge.edge.preprocess import preprocess_faces
        from feredge.train.data import load_fer2013
        test = load_fer2013({str(mini_zip)!r}, use_cache=False)["test"]
        manifest = json.load(open({str(tiny_models / "manifest.json")!r}))
        for fmt in manifest["formats"]:
            clf = EmotionClassifier({str(tiny_models)!r}, fmt=fmt)
            pred = clf.predict_pixels(preprocess_faces(test.x, clf.input_size, clf.channels)).argmax(1)
            same = hashlib.sha256(pred.astype(np.int8).tobytes()).hexdigest() == manifest["formats"][fmt]["predictions_sha256"]
            print(fmt, same)
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(r.stdout.split()) == sorted(sum([[f, "True"] for f in FORMATS], []))


@pytest.mark.parametrize("case, message", [
    ("missing", "model not found"),
    ("not_keras", "is not a .keras file"),
    ("corrupt_keras", "is not a loadable Keras model"),
    ("unknown_format", "unknown format(s) tflite_int4"),
    ("unwritable", "is not writable"),
])
def test_export_bad_input_is_one_line(tmp_path, tiny_run, capsys, case, message):
    from feredge.cli import main

    src, out, formats = tiny_run, tmp_path / "out", "tflite_float32"
    if case == "missing":
        src = tmp_path / "nope.keras"
    elif case == "not_keras":
        src = tmp_path / "model.h5"
        src.write_bytes(b"x")
    elif case == "corrupt_keras":
        src = tmp_path / "model.keras"
        src.write_bytes(b"not a zip")
    elif case == "unknown_format":
        formats = "tflite_int4"
    elif case == "unwritable":
        (tmp_path / "afile").write_text("")
        out = tmp_path / "afile" / "sub"
    code = main(["export", str(src), "--out", str(out), "--formats", formats])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("feredge: error:")


def test_parse_formats():
    assert parse_formats("all") == list(FORMATS)
    assert parse_formats("onnx_int8, tflite_int8") == ["onnx_int8", "tflite_int8"]
    with pytest.raises(ExportError):
        parse_formats("tflite_int8,bogus")


def test_int8_formats_quantize_the_body_and_keep_the_head_float(tiny_models):
    import onnx

    from feredge.edge.classifier import load_litert_interpreter

    tensors = load_litert_interpreter(tiny_models / "model_int8.tflite", 1).get_tensor_details()
    conv_weights = [t for t in tensors if t["dtype"] == np.int8 and len(t["shape"]) == 4 and t["shape"][0] > 1]
    assert len(conv_weights) >= 4  # every convolution's filter is int8 (the tiny net has four)
    head = [t for t in tensors if t["dtype"] == np.float32 and tuple(t["shape"]) in ((7, 16), (16, 7))]
    assert head, "the fully connected head's weights stay float32"
    graph = onnx.load(str(tiny_models / "model_int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 4 and "ConvInteger" not in ops  # QDQ around the convolutions
    head_inputs = {i for n in graph.node if n.op_type in ("Gemm", "MatMul", "Softmax") for i in n.input}
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weights_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and any(o in head_inputs for o in n.output)
                  and n.input[0] in {t.name for t in graph.initializer}]
    assert head_inputs and not weights_dq and dequantized  # the head's weights are not quantized


def onnx_int8_weights(path) -> tuple[int, int]:
    """How many int8 convolution kernels an ONNX file holds, and the largest |weight| among them."""
    import onnx

    graph = onnx.load(str(path)).graph
    kernels = [onnx.numpy_helper.to_array(t) for t in graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    return len(kernels), max((int(np.abs(k.astype(np.int16)).max()) for k in kernels), default=0)


def test_onnx_int8_weights_are_7_bit_so_no_cpu_saturates_them(tiny_models):
    # onnxruntime's x86 int8 kernels without VNNI add pairs of products in 16 bits: 8-bit weights can
    # overflow them (the shipped resnet50v2 fell from 67.76 % to 55.87 % on an AVX2-only EPYC), 7-bit can't.
    kernels, largest = onnx_int8_weights(tiny_models / "model_int8.onnx")
    assert kernels >= 4 and largest <= 64


def test_requantize_remakes_onnx_int8_from_the_folders_float_onnx(tmp_path, tiny_models, mini_data):
    from feredge.export.export import requantize_onnx

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_models, folder)
    before = json.loads((folder / "manifest.json").read_text())
    # Whatever file was there (here a damaged one) is replaced by one quantized from the float ONNX.
    (folder / "model_int8.onnx").write_bytes(b"stale")
    m = requantize_onnx(folder, data=mini_data, calib_n=100)
    entry = m["formats"]["onnx_int8"]
    assert entry["gate"]["passed"] and entry["sha256"] == sha256_of(folder / "model_int8.onnx")
    assert entry["calibration"]["reference"].startswith("onnx_float32")
    assert onnx_int8_weights(folder / "model_int8.onnx")[1] <= 64
    assert {k: v for k, v in m["formats"].items() if k != "onnx_int8"} == \
        {k: v for k, v in before["formats"].items() if k != "onnx_int8"}
    probs = load_classifier(folder, fmt="onnx_int8").predict_pixels(
        np.zeros((1, *[m["input"]["size"]] * 2, m["input"]["channels"]), np.float32))
    assert probs.shape == (1, 7)

    del before["formats"]["onnx_float32"]
    (folder / "manifest.json").write_text(json.dumps(before))
    with pytest.raises(ExportError, match="requantizing needs its onnx_float32"):
        requantize_onnx(folder, data=mini_data)


def test_int8_export_shows_no_tensorflow_deprecation_warning(tmp_path, tiny_run, mini_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_model(tiny_run, tmp_path, formats="tflite_int8", data=mini_data, calib_n=20, progress=False)
    assert not [w for w in caught if "Interpreter is deprecated" in str(w.message)]
