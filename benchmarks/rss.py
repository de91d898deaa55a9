"""Peak RSS of an edge-only process running one format: TensorFlow and Keras are blocked from import.

python -m feredge.benchmarks.rss MODEL_DIR FORMAT [RUNS]  -> prints JSON {"peak_rss_mb": ...}
"""

import json
import resource
import sys


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"{name} is blocked in the edge-only benchmark process")
        return None


def main():
    sys.meta_path.insert(0, _Block())
    import numpy as np

    from feredge.edge.classifier import EmotionClassifier

    model, fmt = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    clf = EmotionClassifier(model, fmt=fmt, threads=1)
    x = np.random.default_rng(0).uniform(0, 255, (1, clf.input_size, clf.input_size, clf.channels)).astype(np.float32)
    for _ in range(runs):
        clf.predict_pixels(x)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(json.dumps({"peak_rss_mb": round(peak_kb / 1024, 1), "tensorflow_loaded": "tensorflow" in sys.modules}))


if __name__ == "__main__":
    main()
