import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO
from feredge.edge.classifier import ModelError
from feredge.train.train import class_weights, load_config, parse_override, train

TINY = {"epochs": 1, "batch_size": 16, "precision": "float32", "warmup_epochs": 0, "tta": False,
        "max_train_samples": 42, "max_eval_samples": 14}


def tiny_cfg(**kw):
    cfg = dict(TINY)
    cfg.update(kw)
    return load_config("custom_cnn.toml", cfg)


@pytest.mark.parametrize("arch, size, extra", [
    ("custom_cnn", 48, {"widths": [4, 8]}),
    ("separable_cnn", 48, {"widths": [4, 8]}),
    ("resnet50v2", 32, {"weights": "none"}),
    ("vgg16", 32, {"weights": "none"}),
])
def test_each_architecture_fits_and_reports(tmp_path, mini_data, arch, size, extra):
    cfg = tiny_cfg(arch=arch, input_size=size, **extra)
    metrics = train(cfg, tmp_path, data=mini_data)
    for f in ("config.json", "history.csv", "best.keras", "metrics.json", "confusion_test.png",
              "confusion_test.json", "confusion_val.png", "curves.png"):
        assert (tmp_path / f).exists(), f
    assert 0 <= metrics["test"]["accuracy"] <= 1 and metrics["test"]["n"] == 14
    import keras

    model = keras.models.load_model(tmp_path / "best.keras", compile=False)
    assert model.input_shape == (None, size, size, 1 if arch.endswith("_cnn") else 3)
    assert model.name == arch
    # separable_cnn: every convolution but the first is depthwise-separable.
    kinds = [type(layer).__name__ for layer in model.layers if layer.name.endswith("_conv")]
    if arch.endswith("_cnn"):
        assert kinds == ["Conv2D"] + ["SeparableConv2D" if arch == "separable_cnn" else "Conv2D"] * 3
    # The saved inference model holds no random-augmentation layer (TFLite would need Flex ops).
    assert not any(type(layer).__name__.startswith("Random") for layer in model.layers)


def test_mixed_precision_run_saves_a_float32_model(tmp_path, mini_data):
    train(tiny_cfg(widths=[4, 8], precision="mixed_bfloat16", mixup=0.4), tmp_path, data=mini_data)
    import keras

    from feredge.train.models import dtype_policies

    model = keras.models.load_model(tmp_path / "best.keras", compile=False)
    assert dtype_policies(model) == {"float32"}


def test_the_float32_copy_reaches_inside_a_nested_backbone():
    import keras

    from feredge.train.models import dtype_policies, float32_copy

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:  # a backbone model inside the classifier, as imagenet_backbone builds it
        inner_in = keras.Input((8, 8, 3))
        backbone = keras.Model(inner_in, keras.layers.Conv2D(4, 3)(inner_in), name="backbone")
        outer_in = keras.Input((8, 8, 3))
        x = keras.layers.GlobalAveragePooling2D()(backbone(outer_in))
        model = keras.Model(outer_in, keras.layers.Dense(7, dtype="float32")(x))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert "mixed_bfloat16" in dtype_policies(model)
    copy = float32_copy(model)
    assert dtype_policies(copy) == {"float32"}
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    assert np.allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.05)  # same weights


def budgeted(**cfg):
    """A time_budget_callback on a fake clock (now[0], seconds) and a stand-in model, training begun."""
    import types

    from feredge.train.train import time_budget_callback

    now = [0.0]
    callback = time_budget_callback(tiny_cfg(**cfg), clock=lambda: now[0])
    model = types.SimpleNamespace(optimizer=types.SimpleNamespace(learning_rate=None), stop_training=False)
    callback.set_model(model)
    callback.on_train_begin()
    return callback, model, now


def test_a_time_budget_warms_up_then_follows_the_clock_down_and_stops_in_time():
    callback, model, now = budgeted(learning_rate=0.1, warmup_epochs=2, time_budget_s=100)
    rates, logged = [], []
    for epoch in range(50):  # epochs of 10 s: ten fit the 100 s budget
        callback.on_epoch_begin(epoch)
        rates.append(model.optimizer.learning_rate)
        now[0] += 10
        logs = {}
        callback.on_epoch_end(epoch, logs)
        logged.append(logs["learning_rate"])
        if model.stop_training:
            break
    assert len(rates) == 10 and logged == rates
    assert rates[:3] == pytest.approx([0.05, 0.1, 0.1])  # warm-up, then the cosine's start
    assert all(a > b for a, b in zip(rates[2:], rates[3:])) and 0.001 < rates[-1] < 0.01


def test_a_time_budget_does_not_judge_the_next_epochs_by_the_first_which_compiles():
    callback, model, now = budgeted(learning_rate=0.1, warmup_epochs=1, time_budget_s=100)
    epochs = 0
    while not model.stop_training:
        callback.on_epoch_begin(epochs)
        now[0] += 60 if epochs == 0 else 5  # a first epoch of 60 s (compilation), then 5 s each
        callback.on_epoch_end(epochs, {})
        epochs += 1
    assert epochs == 9 and now[0] == 100  # 60 + 8 x 5: the budget used to the second


def test_a_time_budgeted_run_sets_its_rate_and_will_not_resume(tmp_path, mini_data):
    cfg = tiny_cfg(widths=[4, 8], epochs=2, warmup_epochs=2, learning_rate=0.004, time_budget_s=3600)
    train(cfg, tmp_path, data=mini_data)
    with open(tmp_path / "history.csv") as f:
        assert [float(r["learning_rate"]) for r in csv.DictReader(f)] == pytest.approx([0.002, 0.004])
    with pytest.raises(ValueError, match="starts fresh"):
        train(cfg, tmp_path, data=mini_data)


def test_resume_continues_where_the_run_stopped(tmp_path, mini_data, monkeypatch):
    import feredge.train.train as train_module

    make_batches = train_module.make_batches
    first_orders = []  # the training order each train() call starts with

    def spy(*args, **kw):
        batches = make_batches(*args, **kw)
        if kw.get("shuffle"):
            first_orders.append(batches.order.copy())
        return batches

    monkeypatch.setattr(train_module, "make_batches", spy)
    train(tiny_cfg(widths=[4, 8], epochs=1), tmp_path, data=mini_data)
    train(tiny_cfg(widths=[4, 8], epochs=3), tmp_path, data=mini_data)
    with open(tmp_path / "history.csv") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == [0, 1, 2]
    # The resumed epoch does not replay the first epoch's shuffle.
    assert len(first_orders) == 2 and not np.array_equal(*first_orders)
    with pytest.raises(ValueError, match="another config"):
        train(tiny_cfg(widths=[4, 8], epochs=4, learning_rate=0.5), tmp_path, data=mini_data)
    # A run begun before a config key existed resumes: the missing key takes its default.
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["teacher"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    train(tiny_cfg(widths=[4, 8], epochs=4), tmp_path, data=mini_data)
    with open(tmp_path / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]


def test_imagenet_weights_from_a_local_file(tmp_path):
    import keras

    from feredge.train.models import build_model

    ref = keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet50v2_notop.weights.h5"
    ref.save_weights(path)
    model = build_model("resnet50v2", 32, weights=str(path))
    backbone = model.get_layer("resnet50v2")
    assert all(np.array_equal(a, b) for a, b in zip(backbone.get_weights(), ref.get_weights()))
    with pytest.raises(FileNotFoundError):
        build_model("resnet50v2", 32, weights=str(tmp_path / "missing.h5"))


def test_class_weights_and_overrides():
    y = np.array([0] * 6 + [1] * 2 + [2, 3, 4, 5, 6] * 2)
    bal = class_weights(y, "balanced")
    assert bal[0] == pytest.approx(18 / (7 * 6)) and bal[1] == pytest.approx(18 / (7 * 2))
    assert class_weights(y, "sqrt") == pytest.approx(np.sqrt(bal))
    assert parse_override("augment.rotation=10") == {"augment": {"rotation": 10}}
    assert parse_override("arch=vgg16") == {"arch": "vgg16"}
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(None, {"epoch": 3})


def test_one_training_step_under_the_jax_backend_with_data_parallel(tmp_path, mini_zip):
    """Backend-agnostic: the same train() runs under JAX (here on 2 virtual CPU devices, data parallel)."""
    script = textwrap.dedent(f"""
        import logging, keras
        logging.basicConfig(level=logging.INFO)
        from feredge.train.train import load_config, train
        assert keras.backend.backend() == "jax"
        cfg = load_config("custom_cnn.toml", {({**TINY, "widths": [4, 8], "data": str(mini_zip), "data_parallel": "on"})!r})
        m = train(cfg, {str(tmp_path)!r})
        print("RESULT", keras.backend.backend(), m["test"]["n"])
    """)
    # XLA's CPU all-reduce gives up when one device thread is 40 s late, which a busy 2-core machine
    # reaches; the subprocess timeout below is the real limit.
    xla_flags = ("--xla_force_host_platform_device_count=2 --xla_cpu_collective_call_terminate_timeout_seconds=540"
                 " --xla_cpu_collective_timeout_seconds=540")
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu", "JAX_LOG_COMPILES": "1"}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RESULT jax 14" in r.stdout
    assert "DataParallel over 2 devices" in r.stderr
    # The training step is compiled whole, with the augmentation in it, not run op by op.
    assert "compilation of jit(train_step)" in r.stderr and "compilation of jit(conv_general_dilated)" not in r.stderr
    # A model trained under JAX loads under TensorFlow (this process) for export.
    import keras

    model = keras.models.load_model(tmp_path / "best.keras", compile=False)
    assert model.predict(np.zeros((1, 48, 48, 1), np.float32), verbose=0).shape == (1, 7)


def test_cli_train_bad_config_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "feredge.cli", "train", "--config", str(tmp_path / "nope.toml"),
                        "--run-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "config not found" in r.stderr


def test_class_bias_lifts_an_under_predicted_class_to_the_recall_floor():
    from feredge.train.calibrate import fit_class_bias
    from feredge.train.evaluate import classification_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 2000)
    logits = rng.normal(0, 1, (2000, 7))
    logits[np.arange(2000), y] += 1.5
    logits[:, 2] -= 1.2  # class 2 ("fear") is systematically under-predicted
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    before = classification_metrics(y, probs.argmax(1))
    bias = fit_class_bias(probs, y, min_recall=0.45)
    after = classification_metrics(y, (np.log(probs) + bias).argmax(1))
    assert before["per_class"]["fear"]["recall"] < 0.45 <= after["per_class"]["fear"]["recall"]
    assert after["accuracy"] + after["macro_f1"] > before["accuracy"] + before["macro_f1"]
    assert bias[2] == bias.max() and abs(bias.mean()) < 1e-9


def test_calibrated_model_carries_the_bias_in_its_head(tiny_run, mini_data, tmp_path):
    import json
    import shutil

    import keras

    from feredge.train.calibrate import calibrate

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    summary = calibrate(run, min_recall=0.2, data=mini_data)
    bias = np.array(list(json.loads((run / "calibration.json").read_text())["bias"].values()))
    old = keras.models.load_model(run / "best.keras", compile=False).get_layer("probs").get_weights()[1]
    new = keras.models.load_model(run / "calibrated.keras", compile=False).get_layer("probs").get_weights()[1]
    assert np.allclose(new - old, bias, atol=1e-3)
    assert json.loads((run / "metrics.json").read_text())["model"].endswith("calibrated.keras")
    assert set(summary["metrics"]) >= {"val", "test"}
    from feredge.export.export import resolve_source

    assert resolve_source(run / "calibrated.keras") == (run / "calibrated.keras", run)  # exports bring the run's files


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "train" / "configs").glob("*.toml")))
def test_every_shipped_config_loads(name):
    from feredge.train.models import ARCHITECTURES

    cfg = load_config(name)
    assert cfg["arch"] in ARCHITECTURES and cfg["epochs"] > 0 and cfg["input_size"] >= 32


def test_a_config_states_only_what_it_changes_from_its_base(tmp_path):
    (tmp_path / "a.toml").write_text('epochs = 7\nlearning_rate = 0.01\n[augment]\nrotation = 5\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\nlearning_rate = 0.02\n[augment]\nzoom = 0.3\n')
    cfg = load_config(tmp_path / "b.toml")
    assert (cfg["epochs"], cfg["learning_rate"]) == (7, 0.02)
    assert (cfg["augment"]["rotation"], cfg["augment"]["zoom"], cfg["augment"]["flip"]) == (5, 0.3, True)
    assert "base" not in cfg
    assert load_config("custom_cnn_slim.toml")["optimizer"] == load_config("custom_cnn.toml")["optimizer"]
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    with pytest.raises(ValueError, match="loop"):
        load_config(tmp_path / "b.toml")


def test_slimming_keeps_the_channels_with_the_largest_batchnorm_scale(tmp_path):
    import keras

    from feredge.train.models import custom_cnn, slim_custom_cnn

    rng = np.random.default_rng(0)
    source = custom_cnn(48, widths=(8, 12))
    # Give every BatchNorm random statistics, then silence the channels the slimmed net should drop
    # (gamma = beta = 0 outputs exactly 0 after ReLU): the two networks must then agree exactly.
    for layer in source.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            gamma, beta = rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n)
            dropped = rng.permutation(n)[: n // 2]
            gamma[dropped] = beta[dropped] = 0
            layer.set_weights([gamma, beta, rng.normal(0, 0.1, n), rng.uniform(0.5, 2, n)])
    path = tmp_path / "source.keras"
    source.save(path)
    slim = slim_custom_cnn(path, (4, 6))
    x = rng.uniform(0, 255, (8, 48, 48, 1)).astype("float32")
    np.testing.assert_allclose(slim.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-5)
    assert [slim.get_layer(f"s{s}a_conv").filters for s in (1, 2)] == [4, 6]
    with pytest.raises(ValueError, match="at least as wide"):
        slim_custom_cnn(source, (16, 12))
    with pytest.raises(ValueError, match="at least as wide"):
        slim_custom_cnn(source, (4, 6, 8))
    with pytest.raises(FileNotFoundError):
        slim_custom_cnn(tmp_path / "missing.keras", (4, 6))


def test_a_run_can_start_from_a_slimmed_model(tmp_path, mini_data):
    train(tiny_cfg(widths=[8, 12]), tmp_path / "wide", data=mini_data)
    metrics = train(tiny_cfg(widths=[4, 6], init_from=str(tmp_path / "wide" / "best.keras")), tmp_path / "slim",
                    data=mini_data)
    assert metrics["test"]["n"] == 14
    import keras

    model = keras.models.load_model(tmp_path / "slim" / "best.keras", compile=False)
    assert model.get_layer("s2b_conv").filters == 6


def test_a_run_can_go_on_at_another_input_size_from_a_trained_model(tmp_path):
    from feredge.train.models import custom_cnn, start_from

    source = custom_cnn(48, widths=(4, 6))
    rng = np.random.default_rng(0)
    source.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in source.get_weights()])
    path = tmp_path / "source.keras"
    source.save(path)
    bigger = start_from(path, "custom_cnn", 64, widths=(4, 6))
    assert bigger.input_shape == (None, 64, 64, 1)
    for theirs, ours in zip(source.get_weights(), bigger.get_weights()):
        np.testing.assert_array_equal(theirs, ours)
    assert start_from(path, "custom_cnn", 48, widths=(2, 3)).get_layer("s2b_conv").filters == 3  # slimmed
    with pytest.raises(ValueError, match="init_from must be a resnet50v2"):
        start_from(source, "resnet50v2", 64)
    with pytest.raises(FileNotFoundError):
        start_from(tmp_path / "missing.keras", "custom_cnn", 48)


def test_distillation_loss_follows_the_teacher_and_the_labels():
    from keras import ops

    from feredge.train.distill import distillation_loss

    y = np.eye(7, dtype="float32")[[0, 3]]
    teacher = np.full((2, 7), 0.02, "float32")
    teacher[0, 1] = teacher[1, 3] = 0.88
    agree = np.concatenate([teacher, teacher], axis=1)  # student = teacher
    differ = np.concatenate([np.roll(teacher, 2, axis=1), teacher], axis=1)
    only_teacher = distillation_loss(1.0, 3.0, 0.0)
    assert np.allclose(ops.convert_to_numpy(only_teacher(y, agree)), 0, atol=1e-5)
    assert (ops.convert_to_numpy(only_teacher(y, differ)) > 0.1).all()
    only_labels = distillation_loss(0.0, 3.0, 0.0)  # plain cross-entropy: -log p(true class)
    np.testing.assert_allclose(ops.convert_to_numpy(only_labels(y, agree)), -np.log([0.02, 0.88]), rtol=1e-4)


def test_a_distilled_run_saves_the_student_alone(tmp_path, mini_data):
    train(tiny_cfg(widths=[8, 12]), tmp_path / "teacher", data=mini_data)
    metrics = train(tiny_cfg(widths=[4, 6], teacher=str(tmp_path / "teacher" / "best.keras")), tmp_path / "student",
                    data=mini_data)
    assert metrics["test"]["n"] == 14
    with open(tmp_path / "student" / "history.csv") as f:
        row = next(csv.DictReader(f))
    assert 0 <= float(row["accuracy"]) <= 1 and 0 <= float(row["val_accuracy"]) <= 1
    import keras

    student = keras.models.load_model(tmp_path / "student" / "best.keras", compile=False)
    assert student.output_shape == (None, 7) and student.get_layer("s2b_conv").filters == 6
    with pytest.raises(FileNotFoundError, match="teacher"):
        train(tiny_cfg(widths=[4, 6], teacher=str(tmp_path / "missing.keras")), tmp_path / "bad", data=mini_data)


def test_a_shipped_model_folder_teaches_as_its_keras_model(tiny_run, tiny_models):
    # No run directory needed: the folder's float32 ONNX is rebuilt into the network it was exported from.
    import keras

    from feredge.train.distill import load_teacher

    teacher = load_teacher(str(tiny_models), (48, 48, 1))
    trained = keras.models.load_model(tiny_run / "best.keras", compile=False)
    x = np.random.default_rng(1).uniform(0, 255, (16, 48, 48, 1)).astype(np.float32)
    np.testing.assert_allclose(teacher.predict(x, verbose=0), trained.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="not a custom_cnn export"):
        load_teacher(str(tiny_models / "model_int8.onnx"), (48, 48, 1))


def test_a_teacher_of_another_input_size_and_channels_sees_the_students_pixels():
    import keras

    from feredge.train.augment import training_model

    # A stand-in teacher at 64 px RGB that reports its input's mean and size, so the test can see what it got.
    pixels = keras.Input((64, 64, 3))
    teacher = keras.Model(pixels, keras.layers.Dense(7, kernel_initializer="ones", use_bias=False)(
        keras.layers.GlobalAveragePooling2D()(pixels)))
    student = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    fit_model = training_model(student, {"flip": False}, teacher)
    faces = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 1)).astype("float32")
    out = keras.ops.convert_to_numpy(fit_model(faces, training=False))
    assert out.shape == (2, 14)
    # Each teacher output is 3 x the mean of the resized grey face (bilinear keeps the mean to within a little).
    np.testing.assert_allclose(out[:, 7], 3 * faces.mean(axis=(1, 2, 3)), rtol=0.02)

    # And the other way: a 48 px grey teacher for a 64 px RGB student sees one plane at its own size.
    pixels = keras.Input((48, 48, 1))
    grey_teacher = keras.Model(pixels, keras.layers.Dense(7, kernel_initializer="ones", use_bias=False)(
        keras.layers.GlobalAveragePooling2D()(pixels)))
    rgb_student = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Flatten(), keras.layers.Dense(7)])
    rgb_faces = np.repeat(np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 1)), 3, axis=-1).astype("float32")
    out = keras.ops.convert_to_numpy(training_model(rgb_student, {"flip": False}, grey_teacher)(rgb_faces))
    np.testing.assert_allclose(out[:, 7], rgb_faces.mean(axis=(1, 2, 3)), rtol=0.02)


def test_several_teachers_teach_the_geometric_mean_of_their_probabilities(tmp_path):
    import keras

    from feredge.train.distill import load_teacher

    # Two stand-in teachers whose probabilities follow their input's mean: one at the student's 8 px grey,
    # one at 16 px RGB (so it sees the face resized and replicated; bilinear keeps the mean).
    def stand_in(shape, scale, path):
        pixels = keras.Input(shape)
        mean = keras.layers.GlobalAveragePooling2D()(pixels)
        dense = keras.layers.Dense(7, activation="softmax", kernel_initializer=keras.initializers.Constant(scale))
        keras.Model(pixels, dense(keras.layers.Dense(1, kernel_initializer="ones", use_bias=False)(mean))).save(path)

    scales = [[0.0, 0.01, 0.02, 0.03, 0.0, 0.0, 0.0], [0.03, 0.0, 0.0, 0.0, 0.02, 0.01, 0.0]]
    for i, shape in enumerate([(8, 8, 1), (16, 16, 3)]):
        stand_in(shape, scales[i], tmp_path / f"t{i}.keras")
    ensemble = load_teacher(f"{tmp_path / 't0.keras'}, {tmp_path / 't1.keras'}", (8, 8, 1))
    faces = np.random.default_rng(0).uniform(0, 100, (3, 8, 8, 1)).astype("float32")
    got = keras.ops.convert_to_numpy(ensemble(faces))

    mean = faces.mean(axis=(1, 2, 3))[:, None]
    logits = [mean * np.array(scales[0]), 3 * mean * np.array(scales[1])]  # the RGB one sums three planes
    log_probs = [z - np.log(np.exp(z).sum(1, keepdims=True)) for z in logits]
    expected = np.exp((log_probs[0] + log_probs[1]) / 2)
    np.testing.assert_allclose(got, expected / expected.sum(1, keepdims=True), rtol=0.02)
    with pytest.raises(FileNotFoundError, match="teacher"):
        load_teacher(f"{tmp_path / 't0.keras'},{tmp_path / 'missing.keras'}", (8, 8, 1))


def test_the_flip_averaged_teacher_sees_the_face_and_its_mirror():
    import keras

    from feredge.train.augment import training_model

    # A stand-in teacher whose output is the sum of the left half of the face: not mirror-invariant.
    left = np.zeros((8, 8, 1, 7), "float32")
    left[:, :4] = 1
    teacher = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(7, use_bias=False)])
    teacher.set_weights([left.reshape(64, 7)])
    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    faces = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    plain = keras.ops.convert_to_numpy(training_model(student, {"flip": False}, teacher)(faces))
    flipped = keras.ops.convert_to_numpy(training_model(student, {"flip": False}, teacher, teacher_flip=True)(faces))
    np.testing.assert_allclose(plain[:, 7], faces[:, :, :4].sum(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(flipped[:, 7], faces.sum(axis=(1, 2, 3)) / 2, rtol=1e-5)


def test_an_ema_run_saves_the_averaged_weights(tmp_path, mini_data, tiny_run):
    """With a momentum near 1 the average stays by the first step's weights, so an EMA run's saved model
    stays near where it started while a plain run's moves on."""
    import keras

    start = str(tiny_run / "best.keras")
    kernel = lambda path: keras.models.load_model(path, compile=False).get_layer("s2b_conv").get_weights()[0]  # noqa: E731
    moved = {}
    for ema in (0.0, 0.99999):
        run = tmp_path / f"ema{ema}"
        train(tiny_cfg(widths=[8, 16], init_from=start, epochs=2, learning_rate=1e-2, ema=ema,
                       max_train_samples=0, max_eval_samples=0), run, data=mini_data)
        moved[ema] = float(np.abs(kernel(run / "best.keras") - kernel(start)).mean())
    assert moved[0.99999] < 0.5 * moved[0.0], moved  # about one step of 22 against all of them


def test_several_models_evaluate_as_the_geometric_mean_of_their_probabilities(tmp_path, mini_data, tiny_run):
    import keras

    from feredge.train.evaluate import classification_metrics, evaluate_and_report, geometric_mean, predict_split, predictor

    # A second member of another input size and channel count, so each member's own preprocessing counts.
    random_init = keras.initializers.RandomNormal(0, 0.01, seed=1)
    other = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(7, activation="softmax", kernel_initializer=random_init)])
    other.save(tmp_path / "other.keras")
    paths = [str(tiny_run / "best.keras"), str(tmp_path / "other.keras")]

    def probs(path):
        fn, size, channels = predictor(path)
        return predict_split(fn, mini_data["val"].x, size, channels, tta=False)

    members = [probs(p) for p in paths]
    np.testing.assert_allclose(geometric_mean(members).sum(1), 1, rtol=1e-5)
    y = mini_data["val"].y
    expected = classification_metrics(y, np.argmax(np.log(members[0] + 1e-7) + np.log(members[1] + 1e-7), axis=1))
    assert expected["confusion_matrix"] != classification_metrics(y, members[0].argmax(1))["confusion_matrix"]

    metrics = evaluate_and_report(",".join(paths), mini_data, tmp_path / "eval", splits=("val",))
    assert metrics["val"]["confusion_matrix"] == expected["confusion_matrix"]
    with pytest.raises(ModelError, match="model not found"):
        evaluate_and_report(f"{paths[0]},{tmp_path / 'missing.keras'}", mini_data, tmp_path / "eval", splits=("val",))


def test_a_run_without_a_test_split_validates_and_reports_what_it_has(tmp_path, mini_data):
    # A GPU training pack leaves PrivateTest behind (train/gpu/pack.py): the run must still finish.
    from feredge.train.data import Split

    data = {**mini_data, "test": Split(mini_data["test"].x[:0], mini_data["test"].y[:0])}
    metrics = train(tiny_cfg(epochs=1), tmp_path, data=data)
    assert metrics["val"]["n"] > 0 and "test" not in metrics
    assert (tmp_path / "best.keras").exists() and not (tmp_path / "confusion_test.json").exists()


def load_gpu_weights():
    """train/gpu/weights.py, a script run on the GPU machine, as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_weights", REPO / "train" / "gpu" / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_weights_come_back_in_float16_parts_and_rebuild_the_model(tmp_path, tiny_run):
    import keras

    gpu_weights = load_gpu_weights()
    parts = gpu_weights.split(tiny_run, tmp_path / "parts", part_bytes=4096)
    assert len(parts) > 1 and all(p.stat().st_size <= 4096 for p in parts)
    rebuilt = gpu_weights.join(tmp_path / "parts", tmp_path / "run")
    x = np.random.default_rng(0).uniform(0, 255, (16, 48, 48, 1)).astype(np.float32)
    original = keras.models.load_model(tiny_run / "best.keras", compile=False).predict(x, verbose=0)
    again = keras.models.load_model(rebuilt, compile=False).predict(x, verbose=0)
    assert np.abs(original - again).max() < 5e-3 and (original.argmax(1) == again.argmax(1)).mean() >= 0.9
    parts[-1].unlink()
    with pytest.raises(SystemExit, match="a part missing"):
        gpu_weights.join(tmp_path / "parts", tmp_path / "run2")


def test_gpu_runs_side_by_side_send_back_the_best_on_publictest(tmp_path, tiny_run):
    import shutil

    gpu_weights = load_gpu_weights()
    runs = []
    for seed, acc in ((1, 0.3), (2, 0.6), (3, 0.9)):  # the third saved no model
        run = tmp_path / f"run{seed}"
        shutil.copytree(tiny_run, run)
        (run / "history.csv").write_text(f"epoch,val_accuracy\n0,{acc}\n")
        (run / "config.json").write_text(json.dumps({**json.loads((run / "config.json").read_text()), "seed": seed}))
        runs.append(run)
    (runs[2] / "best.keras").unlink()
    gpu_weights.best(tmp_path / "out", runs)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["seed"] == 2
    with pytest.raises(SystemExit, match="no run saved a model"):
        gpu_weights.best(tmp_path / "none", runs[2:])


def test_clipnorm_bounds_a_huge_gradient_step():
    """A loss spike's gradient moves the weights by at most what a gradient of norm `clipnorm` would."""
    import keras

    from feredge.train.train import make_optimizer

    steps = {}
    for clipnorm in (0.0, 1.0):
        cfg = tiny_cfg(optimizer="sgd", schedule="constant", learning_rate=0.1, weight_decay=0.0,
                       warmup_epochs=0, clipnorm=clipnorm)
        weights = keras.Variable(np.zeros(4, "float32"))
        make_optimizer(cfg, steps_per_epoch=1).apply([keras.ops.full((4,), 1e4)], [weights])
        steps[clipnorm] = float(np.linalg.norm(keras.ops.convert_to_numpy(weights)))
    assert steps[1.0] <= 2 * 0.1 * 1.0 + 1e-6, steps  # Nesterov's first step is (1 + momentum) x lr x g
    assert steps[0.0] > 100 * steps[1.0], steps
