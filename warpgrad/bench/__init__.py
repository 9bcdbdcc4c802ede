"""The benchmark suite: what one meta-iteration costs, in seconds and memory.

Run it as ``warpgrad bench [--scale full|small] [--out DIR] [--reference] ...`` or
``python benchmarks/run.py ...``. It prints a markdown table and writes ``bench.json`` and
``bench.md``. The protocol: Conv4 with linear 3x3 conv warps, 20-way glyph alphabet tasks,
K SGD steps at lr 0.1, offline WarpGrad over every buffer point one at a time. Models are
built by :func:`warpgrad.conv4` and, unless ``--reference`` keeps the reference core, put
through :func:`warpgrad.accel.convert`. Figures, one module each (or two to a module):

1. ``meta_iteration`` (:mod:`.meta_iteration`): one meta-iteration for warp-leap (exact,
   first-order), leap, reptile and fomaml: seconds and peak memory; extrapolated from
   ``measured_tasks`` tasks at ``--scale full``.
2. ``overhead`` (:mod:`.overhead`): that meta-iteration over the bare compute it needs.
3. ``memory_vs_steps`` (:mod:`.memory`): peak memory as the adaptation length K grows,
   WarpGrad online and offline versus second-order MAML.
4. ``warped_step`` and 5. ``batched_objective`` (:mod:`.steps`): a warped adaptation step
   versus a plain one; the offline objective per point, batched versus one at a time.
6. ``switches`` and 7. ``online`` (:mod:`.switches`): the ladder from the reference core
   through the accelerator, tuned malloc and bf16; the online objective with a fresh step
   per point versus the adaptation's own.
8. ``training`` (:mod:`.training`, only when named): whole meta-batches, one point per
   φ update or points batched.
11. ``scale_out`` (:mod:`.scale_out`, only when named): meta-iterations per second on 1
    and 2 processes (torch.distributed) and the time in collectives.
9. ``host_ops`` (:mod:`.host_ops`): operators dispatched from the host per step or point.
10. ``convolutions`` (:mod:`.convolutions`, :mod:`.conv_calls`): the meta-iteration's
    convolutions alone, replayed call by call: the floor under the time targets.

:mod:`.common` holds the scales, switches, measurements and the per-case process;
:mod:`.suite` the order and :func:`main`; :mod:`.report` the table and markdown;
:mod:`.targets` judges the results against ``targets.json``.

Every measured case runs in a fresh process (a forkserver child), so neither its time nor its
peak memory is contaminated by another case. Memory is the process's peak resident set size
(``ru_maxrss``) and its growth over the resident size after setup, in MB (10^6 bytes); on a
GPU (``device="cuda"``) also the peak of ``torch.cuda.max_memory_allocated``, and every
timing synchronises the device first.
"""

from warpgrad.bench.common import (
    CASES,
    META_METHODS,
    SCALES,
    SWITCHES,
    Scale,
    machine_info,
    run_case,
)
from warpgrad.bench.convolutions import convolution_calls
from warpgrad.bench.host_ops import HOST_OPS_MODES
from warpgrad.bench.memory import live_tensor_peak_bytes
from warpgrad.bench.overhead import bare_forward, bare_meta_iteration
from warpgrad.bench.report import markdown, rows, write_results
from warpgrad.bench.scale_out import SCALE_OUT_METHODS
from warpgrad.bench.suite import FIGURES, Suite, known_figures, main, run_suite
from warpgrad.bench.switches import SWITCH_LADDER
from warpgrad.bench.targets import check_targets, load_targets
from warpgrad.bench.training import TRAINING_MODES

__all__ = [
    "CASES",
    "FIGURES",
    "HOST_OPS_MODES",
    "META_METHODS",
    "SCALES",
    "SCALE_OUT_METHODS",
    "SWITCHES",
    "SWITCH_LADDER",
    "TRAINING_MODES",
    "Scale",
    "Suite",
    "bare_forward",
    "bare_meta_iteration",
    "check_targets",
    "convolution_calls",
    "known_figures",
    "live_tensor_peak_bytes",
    "load_targets",
    "machine_info",
    "main",
    "markdown",
    "rows",
    "run_case",
    "run_suite",
    "write_results",
]
