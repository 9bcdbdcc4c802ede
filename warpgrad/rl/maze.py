"""Miconi et al.'s maze (Backpropamine, ICLR 2019), as the WarpGrad paper's RL experiment uses
it: a batch of grid mazes stepped together in numpy, with the Gymnasium vector-env API.

The maze is a square grid (size 13 in the paper) with walls on the border and on every
interior cell whose row and column are both even (a lattice of pillars), the centre cell
kept free. Each episode a reward cell is drawn uniformly among the free cells, hidden, and
fixed until the episode ends. The agent takes one of four moves per step (0 up, 1 down,
2 left, 3 right); a move into a wall leaves it in place (and costs ``wall_penalty``).
Stepping onto the reward cell gives ``reward_value`` (+10) and teleports the agent to a
uniformly drawn free cell other than the reward cell, so a good agent remembers where the
reward was and returns there. Episodes last ``episode_length`` (200) steps; there is no
terminal state, every episode is truncated at the same step for all mazes.

Observation ``[num_envs, 17]`` float32, per maze:

- ``[0:9]``: the 3x3 neighbourhood around the agent, row-major, 1 = wall;
- ``[9:13]``: the previous action, one-hot (all zero at the start of an episode);
- ``[13]``: the previous step's reward;
- ``[14]``: the time, ``t / episode_length`` in [0, 1);
- ``[15]``: a constant bias of 1;
- ``[16]``: 1 if the previous move was blocked by a wall (the original keeps this input
  slot unused at 0; here it carries the bump, which the walls and the previous action
  already imply).

The step is array code over all mazes at once (a gather from a precomputed ``[size, size,
9]`` table of neighbourhoods; no Python loop over mazes or cells). Auto-reset follows
Gymnasium's default next-step convention: the ``step`` after the one that truncates resets
every maze (new reward cells) and returns the first observation with zero reward.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])
"""Row and column change of each action: up, down, left, right."""
NUM_ACTIONS = len(MOVES)
OBSERVATION_SIZE = 17


def lattice_maze(size: int = 13) -> np.ndarray:
    """Miconi's maze layout ``[size, size]`` bool (True = wall): walls on the border and on
    interior cells with both coordinates even, the centre free. ``size`` odd, at least 5."""
    if size < 5 or size % 2 == 0:
        raise ValueError(f"maze size must be an odd number of cells, at least 5; got {size}")
    walls = np.zeros((size, size), dtype=bool)
    walls[[0, -1], :] = True
    walls[:, [0, -1]] = True
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    walls |= (rows % 2 == 0) & (cols % 2 == 0)
    walls[size // 2, size // 2] = False
    return walls


class MazeEnv(VectorEnv):
    """``num_envs`` mazes of one layout, each with its own hidden reward cell.

    Args:
        num_envs: B, mazes stepped together (30 in the paper).
        size: side of the lattice maze (ignored when ``layout`` is given).
        episode_length: steps per episode (200 in the paper).
        reward_value: reward for reaching the reward cell (+10).
        wall_penalty: cost of a move into a wall (0 in the paper's runs).
        layout: a hand-made maze ``[H, W]`` bool (True = wall) whose border is all walls and
            which has at least two free cells; default :func:`lattice_maze`.

    ``reset(seed=...)`` seeds the environment's generator; ``step(actions [B] int)`` returns
    ``(observation [B, 17] float32, reward [B] float32, terminated [B] bool (always False),
    truncated [B] bool, info)``; ``info`` holds ``"found"`` ``[B]`` bool (the reward cell
    was reached this step) and ``"bumped"`` ``[B]`` bool.
    """

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 30, size: int = 13, *, episode_length: int = 200,
                 reward_value: float = 10.0, wall_penalty: float = 0.0,
                 layout: np.ndarray | None = None) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be at least 1, got {episode_length}")
        walls = lattice_maze(size) if layout is None else np.asarray(layout, dtype=bool)
        if walls.ndim != 2 or min(walls.shape) < 3:
            raise ValueError(f"layout must be a 2-d grid of at least 3x3, got {walls.shape}")
        if not (walls[[0, -1], :].all() and walls[:, [0, -1]].all()):
            raise ValueError("layout must have walls all around its border")
        self.walls = walls
        self.free_cells = np.argwhere(~walls)  # [F, 2]
        if len(self.free_cells) < 2:
            raise ValueError("layout needs at least two free cells (agent and reward)")
        self.num_envs = num_envs
        self.episode_length = episode_length
        self.reward_value = float(reward_value)
        self.wall_penalty = float(wall_penalty)
        # the 3x3 neighbourhood of every cell, so an observation is one gather: [H, W, 9]
        padded = np.pad(walls, 1, constant_values=True)
        h, w = walls.shape
        self._neighbourhoods = np.stack(
            [padded[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
             for dr in (-1, 0, 1) for dc in (-1, 0, 1)], axis=-1).astype(np.float32)
        # index of each free cell in free_cells, for drawing "any free cell but this one"
        self._free_index = np.full(walls.shape, -1)
        self._free_index[tuple(self.free_cells.T)] = np.arange(len(self.free_cells))
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (OBSERVATION_SIZE,),
                                                       np.float32)
        self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.position = np.zeros((num_envs, 2), dtype=np.int64)
        self.reward_cell = np.zeros((num_envs, 2), dtype=np.int64)
        self.time = 0
        self._previous_action = np.full(num_envs, -1)
        self._previous_reward = np.zeros(num_envs, dtype=np.float32)
        self._bumped = np.zeros(num_envs, dtype=bool)
        self._needs_reset = True

    # -- the API -----------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode in every maze: new reward cells, agents on random free cells
        other than the reward cell. ``options`` may set ``"reward_cell"`` and ``"position"``
        (``[B, 2]`` row, column) for hand-made situations."""
        super().reset(seed=seed)
        options = options or {}
        rng = self.np_random
        if "reward_cell" in options:
            self.reward_cell = self._free_cells_or_raise(options["reward_cell"], "reward_cell")
        else:
            self.reward_cell = self.free_cells[rng.integers(len(self.free_cells),
                                                            size=self.num_envs)]
        if "position" in options:
            self.position = self._free_cells_or_raise(options["position"], "position")
        else:
            self.position = self._other_free_cells(self.reward_cell)
        self.time = 0
        self._previous_action[:] = -1
        self._previous_reward[:] = 0.0
        self._bumped[:] = False
        self._needs_reset = False
        return self._observation(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  np.ndarray, dict[str, Any]]:
        """Move every agent by ``actions`` ``[B]`` (0 up, 1 down, 2 left, 3 right)."""
        if self._needs_reset:  # next-step auto-reset after the truncating step
            observation, _ = self.reset()
            zeros = np.zeros(self.num_envs, dtype=bool)
            info = {"found": zeros.copy(), "bumped": zeros.copy()}
            return (observation, np.zeros(self.num_envs, dtype=np.float32), zeros,
                    zeros.copy(), info)
        actions = np.asarray(actions).reshape(-1)
        if actions.shape != (self.num_envs,) or not np.isin(actions, range(NUM_ACTIONS)).all():
            raise ValueError(f"actions must be {self.num_envs} integers in 0..{NUM_ACTIONS - 1},"
                             f" got {actions!r}")
        target = self.position + MOVES[actions]
        bumped = self.walls[target[:, 0], target[:, 1]]
        self.position = np.where(bumped[:, None], self.position, target)
        reward = np.where(bumped, -self.wall_penalty, 0.0).astype(np.float32)
        found = (self.position == self.reward_cell).all(axis=1)
        reward[found] += self.reward_value
        if found.any():
            self.position[found] = self._other_free_cells(self.reward_cell[found])
        self.time += 1
        self._previous_action = actions.astype(np.int64)
        self._previous_reward = reward
        self._bumped = bumped
        truncated = np.full(self.num_envs, self.time >= self.episode_length)
        self._needs_reset = bool(truncated[0])
        return (self._observation(), reward.copy(), np.zeros(self.num_envs, dtype=bool),
                truncated, {"found": found, "bumped": bumped})

    # -- helpers -----------------------------------------------------------------------------

    def _observation(self) -> np.ndarray:
        obs = np.zeros((self.num_envs, OBSERVATION_SIZE), dtype=np.float32)
        obs[:, 0:9] = self._neighbourhoods[self.position[:, 0], self.position[:, 1]]
        moved = self._previous_action >= 0
        obs[np.flatnonzero(moved), 9 + self._previous_action[moved]] = 1.0
        obs[:, 13] = self._previous_reward
        obs[:, 14] = self.time / self.episode_length
        obs[:, 15] = 1.0
        obs[:, 16] = self._bumped
        return obs

    def _other_free_cells(self, excluded: np.ndarray) -> np.ndarray:
        """One uniformly drawn free cell per row of ``excluded`` ``[n, 2]``, never that cell:
        draw among F − 1 indices and skip over the excluded one."""
        n = len(excluded)
        index = self.np_random.integers(len(self.free_cells) - 1, size=n)
        skip = self._free_index[excluded[:, 0], excluded[:, 1]]
        index = index + (index >= skip)
        return self.free_cells[index]

    def _free_cells_or_raise(self, cells: Any, name: str) -> np.ndarray:
        cells = np.asarray(cells, dtype=np.int64).reshape(self.num_envs, 2)
        inside = ((cells >= 0) & (cells < self.walls.shape)).all(axis=1)
        if not inside.all() or self.walls[cells[:, 0], cells[:, 1]].any():
            raise ValueError(f"{name} must be free cells of the maze, got {cells.tolist()}")
        return cells
