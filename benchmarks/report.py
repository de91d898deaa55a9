"""Regenerate the README's tables from what the repository holds, never by hand:
the models table from models/*/manifest.json, the benchmark section from benchmarks/results/*.md.

    python -m feredge.benchmarks.report            # rewrites README.md between the markers
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from feredge.benchmarks import CHECKOUT as REPO

MARKERS = {"models": ("<!-- models-table:start -->", "<!-- models-table:end -->"),
           "bench": ("<!-- bench-table:start -->", "<!-- bench-table:end -->"),
           "pi": ("<!-- pi-estimate:start -->", "<!-- pi-estimate:end -->"),
           "soak": ("<!-- soak:start -->", "<!-- soak:end -->"),
           "detection": ("<!-- detection:start -->", "<!-- detection:end -->"),
           "input_size": ("<!-- input-size:start -->", "<!-- input-size:end -->")}


def accuracy_change(entry: dict) -> float:
    """The format's accuracy minus Keras', in points (the manifest stores the drop); no "-0.00"."""
    return -entry["accuracy_drop_pt"] + 0.0


def lowest_recall(entry: dict) -> str:
    """The worst class's recall, named ("fear 0.52"); "–" for manifests written before it was kept."""
    recall = entry.get("recall")
    if not recall:
        return "–"
    label = min(recall, key=recall.get)
    return f"{label} {recall[label]:.2f}"


def ferplus_cells(entry: dict) -> str:
    """FER+ majority accuracy, balanced accuracy and lowest recall; "–" where the manifest has none."""
    people = entry.get("ferplus")
    if not people:
        return "– | – | –"
    return f"{100 * people['accuracy']:.2f} % | {100 * people['balanced_accuracy']:.2f} % | {lowest_recall(people)}"


def models_table(models_dir: Path) -> str:
    lines = ["| model | format | PrivateTest accuracy | macro-F1 | lowest class recall | FER+ majority accuracy "
             "| FER+ balanced accuracy | FER+ lowest recall | drop vs Keras (pt) | agreement | size |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    sizes = set()
    for manifest_path in sorted(models_dir.glob("*/manifest.json")):
        m = json.loads(manifest_path.read_text())
        ref = m["keras_reference"]
        sizes.add(m["evaluation"]["n"])
        lines.append(f"| {m['name']} | keras (reference) | {100 * ref['accuracy']:.2f} % | {ref['macro_f1']:.3f} | "
                     f"{lowest_recall(ref)} | {ferplus_cells(ref)} | – | – | – |")
        for fmt, e in m["formats"].items():
            lines.append(f"| {m['name']} | {fmt} | {100 * e['accuracy']:.2f} % | {e['macro_f1']:.3f} | {lowest_recall(e)} | "
                         f"{ferplus_cells(e)} | {accuracy_change(e):+.2f} | {e['agreement_pct']:.2f} % | {e['bytes'] / 1024:.0f} KB |")
        for fmt, e in m.get("rejected", {}).items():  # what the gate refused, said as plainly as what it passed
            if "error" in e:
                lines.append(f"| {m['name']} | {fmt} | not shipped: {e['error']} | | | | | | | | |")
            else:
                lines.append(f"| {m['name']} | {fmt} (**rejected by the gate**, not shipped) | {100 * e['accuracy']:.2f} % | "
                             f"{e['macro_f1']:.3f} | {lowest_recall(e)} | {ferplus_cells(e)} | {accuracy_change(e):+.2f} | {e['agreement_pct']:.2f} % "
                             f"(min {e['gate']['min_agreement_pct']:g} %) | – |")
    images = " / ".join(str(n) for n in sorted(sizes)) or "no"
    lines += ["", f"FER-2013 PrivateTest ({images} images) through the edge runtime, as the export gate recorded "
                  "in each model's manifest.json; drop is the format's accuracy minus Keras'. FER+ columns: the same "
                  "images scored on FER+'s crowd majority over the seven emotions (images without one left out: "
                  "17 of 3589; train/ferplus.py)."]
    return "\n".join(lines)


def bench_section(results_dir: Path) -> str:
    parts = [p.read_text().strip() for p in sorted(results_dir.glob("*.md"))]
    return "\n\n".join(parts) if parts else "_No benchmark results committed yet._"


def replace_between(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise ValueError(f"README lacks the markers {start} ... {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def update_readme(readme: Path = REPO / "README.md", models_dir: Path = REPO / "models",
                  results_dir: Path = REPO / "benchmarks" / "results") -> str:
    text = readme.read_text()
    text = replace_between(text, *MARKERS["models"], models_table(models_dir))
    text = replace_between(text, *MARKERS["bench"], bench_section(results_dir))
    for key, path in (("pi", results_dir / "pi" / "estimate.md"), ("soak", results_dir / "soak" / "soak.md"),
                      ("detection", results_dir / "detection" / "detection.md"),
                      ("input_size", results_dir / "input_size" / "resnet50v2.md")):
        text = replace_between(text, *MARKERS[key], path.read_text().strip() if path.exists() else "_Not measured yet._")
    readme.write_text(text)
    return text


if __name__ == "__main__":
    update_readme(*(Path(a) for a in sys.argv[1:4]))
    print("README tables regenerated")
