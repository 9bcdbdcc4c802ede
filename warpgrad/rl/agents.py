"""The maze agents: recurrent policies, trained on one or two time-scales.

Every agent is an LSTM policy (hidden 100 in the paper) whose head outputs A action logits
and one value. The LSTM state is reset at the start of every episode, so what the agent
learns about this episode's reward cell lives in its recurrent state (learning to
reinforcement-learn).

- ``"l2rl"`` (the baseline, learning-to-RL): the plain LSTM
  (:func:`~warpgrad.models.warped_lstm` without a warp); every parameter is updated by Adam
  after every episode.
- ``"warp"`` (the paper's warped agent): the adaptive LSTM
  (:func:`~warpgrad.models.adaptive_lstm`), in which a small projection of the step's input
  and previous hidden state (width ``warp_hidden``) drives adaptation layers that rescale
  the gates' input and recurrent pre-activations unit by unit. The projection and
  adaptation layers are the warp parameters φ; the LSTM's weights and the head are the task
  parameters θ.
- ``"warp-recurrence"`` (a variant): the LSTM's recurrence runs through a linear warp layer
  (``gates = W_x x + W_h ω(h) + b``, :func:`~warpgrad.models.warped_lstm`), ω being φ.

Both warped agents start as the plain LSTM of their θ (the adaptation starts at zero, the
warp layer at the identity) and learn on two time-scales, as in the paper: θ takes an Adam
step after every episode; φ accumulates its gradient over ``warp_every`` episodes (30 in
the original) and then takes one Adam step on the mean.

Gradients are clipped to norm ``clip`` (4) before every step, θ's and φ's separately.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from warpgrad.models import WarpedModel, adaptive_lstm, warped_lstm
from warpgrad.rl.a2c import A2C, Rollout
from warpgrad.rl.maze import NUM_ACTIONS, OBSERVATION_SIZE, MazeEnv

AgentKind = Literal["warp", "warp-recurrence", "l2rl"]
AGENTS: tuple[str, ...] = ("warp", "warp-recurrence", "l2rl")
State = tuple[Tensor, Tensor]


def make_policy(kind: AgentKind, hidden_size: int = 100, *, warp_hidden: int = 32,
                input_size: int = OBSERVATION_SIZE, num_actions: int = NUM_ACTIONS
                ) -> WarpedModel:
    """The recurrent policy of ``kind``: ``[T, B, input_size]`` observations to
    ``[T, B, num_actions + 1]`` (logits, then the value). ``warp_hidden`` is the width of
    the ``"warp"`` agent's projection (unused by the others). ``"warp"`` draws its θ before
    its φ and in ``"l2rl"``'s order, so under one seed the two start as the same function;
    ``"warp-recurrence"`` starts as the plain LSTM of its own θ."""
    if kind not in AGENTS:
        raise ValueError(f"unknown agent {kind!r}; expected one of {list(AGENTS)}")
    if hidden_size < 1:
        raise ValueError(f"hidden_size must be at least 1, got {hidden_size}")
    if warp_hidden < 1:
        raise ValueError(f"warp_hidden must be at least 1, got {warp_hidden}")
    if kind == "warp":
        return adaptive_lstm(input_size, num_actions + 1, hidden_size=hidden_size,
                             adapt_size=warp_hidden)
    return warped_lstm(input_size, num_actions + 1, hidden_size=hidden_size,
                       warp="linear" if kind == "warp-recurrence" else None)


def act(policy: WarpedModel, observation: Tensor, state: State | None
        ) -> tuple[Tensor, Tensor, State]:
    """One step: ``observation`` ``[B, input]`` → logits ``[B, A]``, value ``[B]``, new state
    (each ``[B, hidden]``). ``state=None`` is the start of an episode (zeros)."""
    output, state = policy.module(observation.unsqueeze(0), state)
    return output[0, :, :-1], output[0, :, -1], state


def play_episode(env: MazeEnv, policy: WarpedModel, generator: torch.Generator | None = None,
                 *, greedy: bool = False) -> Rollout:
    """Reset ``env`` and run ``policy`` for one episode (``env.episode_length`` steps),
    sampling actions (or taking the most likely with ``greedy``); keeps the graph for A2C."""
    observation, _ = env.reset()
    state = None
    logits, values, actions, rewards = [], [], [], []
    for _ in range(env.episode_length):
        step_logits, value, state = act(policy, torch.from_numpy(observation), state)
        with torch.no_grad():
            if greedy:
                action = step_logits.argmax(-1)
            else:
                action = torch.multinomial(torch.softmax(step_logits, -1), 1,
                                           generator=generator).squeeze(-1)
        observation, reward, _, _, _ = env.step(action.numpy())
        logits.append(step_logits)
        values.append(value)
        actions.append(action)
        rewards.append(torch.from_numpy(reward))
    return Rollout(torch.stack(logits), torch.stack(values), torch.stack(actions),
                   torch.stack(rewards))


def random_policy_rewards(env: MazeEnv, episodes: int) -> np.ndarray:
    """Total reward per episode ``[episodes, B]`` of uniformly random moves (the floor any
    learning agent must clear)."""
    totals = np.zeros((episodes, env.num_envs))
    for episode in range(episodes):
        env.reset()
        for _ in range(env.episode_length):
            actions = env.np_random.integers(NUM_ACTIONS, size=env.num_envs)
            totals[episode] += env.step(actions)[1]
    return totals


class EpisodeTrainer:
    """A2C updates after every episode, on two time-scales when the policy has warps.

    Args:
        policy: the agent (:func:`make_policy`).
        a2c: the loss (:class:`~warpgrad.rl.a2c.A2C`).
        lr: Adam learning rate of the task parameters θ (1e-3).
        warp_lr: Adam learning rate of the warp parameters φ (1e-3).
        warp_every: episodes over which φ's gradients accumulate before one step (30).
        clip: gradient-norm clip of each step (4).
    """

    def __init__(self, policy: WarpedModel, a2c: A2C, *, lr: float = 1e-3,
                 warp_lr: float = 1e-3, warp_every: int = 30, clip: float = 4.0) -> None:
        if warp_every < 1:
            raise ValueError(f"warp_every must be at least 1, got {warp_every}")
        if lr <= 0 or warp_lr <= 0 or clip <= 0:
            raise ValueError(f"lr, warp_lr and clip must be positive, got {lr}, {warp_lr}, "
                             f"{clip}")
        self.policy, self.a2c = policy, a2c
        self.warp_every, self.clip = warp_every, clip
        self.task_params: list[nn.Parameter] = list(policy.task_parameters().values())
        self.warp_params: list[nn.Parameter] = list(policy.warp_parameters().values())
        self.task_optimizer = torch.optim.Adam(self.task_params, lr=lr)
        self.warp_optimizer = (torch.optim.Adam(self.warp_params, lr=warp_lr)
                               if self.warp_params else None)
        self.episodes = 0

    def update(self, rollout: Rollout) -> dict[str, float]:
        """One episode's update: θ steps now; φ's gradient is added to its running sum and
        φ steps on the mean every ``warp_every`` episodes. Returns the loss parts and
        ``reward``, the mean total reward per environment of the episode."""
        loss, stats = self.a2c.loss(rollout)
        for p in self.task_params:
            p.grad = None
        loss.backward()  # φ's .grad keeps accumulating across episodes until its step
        nn.utils.clip_grad_norm_(self.task_params, self.clip)
        self.task_optimizer.step()
        self.episodes += 1
        if self.warp_optimizer is not None and self.episodes % self.warp_every == 0:
            for p in self.warp_params:
                if p.grad is not None:
                    p.grad /= self.warp_every
            nn.utils.clip_grad_norm_(self.warp_params, self.clip)
            self.warp_optimizer.step()
            self.warp_optimizer.zero_grad(set_to_none=True)
        stats["loss"] = loss.item()
        stats["reward"] = rollout.rewards.sum(0).mean().item()
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Policy, both optimisers, the episode count and φ's accumulated gradient."""
        return {
            "policy": self.policy.state_dict(),
            "task_optimizer": self.task_optimizer.state_dict(),
            "warp_optimizer": None if self.warp_optimizer is None else
            self.warp_optimizer.state_dict(),
            "warp_grads": [None if p.grad is None else p.grad.clone()
                           for p in self.warp_params],
            "episodes": self.episodes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.task_optimizer.load_state_dict(state["task_optimizer"])
        if self.warp_optimizer is not None:
            self.warp_optimizer.load_state_dict(state["warp_optimizer"])
        for p, g in zip(self.warp_params, state["warp_grads"]):
            p.grad = None if g is None else g.clone()
        self.episodes = state["episodes"]
