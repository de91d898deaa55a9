"""Peak RSS of an edge-only process running one format: TensorFlow and Keras are blocked from import.

python -m feredge.benchmarks.rss MODEL FORMAT [RUNS]  -> prints JSON {"peak_rss_mb": ...}
(MODEL: a model folder, or the peer's .tflite with the peer's format name; see bench.classifier_factory)
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
    # Imported after the block is in place, so that nothing they pull in can load TensorFlow or Keras.
    import numpy as np

    from feredge.benchmarks.bench import classifier_factory

    model, fmt = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    clf = classifier_factory(model, fmt)(1)
    x = np.random.default_rng(0).uniform(0, 255, (1, clf.input_size, clf.input_size, clf.channels)).astype(np.float32)
    for _ in range(runs):
        clf.predict_pixels(x)
    print(json.dumps({"peak_rss_mb": round(peak_rss_kb() / 1024, 1), "tensorflow_loaded": "tensorflow" in sys.modules}))


def peak_rss_kb() -> int:
    """This process's own high-water RSS. Linux's ru_maxrss survives exec, so a child started by a big
    parent would report the parent's peak; VmHWM in /proc belongs to this process's memory alone."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS


if __name__ == "__main__":
    main()
