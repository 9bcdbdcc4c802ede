"""Maze navigation (Miconi et al., 2019; WarpGrad's RL experiment): the warped agent against
learning-to-RL, all trained by advantage actor-critic.

Each episode, ``num_envs`` mazes (:class:`~warpgrad.rl.maze.MazeEnv`) hide a new reward cell;
the agent, whose LSTM state starts from zero every episode, must find it and, after each
teleport, return to it. The agent is trained after every episode by A2C (discount 0.9,
entropy-like penalty 0.03, value coefficient 0.1, gradient clip 4, Adam 1e-3):

- ``method="l2rl"``: the plain LSTM, all parameters updated every episode;
- ``method="warp"`` (the paper's agent): the adaptive LSTM, whose projection (width
  ``warp_hidden``) and adaptation layers rescale the gates' pre-activations at every step;
  task parameters (the LSTM's weights, the head) updated every episode, warp parameters
  (projection and adaptation) every ``warp_every`` (30) episodes on their accumulated
  gradient (:class:`~warpgrad.rl.agents.EpisodeTrainer`);
- ``method="warp-recurrence"`` (a variant): the LSTM with a linear warp layer on its
  recurrence, on the same two time-scales.

The measure is the total reward per episode (mean over the mazes), against a uniformly
random policy on the same mazes.

The defaults are a scaled-down run (maze 9, episodes of 100 steps, 1,000 episodes: a few
minutes on a 2-core CPU). The paper's setting is ``maze_size=13, episode_length=200,
num_envs=30, hidden_size=100`` for many more episodes (Miconi et al. train for hundreds of
thousands).

Outputs in the run directory: ``config.json``, ``environment.json``, ``metrics.csv`` (one row
per episode: reward, losses), ``checkpoint.pt`` (atomic, every ``checkpoint_every`` episodes;
a run restarted on the same directory resumes from it, nothing lost or repeated),
``rewards.png`` (the reward curve against the random policy) and ``summary.json``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from warpgrad._stats import mean_ci
from warpgrad.experiments.rundir import (
    claim,
    load_checkpoint,
    restoring,
    save_checkpoint,
    save_figure,
    write_json,
)
from warpgrad.experiments.schemas import MazeConfig  # re-exported; torch-free
from warpgrad.experiments.training import write_metrics
from warpgrad.rl import (
    A2C,
    EpisodeTrainer,
    MazeEnv,
    make_policy,
    play_episode,
    random_policy_rewards,
)


def build_trainer(config: MazeConfig) -> EpisodeTrainer:
    """The agent of ``config.method`` (initialised from the run's seed) and its updates."""
    torch.manual_seed(config.seed)
    policy = make_policy(config.method, config.hidden_size, warp_hidden=config.warp_hidden)
    a2c = A2C(config.discount, config.entropy_coef, config.value_coef)
    return EpisodeTrainer(policy, a2c, lr=config.lr, warp_lr=config.warp_lr,
                          warp_every=config.warp_every, clip=config.clip)


def random_reward(config: MazeConfig) -> dict[str, float]:
    """Mean (and 95% CI over episodes) total reward per episode of the random policy."""
    env = config.make_env()
    env.reset(seed=config.seed + 10_000)
    per_episode = random_policy_rewards(env, config.random_episodes).mean(axis=1)
    return mean_ci(per_episode.tolist())


def train(config: MazeConfig, run_dir: Path, *, progress: bool = True
          ) -> tuple[EpisodeTrainer, list[dict[str, float]], float]:
    """Train the agent for ``config.episodes`` episodes, resuming from
    ``run_dir/checkpoint.pt`` if present. Returns the trainer, one record per episode and
    the training wall time in seconds (summed over resumes)."""
    trainer = build_trainer(config)
    env = config.make_env()
    env.reset(seed=config.seed)
    actions = torch.Generator().manual_seed(config.seed + 1)
    checkpoint = run_dir / "checkpoint.pt"
    history: list[dict[str, float]] = []
    elapsed = 0.0
    if checkpoint.exists():
        history, elapsed = _restore(checkpoint, trainer, env, actions)
        write_metrics(run_dir / "metrics.csv", history, first="episode")  # durable with it
    start = len(history)
    bar = tqdm(range(start, config.episodes), desc=f"maze {config.method}", initial=start,
               total=config.episodes, disable=not progress, leave=False, file=sys.stderr)
    clock = time.perf_counter()
    for episode in bar:
        stats = trainer.update(play_episode(env, trainer.policy, actions))
        if not all(math.isfinite(v) for v in stats.values()):
            raise FloatingPointError(f"{config.method} diverged at episode {episode + 1} "
                                     f"(non-finite loss: {stats}); lower lr")
        history.append({"episode": episode + 1, **stats})
        bar.set_postfix(reward=f"{stats['reward']:.1f}")
        done = episode + 1
        if done % config.checkpoint_every == 0 or done == config.episodes:
            now = time.perf_counter()
            elapsed, clock = elapsed + now - clock, now
            save_checkpoint(checkpoint, {"trainer": trainer.state_dict(),
                                         "env_rng": env.np_random.bit_generator.state,
                                         "action_generator": actions.get_state(),
                                         "history": history, "elapsed": elapsed})
            write_metrics(run_dir / "metrics.csv", history, first="episode")
    return trainer, history, elapsed


def _restore(checkpoint: Path, trainer: EpisodeTrainer, env: MazeEnv,
             actions: torch.Generator) -> tuple[list[dict[str, float]], float]:
    """Restore the trainer and both generators; returns the history and elapsed seconds."""
    state = load_checkpoint(checkpoint)
    with restoring(checkpoint):
        trainer.load_state_dict(state["trainer"])
        env.np_random.bit_generator.state = state["env_rng"]
        actions.set_state(state["action_generator"])
        return state["history"], state["elapsed"]


def run(config: MazeConfig, run_dir: Path, *, progress: bool = True,
        record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``config.method``, score the random policy, write the run directory (see the
    module docstring) and return the summary."""
    run_dir = Path(run_dir)
    if (run_dir / "checkpoint.pt").exists():  # a bad checkpoint fails before any write
        _restore(run_dir / "checkpoint.pt", build_trainer(config), config.make_env(),
                 torch.Generator())
    directory = claim(run_dir, asdict(config) if record is None else record,
                      seed=config.seed)  # locked while this runs
    _, history, seconds = train(config, run_dir, progress=progress)
    rewards = [row["reward"] for row in history]
    window = min(config.final_window, len(rewards))
    baseline = random_reward(config)
    plot_rewards(run_dir / "rewards.png", {config.method: rewards}, baseline["mean"],
                 title=f"maze {config.maze_size}x{config.maze_size}, "
                       f"{config.episode_length}-step episodes, {config.num_envs} mazes")
    summary = {
        "experiment": "maze", "method": config.method,
        "metric": "total reward per episode, mean over mazes",
        "results": {
            config.method: {"first_reward": mean_ci(rewards[:window]),
                            "final_reward": mean_ci(rewards[-window:]),
                            "episodes": len(rewards), "train_seconds": seconds},
            "random": {"final_reward": baseline},
        },
        "final_window": window,
    }
    write_json(run_dir / "summary.json", summary)
    directory.release()
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """One row per agent (and the random policy): reward per episode over the first and the
    last ``final_window`` episodes, mean ± 95% CI."""
    window = summary["final_window"]
    rows = [f"{'agent':<8} {f'first {window} episodes':<20} {f'last {window} episodes':<20} "
            "train time"]
    for name, r in summary["results"].items():
        first = r.get("first_reward")
        first_text = "" if first is None else f"{first['mean']:>7.2f} ± {first['ci95']:<8.2f}"
        final = r["final_reward"]
        seconds = f"{r['train_seconds']:>8.1f} s" if "train_seconds" in r else ""
        rows.append(f"{name:<8} {first_text:<20} {final['mean']:>7.2f} ± {final['ci95']:<8.2f}"
                    f"   {seconds}")
    return "\n".join(rows)


def plot_rewards(path: Path, curves: dict[str, list[float]], random_level: float, *,
                 title: str = "", smoothing: int = 25) -> None:
    """Reward per episode of each agent (light: raw, solid: moving mean over ``smoothing``
    episodes) and the random policy's level."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (name, rewards) in enumerate(curves.items()):
        values = np.asarray(rewards, dtype=float)
        episodes = np.arange(1, len(values) + 1)
        ax.plot(episodes, values, color=f"C{i}", alpha=0.25, lw=0.8)
        if len(values) >= smoothing:
            smooth = np.convolve(values, np.ones(smoothing) / smoothing, mode="valid")
            ax.plot(episodes[smoothing - 1:], smooth, color=f"C{i}", lw=2, label=name)
        else:
            ax.lines[-1].set_label(name)
    ax.axhline(random_level, color="black", ls="--", lw=1, label="random policy")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward per episode")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
