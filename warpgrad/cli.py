"""The ``warpgrad`` command: train, evaluate, report, data.

Every error a user can cause (unknown experiment, method or key, wrong type, missing data,
existing run directory) prints one line and exits with status 2; nothing is overwritten.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import wraps
from pathlib import Path

import click
import torch
import yaml

from warpgrad import distributed
from warpgrad.data.errors import DataError
from warpgrad.experiments import registry
from warpgrad.experiments.registry import DEFAULT_EXPERIMENT, ConfigError


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _user_errors(command: Callable) -> Callable:
    """Turn the errors a user can cause into one line and exit status 2."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ConfigError, DataError, FileNotFoundError, distributed.LaunchError) as error:
            _fail(str(error))
        except (FloatingPointError, distributed.CollectiveError) as error:  # not usage errors
            click.echo(f"error: {error}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="warpgrad")
def main() -> None:
    """Meta-learning with Warped Gradient Descent: the paper's experiments, one command each.

    \b
    warpgrad train                      the main job (Warp-Leap vs Leap on glyph alphabets)
    warpgrad train EXPERIMENT ...       any experiment (warpgrad train --list)
    warpgrad evaluate RUN_DIR           re-evaluate a run's checkpoints
    warpgrad report RUN_DIR...          side-by-side table and plot of runs
    warpgrad data check EXPERIMENT      are the experiment's files there and readable?
    """


def _accelerate_process(config: object) -> None:
    """The accelerator's one process-wide setting, where the run uses the accelerator."""
    if getattr(config, "accelerate", False):
        from warpgrad.accel import tune_allocator

        tune_allocator()


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("experiment", required=False)
@click.argument("overrides", nargs=-1)
@click.option("--method", "-m", help="method(s) to run, comma-separated (default: the "
              "experiment's); e.g. warp-leap,leap")
@click.option("--out", type=click.Path(path_type=Path),
              help="new run directory (default runs/EXPERIMENT-TIME)")
@click.option("--resume", type=click.Path(path_type=Path), metavar="RUN_DIR",
              help="continue a killed run from its last checkpoints, with its recorded config")
@click.option("--data-root", help="folder holding real datasets (default $WARPGRAD_DATA, then "
              "~/warpgrad-data)")
@click.option("--device", help="cpu or cuda (default: the config's, cpu)")
@click.option("--list", "list_experiments", is_flag=True, help="list the experiments and exit")
@click.option("--show-config", is_flag=True,
              help="print the resolved config (every overridable field) and exit")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for PyTorch (default: PyTorch's choice; 1 is fastest for small "
              "models on a busy machine)")
@click.option("--no-progress", is_flag=True, help="hide progress bars")
@_user_errors
def train(experiment: str | None, overrides: tuple[str, ...], method: str | None,
          out: Path | None, resume: Path | None, data_root: str | None, device: str | None,
          list_experiments: bool, show_config: bool, threads: int | None, no_progress: bool
          ) -> None:
    """Meta-train and evaluate the methods of EXPERIMENT (default: glyphs-multishot).

    OVERRIDES are key=value pairs for any config field, e.g. `iterations=10 steps=5`
    (`--show-config` prints every field with its resolved value). Prints a table: method,
    test metric with 95% CI, meta-training time. Writes the run directory: config.json,
    environment.json, per-method checkpoints and metrics.csv, plots, summary.json.
    """
    if experiment is not None and "=" in experiment:  # `warpgrad train steps=5`: an override
        experiment, overrides = None, (experiment, *overrides)
    if list_experiments:
        for name in registry.experiment_names():
            click.echo(name)
        return
    if resume is None:
        name = experiment or DEFAULT_EXPERIMENT
        methods = None if method is None else [m.strip() for m in method.split(",")]
        kind, config = registry.load_experiment(name, overrides, methods=methods,
                                                data_root=data_root, device=device)
        if show_config:
            click.echo(yaml.safe_dump({"kind": kind, **asdict(config)}, sort_keys=False),
                       nl=False)
            return
        run_dir = out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if run_dir.exists():
            raise ConfigError(f"run directory {run_dir} already exists; use --resume {run_dir} "
                              "to continue it, or another --out")
    else:
        if experiment or overrides or method or out or data_root or device:
            raise ConfigError("--resume continues a run with its recorded config; give only "
                              "the run directory")
        name, kind, config = registry.load_run(resume)
        run_dir = resume
    if getattr(config, "device", "cpu").startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available here; use cpu")
    if threads is not None:
        torch.set_num_threads(threads)
    _accelerate_process(config)
    _join_processes(kind, config)
    summary = registry.KINDS[kind].run(config, name, run_dir, not no_progress)
    if distributed.is_main():
        click.echo(registry.KINDS[kind].table(summary))
        click.echo(f"run directory: {run_dir}")
    distributed.shutdown()


def _join_processes(kind: str, config: object) -> None:
    """Under torchrun, join the other processes (after every one has checked its arguments
    and the run directory, before any writes) and check that the run can be split."""
    if not distributed.init_from_env():
        return
    if registry.KINDS[kind].experiment is None:
        raise ConfigError(f"experiment kind {kind!r} runs in one process; launch it without "
                          "torchrun")
    distributed.shard(range(config.meta_batch))  # a meta-batch the processes divide


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--tasks", type=click.IntRange(min=1), help="number of test tasks (few-shot)")
@click.option("--no-progress", is_flag=True, help="hide progress bars")
@_user_errors
def evaluate(run_dir: Path, tasks: int | None, no_progress: bool) -> None:
    """Re-evaluate the checkpoints in RUN_DIR on its held-out tasks; writes
    RUN_DIR/evaluation.json (summary.json's schema) and prints the table."""
    _accelerate_process(registry.load_run(run_dir)[2])
    kind, summary = registry.evaluate_run(run_dir, eval_tasks=tasks, progress=not no_progress)
    click.echo(registry.KINDS[kind].table(summary))


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--plot", type=click.Path(path_type=Path), help="also write a PNG comparing them")
@_user_errors
def report(run_dirs: tuple[Path, ...], plot: Path | None) -> None:
    """Side-by-side table (and plot) of the summaries of several runs."""
    from warpgrad.experiments.run import format_table, plot_results

    summaries = []
    for run_dir in run_dirs:
        path = run_dir / "summary.json"
        if not path.is_file():
            raise ConfigError(f"{run_dir} has no summary.json (not a finished run)")
        summaries.append(json.loads(path.read_text()))
    metrics = {s["metric"] for s in summaries}
    if len(metrics) > 1:
        raise ConfigError(f"runs report different metrics {sorted(metrics)}; compare runs of "
                          "one kind")
    labels = [str(p) for p in run_dirs]
    click.echo(format_table(summaries, labels))
    if plot is not None:
        plot_results(summaries, plot, labels)
        click.echo(f"wrote {plot}")


@main.group()
def data() -> None:
    """Check, prepare or look at an experiment's dataset."""


def _experiment_config(experiment: str, data_root: str | None):
    return registry.load_experiment(experiment, data_root=data_root)[1]


@data.command("check")
@click.argument("experiment", default=DEFAULT_EXPERIMENT)
@click.option("--data-root", help="folder holding real datasets")
@_user_errors
def data_check(experiment: str, data_root: str | None) -> None:
    """Load EXPERIMENT's dataset (building caches) and say what was found."""
    from warpgrad.experiments.classification import ClassificationConfig, load_splits

    config = _experiment_config(experiment, data_root)
    if not isinstance(config, ClassificationConfig):
        click.echo(f"{experiment}: generated data, nothing to check")
        return
    for split, dataset in load_splits(config).items():
        click.echo(f"{split:<6} {dataset.num_classes:>6} classes {len(dataset):>8} images "
                   f"{'x'.join(map(str, dataset.image_shape))}")
    click.echo(f"ok: {config.dataset} is readable")


@data.command("contact-sheet")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--experiment", default=DEFAULT_EXPERIMENT, help="whose dataset to draw")
@click.option("--data-root", help="folder holding real datasets")
@_user_errors
def data_contact_sheet(out: Path, experiment: str, data_root: str | None) -> None:
    """Write a PNG grid of samples of EXPERIMENT's dataset to OUT."""
    from warpgrad.data import contact_sheet
    from warpgrad.experiments.classification import ClassificationConfig, load_splits

    config = _experiment_config(experiment, data_root)
    if not isinstance(config, ClassificationConfig):
        raise ConfigError(f"{experiment} has no image dataset")
    dataset = next(iter(load_splits(config).values()))
    click.echo(f"wrote {contact_sheet(dataset, out)}")


@main.command()
@click.option("--scale", type=click.Choice(["full", "small"]), default="small", show_default=True,
              help="full: the original's multi-shot protocol (minutes per case; the meta-batch "
              "is extrapolated from --tasks tasks); small: seconds")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/bench"),
              show_default=True,
              help="folder for bench.json and bench.md")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for PyTorch in every case (default: PyTorch's choice)")
@click.option("--tasks", type=click.IntRange(min=1),
              help="tasks of the meta-batch actually run (default: 1 at full scale, all at small)")
@click.option("--only", help="comma-separated figures to run: meta_iteration, overhead, "
              "memory_vs_steps, warped_step, batched_objective, switches, online, host_ops, "
              "convolutions (default: all of these), training (only when named: whole "
              "meta-batches, one point per warp update or points batched), scale_out (only "
              "when named: 1 and 2 processes on torch.distributed)")
@click.option("--reference", is_flag=True, default=False,
              help="run every figure on the reference core instead of the accelerator "
              "(no warpgrad.accel.convert; the switches ladder still climbs from it to the "
              "accelerator)")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              show_default=True, help="the accelerator's forward/backward precision (bf16: "
              "autocast)")
@click.option("--buffer", type=click.Choice(["memory", "float16", "disk"]), default="memory",
              show_default=True, help="where the offline replay buffer keeps its points")
@click.option("--tune-malloc/--no-tune-malloc", default=True, show_default=True,
              help="let glibc reuse freed memory (warpgrad.accel.tune_allocator)")
@click.option("--cuda-graphs/--no-cuda-graphs", default=False, show_default=True,
              help="the accelerator replays its fixed-shape passes from CUDA graphs (a GPU "
              "switch)")
@click.option("--cudnn-benchmark/--no-cudnn-benchmark", default=False, show_default=True,
              help="let cuDNN time its convolution algorithms per shape and keep the fastest "
              "(a GPU switch)")
@click.option("--device", default="cpu", show_default=True,
              help="cpu or cuda: where every case's model, data and buffer live")
def bench(scale: str, out: Path, threads: int | None, tasks: int | None, only: str | None,
          reference: bool, precision: str, buffer: str, tune_malloc: bool, cuda_graphs: bool,
          cudnn_benchmark: bool, device: str) -> None:
    """Benchmark one meta-iteration: seconds, peak memory, overhead over bare compute.

    Prints a markdown table and writes OUT/bench.json and OUT/bench.md (see BENCHMARKS.md).
    Models go through the accelerator (warpgrad.accel.convert) unless --reference. The
    switches apply to every figure but "switches", which climbs from the reference core one
    switch at a time.
    """
    from warpgrad.bench import known_figures
    from warpgrad.bench import main as run_bench

    sections = None if only is None else tuple(s.strip() for s in only.split(","))
    known = known_figures()
    if sections is not None and not set(sections) <= known:
        _fail(f"unknown figure(s) {sorted(set(sections) - known)}; expected any of "
              f"{sorted(known)}")
    if device != "cpu" and not device.startswith("cuda"):
        _fail(f"unknown device {device!r}; expected cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        _fail("device 'cuda' requested but CUDA is not available here; use cpu")
    if reference and (precision != "fp32" or cuda_graphs):
        _fail("--reference runs the reference core, which has no bf16 and no CUDA graphs; "
              "drop --precision bf16 / --cuda-graphs")
    run_bench(scale, out, threads=threads, measured_tasks=tasks, sections=sections,
              reference=reference, precision=precision, buffer=buffer,
              tune_malloc=tune_malloc, cuda_graphs=cuda_graphs,
              cudnn_benchmark=cudnn_benchmark, device=device,
              log=lambda line: click.echo(line, err=not line.startswith("## ")))


if __name__ == "__main__":
    main()
