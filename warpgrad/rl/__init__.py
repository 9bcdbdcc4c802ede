"""Reinforcement learning for the paper's maze experiment: the environment, advantage
actor-critic, and the warped and learning-to-RL agents."""

from warpgrad.rl.a2c import A2C, Rollout, discounted_returns
from warpgrad.rl.agents import (
    AGENTS,
    EpisodeTrainer,
    act,
    make_policy,
    play_episode,
    random_policy_rewards,
)
from warpgrad.rl.maze import MOVES, NUM_ACTIONS, OBSERVATION_SIZE, MazeEnv, lattice_maze

__all__ = [
    "A2C",
    "AGENTS",
    "MOVES",
    "NUM_ACTIONS",
    "OBSERVATION_SIZE",
    "EpisodeTrainer",
    "MazeEnv",
    "Rollout",
    "act",
    "discounted_returns",
    "lattice_maze",
    "make_policy",
    "play_episode",
    "random_policy_rewards",
]
