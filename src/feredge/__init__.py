"""feredge: facial-emotion detection for Raspberry Pi-class CPUs.

Subpackages map the repository's folders: ``feredge.train`` (train/), ``feredge.export`` (export/),
``feredge.edge`` (edge/), ``feredge.benchmarks`` (benchmarks/), ``feredge.models`` (models/).
Only ``feredge.edge`` is needed at run time, and it never imports TensorFlow or Keras.
"""

__version__ = "0.1.0"
