"""Advantage actor-critic over whole episodes, as in Miconi et al.'s maze code (with its
value bug fixed).

For an episode of T steps in B parallel environments, with discounted returns
R_t = r_t + γ R_{t+1} (R_T = 0: episodes end by time limit and the original does not
bootstrap), the loss is the mean over time and environments of

    − log π(a_t | ·) · (R_t − V_t)          (policy; the advantage is a constant)
    + value_coef · (R_t − V_t)²              (critic)
    + entropy_coef · Σ_a π(a | ·)²           (Miconi's "entropy-like" penalty: smallest for
                                              a uniform policy, so it keeps exploration up)

Each environment's advantage uses its own value V_t[b]; the original used environment 0's
value for all 30 environments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Rollout:
    """One episode of B environments, time first.

    ``logits`` ``[T, B, A]`` and ``values`` ``[T, B]`` carry the graph of the agent;
    ``actions`` ``[T, B]`` int64; ``rewards`` ``[T, B]`` float (reward units of the env).
    """

    logits: Tensor
    values: Tensor
    actions: Tensor
    rewards: Tensor

    def __post_init__(self) -> None:
        t, b = self.actions.shape
        if (self.logits.shape[:2] != (t, b) or self.values.shape != (t, b)
                or self.rewards.shape != (t, b)):
            raise ValueError(
                f"a rollout needs logits [T, B, A], values, actions and rewards [T, B]; got "
                f"{list(self.logits.shape)}, {list(self.values.shape)}, "
                f"{list(self.actions.shape)}, {list(self.rewards.shape)}")


def discounted_returns(rewards: Tensor, discount: float) -> Tensor:
    """R_t = r_t + γ R_{t+1} with R_T = 0, for ``rewards`` ``[T, B]``; same shape."""
    returns = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + discount * running
        returns[t] = running
    return returns


class A2C:
    """The loss of one episode. Defaults are the paper's: γ 0.9, entropy 0.03, value 0.1."""

    def __init__(self, discount: float = 0.9, entropy_coef: float = 0.03,
                 value_coef: float = 0.1) -> None:
        if not 0 <= discount <= 1:
            raise ValueError(f"discount must be in [0, 1], got {discount}")
        if entropy_coef < 0 or value_coef < 0:
            raise ValueError(f"entropy_coef and value_coef must be non-negative, got "
                             f"{entropy_coef}, {value_coef}")
        self.discount = discount
        self.entropy_coef = entropy_coef
        self.value_coef = value_coef

    def loss(self, rollout: Rollout) -> tuple[Tensor, dict[str, float]]:
        """The scalar loss and its parts (``policy_loss``, ``value_loss``,
        ``probability_mass``: mean Σ_a π², 1/A for a uniform policy)."""
        returns = discounted_returns(rollout.rewards, self.discount)
        advantage = returns - rollout.values  # [T, B]: each environment its own baseline
        log_probs = torch.log_softmax(rollout.logits, dim=-1)
        chosen = log_probs.gather(-1, rollout.actions.unsqueeze(-1)).squeeze(-1)
        policy_loss = -(chosen * advantage.detach()).mean()
        value_loss = advantage.pow(2).mean()
        mass = log_probs.exp().pow(2).sum(-1).mean()
        loss = policy_loss + self.value_coef * value_loss + self.entropy_coef * mass
        return loss, {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                      "probability_mass": mass.item()}
