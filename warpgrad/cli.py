"""The ``warpgrad`` command: train, evaluate, report, data, bench.

Every error a user can cause (unknown experiment, method or key, wrong type, missing data,
existing run directory) prints one line and exits with status 2; nothing is overwritten.
torch and the experiments are imported only by the commands that run them, so that
``--help`` and the errors about names and files come back at once.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from types import SimpleNamespace

import click

from warpgrad.data.errors import DataError
from warpgrad.errors import CollectiveError, LaunchError, RunDirError
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
        except (ConfigError, DataError, RunDirError, OSError,  # OSError: the disk
                LaunchError) as error:
            _fail(str(error))
        except (FloatingPointError, CollectiveError) as error:  # not usage errors
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
    warpgrad train my-experiment.yaml   your own experiment file (docs/own-experiments.md)
    warpgrad evaluate RUN_DIR           re-evaluate a run's checkpoints (last or best)
    warpgrad report RUN_DIR...          side-by-side table and plot of runs
    warpgrad data check EXPERIMENT      are the experiment's files there and readable?
    warpgrad data stats EXPERIMENT      sizes and a pixel-space 1-NN sanity figure
    warpgrad data contact-sheet OUT.png a grid of the experiment's images
    warpgrad bench                      time and memory of one meta-iteration
    """
    warnings.formatwarning = _one_line_warning


def _one_line_warning(message: Warning | str, category: type, filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"warning: {message}\n"


def _accelerate_process(config: object, threads: int | None) -> None:
    """The accelerator's process-wide settings, where the run uses the accelerator: the
    tuned allocator and, unless ``--threads`` fixed the count, threads that follow the
    cores other processes leave free."""
    if getattr(config, "accelerate", False):
        from warpgrad.accel import follow_free_cores, tune_allocator

        tune_allocator()
        if threads is None and getattr(config, "device", "cpu") == "cpu" and \
                follow_free_cores():
            from warpgrad.accel.threads import stop_following

            click.get_current_context().call_on_close(stop_following)


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("experiment", required=False)
@click.argument("overrides", nargs=-1)
@click.option("--method", "-m", help="method(s) to run, comma-separated (default: the "
              "experiment's); e.g. warp-leap,leap")
@click.option("--out", type=click.Path(path_type=Path),
              help="new run directory (default runs/EXPERIMENT-TIME)")
@click.option("--resume", type=click.Path(path_type=Path), metavar="RUN_DIR",
              help="continue a killed run from its last checkpoints, with its recorded config "
              "(KEY=VALUE overrides may change its length and learning rates)")
@click.option("--data-root", help="folder holding real datasets (default $WARPGRAD_DATA, then "
              "~/warpgrad-data)")
@click.option("--device", help="cpu or cuda (default: the config's, cpu)")
@click.option("--list", "list_experiments", is_flag=True, help="list the experiments and exit")
@click.option("--show-config", is_flag=True,
              help="print the resolved config (every overridable field, with what it means) "
              "and exit")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for PyTorch, fixed (default: as many as the cores other "
              "processes leave free, followed as the load changes)")
@click.option("--no-progress", is_flag=True, help="hide progress bars")
@_user_errors
def train(experiment: str | None, overrides: tuple[str, ...], method: str | None,
          out: Path | None, resume: Path | None, data_root: str | None, device: str | None,
          list_experiments: bool, show_config: bool, threads: int | None, no_progress: bool
          ) -> None:
    """Meta-train and evaluate the methods of EXPERIMENT (default: glyphs-multishot): a
    shipped experiment's name or the path of your own YAML file (`extends: NAME` starts it
    from a shipped one).

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
            from warpgrad.experiments.config_docs import commented_yaml

            click.echo(commented_yaml(kind, config), nl=False)
            return
        name = registry.experiment_label(name)
        run_dir = out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if run_dir.exists() and not (run_dir.is_dir() and not any(run_dir.iterdir())):
            raise ConfigError(f"run directory {run_dir} already exists; use --resume {run_dir} "
                              "to continue it, or another --out")
    else:
        if experiment or method or out or data_root or device:
            raise ConfigError("--resume continues a run with its recorded config; give only "
                              "the run directory and KEY=VALUE overrides of its learning rates "
                              "or length")
        name, kind, config = registry.load_run(resume, overrides)
        run_dir = resume
    import torch

    if getattr(config, "device", "cpu").startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available here; use cpu")
    if threads is not None:
        torch.set_num_threads(threads)
    _accelerate_process(config, threads)
    from warpgrad import distributed

    _join_processes(kind, config)
    try:
        summary = registry.KINDS[kind].run(config, name, run_dir, not no_progress)
    except FloatingPointError as error:
        keys = registry.RESUME_KEYS[kind]
        raise FloatingPointError(f"{error}; to go on from the last checkpoint with other "
                                 f"settings: warpgrad train --resume {run_dir} KEY=VALUE "
                                 f"(KEY: {', '.join(keys)})") from None
    if distributed.is_main():
        click.echo(registry.KINDS[kind].table(summary))
        click.echo(f"run directory: {run_dir}")
    distributed.shutdown()


def _join_processes(kind: str, config: object) -> None:
    """Under torchrun, join the other processes (after every one has checked its arguments
    and the run directory, before any writes) and check that the run can be split."""
    from warpgrad import distributed

    if not distributed.init_from_env():
        return
    if registry.KINDS[kind].experiment is None:
        raise ConfigError(f"experiment kind {kind!r} runs in one process; launch it without "
                          "torchrun")
    distributed.shard(range(config.meta_batch))  # a meta-batch the processes divide


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Choice(registry.CHECKPOINTS), default="last",
              show_default=True, help="last: each method's final checkpoint.pt; best: its "
              "best.pt, the best on validation (runs with val_every)")
@click.option("--tasks", type=click.IntRange(min=1), help="number of test tasks (few-shot)")
@click.option("--force", is_flag=True, help="replace an earlier evaluation file of the same "
              "choices")
@click.option("--no-progress", is_flag=True, help="hide progress bars")
@_user_errors
def evaluate(run_dir: Path, checkpoint: str, tasks: int | None, force: bool,
             no_progress: bool) -> None:
    """Re-evaluate the checkpoints in RUN_DIR on its held-out tasks and print the table.

    Writes RUN_DIR/evaluation.json (summary.json's schema), or evaluation-best.json,
    evaluation-tasks5.json, evaluation-best-tasks5.json for the other choices: nothing the
    run wrote is replaced, and an earlier evaluation file only with --force.
    """
    _accelerate_process(registry.load_run(run_dir)[2], None)
    kind, summary = registry.evaluate_run(run_dir, eval_tasks=tasks, progress=not no_progress,
                                          checkpoint=checkpoint, force=force)
    click.echo(registry.KINDS[kind].table(summary))
    click.echo(f"evaluated the {checkpoint} checkpoints; wrote "
               f"{registry.evaluation_path(run_dir, checkpoint, tasks)}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--plot", type=click.Path(path_type=Path), help="also write a PNG comparing them")
@_user_errors
def report(run_dirs: tuple[Path, ...], plot: Path | None) -> None:
    """Side-by-side table (and plot) of the summaries of several runs."""
    from warpgrad.experiments.run import format_table, plot_results

    summaries = [_read_summary(run_dir) for run_dir in run_dirs]
    metrics = {s["metric"] for s in summaries}
    if len(metrics) > 1:
        raise ConfigError(f"runs report different metrics {sorted(metrics)}; compare runs of "
                          "one kind")
    labels = _run_names(run_dirs)
    click.echo(format_table(summaries, labels))
    if plot is not None:
        plot_results(summaries, plot, labels)
        click.echo(f"wrote {plot}")


def _read_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no summary.json (not a finished run)")
    try:
        summary = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON ({error}); rerun warpgrad evaluate "
                          f"{run_dir} or warpgrad train --resume {run_dir}") from None
    results = summary.get("results") if isinstance(summary, dict) else None
    if (not isinstance(results, dict) or not isinstance(summary.get("metric"), str)
            or not all(isinstance(r, dict) and "meta_train_seconds" in r
                       for r in results.values())):
        raise ConfigError(f"{path} is not a summary report compares (expected "
                          '{"metric": ..., "results": {method: {"meta_train_seconds": ...}}}; '
                          "continual-sine and maze runs print their own tables)")
    return summary


def _run_names(run_dirs: tuple[Path, ...]) -> list[str]:
    """Each run's folder name; the path where two runs share one."""
    names = [p.resolve().name for p in run_dirs]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, run_dirs, strict=True)]


@main.command()
@click.argument("claims", nargs=-1)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="seeds per run (0 … N-1), each a full run directory")
@click.option("--scale", type=click.Choice(["cpu", "paper", "tiny"]), default="cpu",
              show_default=True, help="cpu: embedded data, minutes per claim on a 2-core CPU; "
              "paper: the paper's protocols on the real datasets (a GPU); tiny: a seconds-long "
              "smoke test whose numbers mean nothing")
@click.option("--out", type=click.Path(path_type=Path),
              help="the suite's folder (default runs/reproduce-SCALE); complete runs in it are "
              "skipped, partial ones resumed")
@click.option("--data-root", help="folder holding real datasets (--scale paper)")
@click.option("--device", help="cpu or cuda (classification runs)")
@click.option("--list", "list_claims", is_flag=True,
              help="list the claims with their CPU wall-time estimate and exit")
@click.option("--no-progress", is_flag=True, help="hide progress bars")
@_user_errors
def reproduce(claims: tuple[str, ...], seeds: int, scale: str, out: Path | None,
              data_root: str | None, device: str | None, list_claims: bool,
              no_progress: bool) -> None:
    """Run the paper's CLAIMS (default: all nine) and write a report: for each, the paper's
    number beside ours with 95% CIs, paired tests against its baseline and a verdict (holds,
    does not hold, inconclusive). Writes OUT/report.md, OUT/results.json and OUT/figures/."""
    from warpgrad.reproduce import suite
    from warpgrad.reproduce.claims import claim_minutes

    chosen = suite.select(claims)
    if list_claims:
        for claim in chosen:
            click.echo(f"{claim.name:<10} ~{claim_minutes(claim, seeds):>4.0f} min  "
                       f"{claim.title}")
        total = sum(claim_minutes(c, seeds) for c in chosen)
        click.echo(f"{'total':<10} ~{total:>4.0f} min  (--scale cpu, {seeds} seeds, 2-core CPU)")
        return
    out = out or Path("runs") / f"reproduce-{scale}"
    # the suite's runs use the accelerator (the experiments' default)
    _accelerate_process(SimpleNamespace(accelerate=True, device=device or "cpu"), None)
    report = suite.run_suite(chosen, seeds=seeds, scale=scale, out=out, data_root=data_root,
                             device=device, progress=not no_progress,
                             log=lambda line: click.echo(line, err=True))
    for name, entry in report["claims"].items():
        click.echo(f"{name:<10} {entry['verdict']:<14} {entry['title']}")
    click.echo(f"report: {out / 'report.md'}")


@main.group()
def data() -> None:
    """Check, measure or look at an experiment's dataset (the loaders build their caches on
    first use; there is nothing to prepare)."""


def _experiment_config(experiment: str, data_root: str | None, overrides: tuple[str, ...] = ()):
    return registry.load_experiment(experiment, overrides, data_root=data_root)[1]


@data.command("check")
@click.argument("experiment", default=DEFAULT_EXPERIMENT)
@click.argument("overrides", nargs=-1)
@click.option("--data-root", help="folder holding real datasets")
@_user_errors
def data_check(experiment: str, overrides: tuple[str, ...], data_root: str | None) -> None:
    """Load EXPERIMENT's dataset (building caches) and say what was found; OVERRIDES as for
    train (e.g. dataset=folder)."""
    config, splits = _experiment_splits(experiment, data_root, overrides)
    if splits is None:
        click.echo(f"{experiment}: generated data, nothing to check")
        return
    for split, dataset in splits.items():
        click.echo(f"{split:<6} {dataset.num_classes:>6} classes {len(dataset):>8} examples "
                   f"{'x'.join(map(str, dataset.feature_shape))}")
    click.echo(f"ok: {config.dataset} is readable")


def _experiment_splits(experiment: str, data_root: str | None, overrides: tuple[str, ...]):
    """``(config, splits)``; splits ``None`` where the experiment generates its data."""
    from warpgrad.experiments.schemas import ClassificationConfig

    config = _experiment_config(experiment, data_root, overrides)  # errors before torch
    if not isinstance(config, ClassificationConfig):
        return config, None
    from warpgrad.experiments.classification import load_splits

    return config, load_splits(config)


@data.command("stats")
@click.argument("experiment", default=DEFAULT_EXPERIMENT)
@click.argument("overrides", nargs=-1)
@click.option("--data-root", help="folder holding real datasets")
@click.option("--episodes", type=click.IntRange(min=1), default=500, show_default=True,
              help="few-shot episodes per 1-NN figure")
@_user_errors
def data_stats(experiment: str, overrides: tuple[str, ...], data_root: str | None,
               episodes: int) -> None:
    """Classes, examples and groups per split of EXPERIMENT's dataset, and the pixel-space
    1-nearest-neighbour accuracy of 5-way episodes of its test classes (a sanity figure:
    what any meta-learner should beat). OVERRIDES as for train."""
    from warpgrad.data import DataError as _DataError
    from warpgrad.data import FewShotSampler, nearest_neighbour_accuracy

    config, splits = _experiment_splits(experiment, data_root, overrides)
    if splits is None:
        raise ConfigError(f"{experiment} generates its data; there are no dataset statistics")
    for split, dataset in splits.items():
        click.echo(f"{split:<6} {dataset.num_classes:>6} classes {len(dataset):>8} examples "
                   f"{len(dataset.alphabet_names()):>4} groups "
                   f"{'x'.join(map(str, dataset.feature_shape))}")
    test = splits.get("test", splits.get("all"))
    for k_shot in (1, 5):
        try:
            sampler = FewShotSampler(test, 5, k_shot, k_query=5, seed=config.seed)
        except _DataError as error:
            click.echo(f"1-NN 5-way {k_shot}-shot: skipped ({error})")
            continue
        accuracy, ci = nearest_neighbour_accuracy(sampler, episodes, seed=config.seed)
        click.echo(f"1-NN 5-way {k_shot}-shot on {test.num_classes} test classes: "
                   f"{100 * accuracy:.1f} ± {100 * ci:.1f}% (chance 20%)")


@data.command("contact-sheet")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--experiment", default=DEFAULT_EXPERIMENT, help="whose dataset to draw")
@click.option("--data-root", help="folder holding real datasets")
@click.option("--split", default=None, help="which split to draw (default: the first)")
@click.option("--groups", type=click.IntRange(min=1), default=12, show_default=True,
              help="groups (alphabets) to draw")
@click.option("--classes", type=click.IntRange(min=1), default=3, show_default=True,
              help="classes per group")
@click.option("--columns", type=click.IntRange(min=1), default=12, show_default=True,
              help="images per class")
@click.option("--zoom", type=click.IntRange(min=1), default=2, show_default=True)
@_user_errors
def data_contact_sheet(out: Path, overrides: tuple[str, ...], experiment: str,
                       data_root: str | None, split: str | None, groups: int, classes: int,
                       columns: int, zoom: int) -> None:
    """Write a PNG grid of samples of EXPERIMENT's dataset to OUT (OVERRIDES as for
    train)."""
    from warpgrad.data import contact_sheet

    _, splits = _experiment_splits(experiment, data_root, overrides)
    if splits is None:
        raise ConfigError(f"{experiment} has no image dataset")
    if split is not None and split not in splits:
        raise ConfigError(f"--split must be one of {sorted(splits)}, got {split!r}")
    dataset = splits[split] if split is not None else next(iter(splits.values()))
    if not dataset.is_images:
        raise ConfigError(f"{experiment}'s dataset holds features of shape "
                          f"{dataset.feature_shape}, not images")
    path = contact_sheet(dataset, out, n_alphabets=groups, classes_per_alphabet=classes,
                         instances=columns, zoom=zoom, seed=0)
    click.echo(f"wrote {path}")


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
              "convolutions, protocols (default: all of these), training (only when named: whole "
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
    import torch

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
