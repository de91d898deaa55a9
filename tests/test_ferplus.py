"""FER+ votes: the join, the rule for its extras, soft targets in training, both label sets in the
evaluation, and the runtime's prior correction and mirror averaging."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_zip, write_votes
from feredge.edge.preprocess import LABELS
from feredge.train import ferplus


@pytest.fixture()
def voted(tmp_path):
    """A mini zip whose votes say 'neutral' for 7 of 10 taggers on every train image labelled sad, one
    image with no votes (not a face) and one with contempt and unknown votes only."""
    data = make_zip(tmp_path / "fer.zip", per_class=(8, 3, 3))

    def rule(name, label):
        if name.endswith("Training_00000.jpg"):
            return None  # FER+ marks it not a face: no row of votes
        if name.endswith("Training_00001.jpg"):
            return {"contempt": 6, "unknown": 4}
        if label == "sad" and name.startswith("train/"):
            return {"neutral": 7, "sadness": 3}
        return {ferplus.FERPLUS_NAME[label]: 8, "contempt": 1, "unknown": 1}

    write_votes(data, tmp_path / ferplus.VOTES_FILE, rule)
    return data


def test_votes_beside_the_zip_are_joined_to_every_image(voted):
    from feredge.train.data import load_fer2013

    splits = load_fer2013(voted, use_cache=False)
    train = splits["train"]
    assert train.votes.shape == (len(train), 10)
    share = ferplus.distribution(train.votes)
    sad = train.y == LABELS.index("sad")
    assert np.allclose(share[sad][:, LABELS.index("neutral")], 0.7)
    # contempt and unknown votes are dropped, then the rest renormalised
    happy = np.flatnonzero(train.y == LABELS.index("happy"))
    assert np.allclose(share[happy, LABELS.index("happy")], 1.0)
    # the rule for the extras: no row, or no vote on the seven emotions: no FER+ target
    assert ferplus.has_target(train.votes).sum() == len(train) - 2
    assert (ferplus.majority(train.votes) == -1).sum() == 2
    assert np.all(ferplus.majority(splits["test"].votes) == splits["test"].y)


def test_the_cache_keeps_the_names_the_join_needs(voted):
    from feredge.train.data import load_fer2013

    first = load_fer2013(voted)
    again = load_fer2013(voted)  # from the cache
    assert np.array_equal(first["val"].names, again["val"].names)
    assert np.array_equal(first["val"].votes, again["val"].votes, equal_nan=True)


def test_a_votes_file_of_another_copy_is_one_line_error(tmp_path):
    data = make_zip(tmp_path / "fer.zip", per_class=(4, 2, 2))
    votes = write_votes(data, tmp_path / "other.csv", rename=lambda n: n.replace("Training_", "Train_"))
    r = subprocess.run([sys.executable, "-m", "feredge.cli", "evaluate", str(REPO / "models" / "custom_cnn"),
                        "--data", str(data)], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "FERPLUS_VOTES": str(votes)})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("feredge: error: the FER+ votes file does not match the train split")
    assert "Traceback" not in r.stderr


def test_a_missing_votes_file_named_by_the_environment_is_an_error(tmp_path, monkeypatch):
    from feredge.train.data import load_fer2013

    monkeypatch.setenv("FERPLUS_VOTES", str(tmp_path / "nowhere.csv"))
    with pytest.raises(ferplus.VotesError, match="does not exist"):
        load_fer2013(make_zip(tmp_path / "fer.zip", per_class=(2, 1, 1)), use_cache=False)


def test_targets_follow_the_config_and_class_weights_their_prior(voted):
    from feredge.train.data import load_fer2013
    from feredge.train.train import class_weights, load_config, training_targets

    train = load_fer2013(voted, use_cache=False)["train"]
    sad = LABELS.index("sad")
    kept, labels = training_targets(train, load_config(None, {"targets": "labels"}))
    assert len(kept) == len(train) and np.all(labels.argmax(1) == train.y)
    kept, votes = training_targets(train, load_config(None, {"targets": "votes"}))
    assert len(kept) == len(train) - 2  # the two without a FER+ target are left out
    kept, mix = training_targets(train, load_config(None, {"targets": "mix", "label_weight": 0.5}))
    sad_rows = train.y[kept] == sad
    assert np.allclose(mix[sad_rows][:, sad], 0.5 + 0.5 * 0.3)
    assert np.allclose(mix[sad_rows][:, LABELS.index("neutral")], 0.35)
    _, majority = training_targets(train, load_config(None, {"targets": "majority"}))
    assert np.all(majority[sad_rows].argmax(1) == LABELS.index("neutral"))
    # the crowd's majority says neutral: rejected_label_weight down-weights the sad label there only
    _, soft = training_targets(train, load_config(None, {"targets": "mix", "label_weight": 0.5,
                                                          "rejected_label_weight": 0.1}))
    assert np.allclose(soft[sad_rows][:, sad], 0.1 + 0.9 * 0.3)
    assert np.allclose(soft[~sad_rows], mix[~sad_rows])  # every other label is the crowd's majority
    for targets in ("votes", "labels"):
        with pytest.raises(ValueError, match="applies to targets = 'mix'"):
            training_targets(train, load_config(None, {"targets": targets, "rejected_label_weight": 0.1}))
    # the crowd rejects the sad label (3 of 10): min_label_votes=4 leaves those images out
    kept, _ = training_targets(train, load_config(None, {"targets": "labels", "min_label_votes": 4}))
    assert not np.any(train.y[kept] == sad)
    # weights from the prior of the targets used: fewer sad targets under votes -> a larger sad weight
    assert class_weights(votes, "balanced")[sad] > class_weights(labels, "balanced")[sad]


def test_soft_targets_reach_the_loss(voted):
    from feredge.train.data import load_fer2013
    from feredge.train.train import class_weights, load_config, make_batches, training_targets

    train = load_fer2013(voted, use_cache=False)["train"]
    cfg = load_config(None, {"targets": "votes", "batch_size": 8, "mixup": 0.0})
    kept, targets = training_targets(train, cfg)
    batches = make_batches(train.x[kept], targets, cfg, 1, class_weights(targets, "none"), shuffle=False)
    _, yb, wb = batches[0]
    assert np.allclose(yb, targets[:8]) and np.allclose(wb, 1.0)
    import keras

    loss = keras.losses.CategoricalCrossentropy()
    onehot = np.eye(7, dtype=np.float32)[train.y[kept][:8]]
    # the same prediction scores differently against the votes than against the labels
    pred = np.full((8, 7), 1 / 7, np.float32)
    pred[:, LABELS.index("neutral")] += 0.3
    pred /= pred.sum(1, keepdims=True)
    sad_batch = train.y[kept][:8] == LABELS.index("sad")
    if sad_batch.any():
        assert float(loss(yb[sad_batch], pred[sad_batch])) < float(loss(onehot[sad_batch], pred[sad_batch]))


def test_evaluation_reports_both_label_sets(voted, tmp_path):
    before = sorted(p.name for p in (REPO / "models").iterdir())
    # no --out: a shipped model's evaluation lands in eval/<name> under the current folder, not in models/
    r = subprocess.run([sys.executable, "-m", "feredge.cli", "evaluate", str(REPO / "models" / "custom_cnn"),
                        "--data", str(voted), "--split", "both"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    for split in ("val", "test"):
        people = summary[f"{split}_ferplus"]
        assert {"accuracy", "macro_f1", "balanced_accuracy", "ece", "left_out", "vote_cross_entropy"} <= set(people)
        assert people["n"] == summary[split]["n"]  # every test image of the mini set has a target
        assert 0 <= summary[split]["balanced_accuracy"] <= 1
    assert (tmp_path / "eval" / "custom_cnn" / "reliability_test.png").stat().st_size > 1000
    assert sorted(p.name for p in (REPO / "models").iterdir()) == before


def test_evaluate_writes_a_runs_keras_into_the_run_and_anything_else_under_eval():
    from feredge.cli import default_eval_dir

    assert default_eval_dir(["runs/a/best.keras"]) == Path("runs/a/eval")
    assert default_eval_dir(["models/custom_cnn/"]) == Path("eval/custom_cnn")
    assert default_eval_dir(["custom_cnn"]) == Path("eval/custom_cnn")
    assert default_eval_dir(["m/model_int8.tflite", "r/best.keras"]) == Path("eval/model_int8+best")


def test_ece_of_a_perfectly_calibrated_and_an_overconfident_model():
    from feredge.train.evaluate import calibration_bins

    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 20000)
    probs = np.full((20000, 7), 0.4 / 6)
    probs[np.arange(20000), y] = 0.6  # right with 0.6: say 0.6 and be right 60 % of the time
    wrong = rng.random(20000) > 0.6
    probs[wrong] = np.roll(probs[wrong], 1, axis=1)
    assert calibration_bins(probs, y)[0] < 0.02
    sharp = np.where(probs == 0.6, 0.99, 0.01 / 6)
    assert calibration_bins(sharp, y)[0] > 0.3


def test_balanced_prior_and_mirror_change_predictions_as_documented():
    from feredge.edge.classifier import EmotionClassifier, with_prior

    clf = EmotionClassifier(REPO / "models" / "custom_cnn")
    prior = clf.train_prior
    assert np.isclose(prior.sum(), 1) and prior.argmax() == LABELS.index("happy")
    probs = np.array([[0.1, 0.05, 0.1, 0.4, 0.2, 0.1, 0.05]])
    balanced = with_prior(probs, prior, "balanced")
    assert np.allclose(balanced, probs / prior / (probs / prior).sum())
    assert balanced[0, LABELS.index("disgust")] > probs[0, LABELS.index("disgust")]  # the rare class gains
    assert np.array_equal(with_prior(probs, prior, "training"), probs)


def test_balanced_prior_divides_by_the_models_own_output_prior_where_the_manifest_has_one(tmp_path):
    from feredge.edge.classifier import EmotionClassifier

    folder = tmp_path / "m"
    shutil.copytree(REPO / "models" / "custom_cnn_ferplus", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    shipped = EmotionClassifier(folder)
    # Its calibration lifts disgust: the model's mean output on Training is far above the targets' share.
    assert shipped.balance_prior[LABELS.index("disgust")] > 3 * shipped.train_prior[LABELS.index("disgust")]
    assert np.allclose(shipped.balance_prior, [manifest["output_prior"][k] for k in LABELS], atol=1e-4)
    del manifest["output_prior"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert np.array_equal(EmotionClassifier(folder).balance_prior, shipped.train_prior)  # older manifests


def test_detector_tta_is_the_mean_with_the_mirror_and_min_confidence_marks_uncertain(yunet):
    from feredge.edge.detector import UNCERTAIN, EmotionDetector

    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 255, (60, 60), dtype=np.uint8) for _ in range(3)]
    plain = EmotionDetector(face_model=yunet)
    tta = EmotionDetector(face_model=yunet, tta=True)
    mirrored = plain.classify_crops([c[:, ::-1].copy() for c in crops])
    assert np.allclose(tta.classify_crops(crops), (plain.classify_crops(crops) + mirrored) / 2, atol=1e-6)
    unsure = EmotionDetector(face_model=yunet, min_confidence=0.99)
    face = unsure.make_face((0, 0, 10, 10), [0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05], 0.9)
    assert face.label == UNCERTAIN and face.probabilities["angry"] == 0.5
    assert plain.make_face((0, 0, 10, 10), [0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05], 0.9).label == "angry"


@pytest.mark.parametrize("flag, message", [(["--prior", "posed"], "invalid choice"),
                                           (["--min-confidence", "2"], "min_confidence must be between 0 and 1")])
def test_bad_runtime_choices_are_one_line(flag, message, yunet):
    r = subprocess.run([sys.executable, "-m", "feredge.cli", "detect", str(REPO / "edge" / "assets" / "astronaut.jpg"),
                        "--face-model", str(yunet), *flag], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_a_distilled_run_logs_the_students_ferplus_accuracy(voted, tiny_run, tmp_path):
    import csv

    import keras

    from feredge.train.data import load_fer2013
    from feredge.train.train import load_config, train

    # The model fit() trains here is the distiller, whose output also holds the teacher's: the FER+
    # figure in history.csv must be the student's, as evaluating its saved best.keras gives.
    splits = load_fer2013(voted, use_cache=False)
    cfg = load_config("custom_cnn.toml", {"epochs": 1, "widths": [8, 16], "batch_size": 16, "precision": "float32",
                                          "warmup_epochs": 0, "tta": False, "teacher": str(tiny_run / "best.keras"),
                                          "augment": {"rotation": 0, "shift": 0, "zoom": 0, "erasing": 0, "flip": False}})
    train(cfg, tmp_path / "run", data=splits)
    with open(tmp_path / "run" / "history.csv") as f:
        logged = float(next(csv.DictReader(f))["val_ferplus_accuracy"])
    val = splits["val"]
    pred = keras.saving.load_model(tmp_path / "run" / "best.keras").predict(val.x[..., None].astype("float32"), verbose=0)
    truth = ferplus.majority(val.votes)
    assert logged == pytest.approx(float(np.mean(pred.argmax(1)[truth >= 0] == truth[truth >= 0])), abs=1e-6)


def test_label_set_split_counts_each_image_once_and_sums_to_both_accuracies():
    from feredge.benchmarks.label_sets import split_of

    labels = np.array([0, 1, 2, 3, 4])
    majority = np.array([0, 1, 5, 6, 4])  # the sets agree on 3 of 5 images
    pred = np.array([0, 2, 5, 3, 1])  # agreed: right, wrong, -, -, wrong; disagreed: FER+'s side, FER-2013's side
    s = split_of(pred, labels, majority)
    assert (s["agreed, right"], s["agreed, wrong"]) == (20, 40)
    assert (s["disagreed, FER+'s side"], s["disagreed, FER-2013's side"], s["disagreed, neither"]) == (20, 20, 0)
    assert s["FER-2013 acc"] == 40 and s["FER+ acc"] == 40
    assert np.isclose(s["FER-2013 acc"] + s["FER+ acc"],
                      2 * s["agreed, right"] + s["disagreed, FER+'s side"] + s["disagreed, FER-2013's side"])


def test_floor_oracle_counts_the_calls_each_recall_floor_forces_beyond_fer_plus():
    from feredge.benchmarks.label_sets import floor_oracle

    # 10 images labelled fear (2), of which FER+'s majority says fear for 2 and neutral for 8;
    # 10 labelled happy (3) that FER+ agrees with.
    labels = np.array([2] * 10 + [3] * 10)
    majority = np.array([2, 2] + [4] * 8 + [3] * 10)
    oracle = floor_oracle(labels, majority, min_recall=0.45)
    assert oracle["classes"]["fear"] == {"n": 10, "agree": 2, "forced": 3}  # ceil(4.5) = 5 calls, 2 agree
    assert oracle["classes"]["happy"]["forced"] == 0 and oracle["forced"] == 3
    assert oracle["FER+ acc"] == pytest.approx(85.0)  # 17 of 20 still answer the majority
    assert oracle["FER-2013 acc"] == pytest.approx(75.0)  # 12 agreed + 3 forced, of 20
