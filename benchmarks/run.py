"""Run the benchmark suite: ``python benchmarks/run.py [--scale full|small] [--out DIR]``.

The same as ``warpgrad bench`` (options: ``--threads``, ``--tasks``, ``--only``,
``--reference``, ``--precision``, ``--buffer``, ``--no-tune-malloc``, ``--cuda-graphs``,
``--cudnn-benchmark``, ``--device``); see BENCHMARKS.md for the figures and the latest
results, and :mod:`warpgrad.bench` for the code, one module per figure.
``gpu.sh`` beside this file is the prepared check for a lent GPU machine, ``profile_gpu.py``
its profile of one meta-iteration.
"""

from warpgrad.cli import bench

if __name__ == "__main__":
    bench()
