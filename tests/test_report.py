import json
import shutil

from feredge.benchmarks.report import update_readme


def test_readme_tables_come_from_manifests_and_results(tmp_path, tiny_models):
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models / "tiny")
    results = tmp_path / "results"
    results.mkdir()
    (results / "some-cpu.md").write_text("### some cpu\n\n| model | format |\n|---|---|\n| tiny | tflite_int8 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- models-table:start -->\nold\n<!-- models-table:end -->\nmiddle\n"
                      "<!-- bench-table:start -->\nold\n<!-- bench-table:end -->\n"
                      "<!-- pi-estimate:start -->\nold\n<!-- pi-estimate:end -->\n"
                      "<!-- soak:start -->\nold\n<!-- soak:end -->\n"
                      "<!-- detection:start -->\nold\n<!-- detection:end -->\n"
                      "<!-- input-size:start -->\nold\n<!-- input-size:end -->\nend\n")
    (results / "soak").mkdir()
    (results / "soak" / "soak.md").write_text("Kiosk soak: all bars held.\n")
    (results / "detection").mkdir()
    (results / "detection" / "detection.md").write_text("YuNet found them all.\n")
    (results / "input_size").mkdir()
    (results / "input_size" / "resnet50v2.md").write_text("ResNet50V2 by input size.\n")
    text = update_readme(readme, models, results)
    m = json.loads((models / "tiny" / "manifest.json").read_text())
    acc = f"{100 * m['formats']['tflite_int8']['accuracy']:.2f} %"
    assert "| tiny | tflite_int8 | " + acc in text
    recall = m["formats"]["tflite_int8"]["recall"]
    worst = min(recall, key=recall.get)
    assert f"| {worst} {recall[worst]:.2f} |" in text.split("| tiny | tflite_int8 | ")[1].splitlines()[0] + "|"
    assert text.count("| tiny |") == 1 + len(m["formats"]) + 1  # keras row, one per format, bench row
    assert "old" not in text and text.startswith("intro\n") and text.endswith("end\n") and "### some cpu" in text
    assert "Kiosk soak: all bars held." in text and "_Not measured yet._" in text  # no Pi estimate here
    assert text.count("YuNet found them all.") == 1  # in its own section, not also in the bench one
    assert text.count("ResNet50V2 by input size.") == 1


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
