"""The config dataclasses of the shipped experiment kinds and the names they accept.

Torch-free, so that resolving, validating and printing a config (``warpgrad train ...
--show-config``, a bad key or value) needs no torch: the experiment modules that run them
(:mod:`~warpgrad.experiments.classification`, :mod:`~warpgrad.experiments.sine`,
:mod:`~warpgrad.experiments.continual`, :mod:`~warpgrad.experiments.maze`,
:mod:`~warpgrad.experiments.geometry`) re-export them. The names duplicated from the torch
side (precisions, agents, surfaces) are pinned equal to theirs by
tests/test_lazy_imports.py.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warpgrad.experiments.validation import check_config, check_methods

if TYPE_CHECKING:
    from warpgrad.rl import MazeEnv

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
"""The accelerator's precisions (``warpgrad.accel.PRECISIONS``)."""
AGENTS: tuple[str, ...] = ("warp", "warp-recurrence", "l2rl")
"""The maze agents (``warpgrad.rl.AGENTS``)."""
DATASETS = ("glyphs", "omniglot", "mini-imagenet", "tiered-imagenet", "folder")
PROTOCOLS = ("multishot", "fewshot")
CONTINUAL_METHODS = ("warp-leap", "warpgrad", "warp-reptile", "leap", "reptile", "no-meta")
"""Methods the continual experiment runs: sequential adaptation has no use for MAML's
backpropagation through every step of a long sequence or for multi-headed fine-tuning."""
SURFACES: tuple[str, ...] = ("peaks", "appendix")
"""The geometry problem's surface variants (``warpgrad.tasks.peaks.SURFACES``)."""


@dataclass
class ClassificationConfig:
    """Every setting of a classification run (recorded in ``config.json``).

    Defaults are the paper's multi-shot Omniglot protocol on glyphs; the shipped experiment
    configs (``warpgrad/experiments/configs/*.yaml``) override what differs.
    """

    dataset: str = "glyphs"
    """glyphs (embedded), omniglot, mini-imagenet, tiered-imagenet (read from data_root),
    folder (your images under data_root) or "package.module:function" (your loader)"""
    protocol: str = "multishot"
    """multishot: each group (alphabet) is one fixed n_way task; fewshot: N-way K-shot
    episodes of random classes"""
    methods: list[str] = field(default_factory=lambda: ["warp-leap", "leap"])
    """methods to meta-train and compare, each from the same seed (warp-leap, warp-maml,
    warpgrad, leap, maml, reptile, no-meta, ...; or --method)"""
    # tasks
    n_way: int = 20
    """classes per task (the classifier's outputs)"""
    k_shot: int = 1
    """fewshot: support images per class, the adaptation's data"""
    k_query: int = 15
    """fewshot: query images per class, for the meta-objective and the test accuracy"""
    train_shots: int = 15
    """multishot: images per class the adaptation trains on"""
    test_shots: int = 5
    """multishot: held-out images per class, scored after adaptation"""
    batch_size: int = 128
    """multishot: images per adaptation step, drawn with replacement from the task's
    training images"""
    n_train_tasks: int = 30
    """multishot: groups (alphabets) meta-trained on; the groups left after the test ones
    validate"""
    n_test_tasks: int = 10
    """multishot: held-out groups adapted to and scored in the final evaluation"""
    augment: bool = True
    """multishot: random rotation, shift and scale of every adaptation batch (images only)"""
    image_size: int = 28
    """side in pixels the images are resized (glyphs: rendered) to"""
    # learner: conv4 unless `model` names a builder, "package.module:function", called as
    # function(n_classes, input_shape, warps, **model_options) -> (nn.Module, [warp names])
    model: str = ""
    """your model's builder "package.module:function" ("" for the built-in conv4)"""
    model_options: dict[str, Any] = field(default_factory=dict)
    """keyword arguments passed to the model builder"""
    identity_warps: bool = True
    """model only: start its warps' Linear/Conv2d layers at the identity map (plain SGD)"""
    filters: int = 64
    """conv4: channels of each of its four conv layers"""
    warp: str = "conv3x3"
    """conv4: the warp layer after each block: scale (per channel), linear (1x1 conv) or
    conv3x3"""
    warp_depth: int = 1
    """conv4: warp layers in sequence after each block"""
    warp_batch_norm: bool = False
    """conv4: batch norm (per-batch statistics) after each warp layer's map"""
    warp_activation: str = "none"
    """conv4: activation of each warp layer: none, relu, leaky_relu or tanh"""
    warp_residual: bool = False
    """conv4: warp layers add their input back, y = x + f(x)"""
    batch_norm: str = "batch"
    """conv4's batch norm: batch (each batch's own statistics) or running (per-task running
    statistics at evaluation)"""
    # adaptation
    steps: int = 100
    """SGD steps of each task's adaptation during meta-training (K)"""
    eval_steps: int = 100
    """SGD steps of each validation and test task's adaptation"""
    inner_lr: float = 0.1
    """SGD step size of the adaptation (task) parameters θ"""
    momentum: float = 0.0
    """momentum of the adaptation's SGD (0: none)"""
    # meta-training
    iterations: int = 1000
    """meta-iterations (one meta-batch and one meta-update each)"""
    meta_batch: int = 20
    """tasks adapted per meta-iteration"""
    meta_optimizer: str = "sgd"
    """optimiser of the meta-updates of φ and θ_0: sgd or adam"""
    warp_lr: float = 0.1
    """meta learning rate of the warp parameters φ"""
    init_lr: float = 0.1
    """meta learning rate of the initialisation θ_0 (Leap, MAML, Reptile...)"""
    warp_variant: str = "exact"
    """WarpGrad's meta-loss: exact (through the inner gradient), first-order or no-step"""
    warp_regime: str = "offline"
    """online: φ's gradient gathered while tasks adapt; offline: φ updated afterwards over a
    replay buffer of trajectory points"""
    points_per_update: int = 1
    """offline: trajectory points per φ update (mini-batch of the replay buffer)"""
    warp_epochs: int = 1
    """offline: passes over the replay buffer per meta-batch"""
    point_stride: int = 1
    """keep every k-th adaptation step (and the last) as a WarpGrad trajectory point"""
    point_fraction: float = 1.0
    """fraction of each task's trajectory points WarpGrad uses, drawn at random (in (0, 1])"""
    batched: bool = False
    """WarpGrad: evaluate a mini-batch of points in one torch.func.vmap call (same result)"""
    buffer_dtype: str = "float32"
    """offline: how the replay buffer stores points: float32, or float16/bfloat16 (half the
    memory, rounded)"""
    buffer_on_disk: bool = False
    """offline: keep the replay buffer in a temporary file (lossless, less memory)"""
    # speed (docs/performance.md): the accelerator gives the same numbers; bf16 does not
    accelerate: bool = True
    """use the accelerator's faster layers (the same numbers)"""
    precision: str = "fp32"
    """accelerator: fp32, or bf16 (forward passes under bfloat16 autocast; changes numbers)"""
    cuda_graphs: bool = False
    """accelerator, GPU only: replay fixed-shape passes from CUDA graphs"""
    # evaluation and bookkeeping
    val_every: int = 0
    """evaluate on the validation tasks every N meta-iterations, keeping best.pt (0: never)"""
    val_tasks: int = 100
    """fewshot: validation episodes (multishot: every validation group)"""
    eval_tasks: int = 600
    """fewshot: test episodes of the final evaluation (multishot: n_test_tasks groups)"""
    checkpoint_every: int = 10
    """meta-iterations between checkpoints (a killed run resumes from the last)"""
    seed: int = 0
    """seeds the initialisation (the same θ_0 for every method), tasks, splits and batches"""
    device: str = "cpu"
    """cpu or cuda (cuda:N)"""
    data_root: str = ""
    """folder of the real datasets (default $WARPGRAD_DATA, then ~/warpgrad-data)"""

    def __post_init__(self) -> None:
        check_methods(self.methods)
        if ":" in self.dataset:
            import_object(self.dataset, "dataset")
        else:
            _choice("dataset", self.dataset, (*DATASETS, "package.module:function"))
        if self.model:
            import_object(self.model, "model")
        _choice("protocol", self.protocol, PROTOCOLS)
        _choice("warp", self.warp, ("scale", "linear", "conv3x3"))
        _choice("warp_activation", self.warp_activation, ("none", "relu", "leaky_relu", "tanh"))
        _choice("batch_norm", self.batch_norm, ("batch", "running"))
        _choice("buffer_dtype", self.buffer_dtype, ("float32", "float16", "bfloat16"))
        _choice("precision", self.precision, PRECISIONS)
        check_accelerator(self)
        for name in ("n_way", "k_shot", "train_shots", "test_shots", "batch_size",
                     "n_train_tasks", "n_test_tasks", "image_size", "filters", "warp_depth",
                     "steps", "eval_steps", "iterations", "meta_batch", "points_per_update",
                     "warp_epochs", "point_stride", "eval_tasks", "checkpoint_every",
                     "val_tasks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.point_fraction <= 1.0:
            raise ValueError(f"point_fraction must be in (0, 1], got {self.point_fraction}")
        if self.val_every < 0:
            raise ValueError(f"val_every must be 0 (never) or at least 1, got {self.val_every}")
        check_config(self)


def import_object(path: str, key: str) -> Any:
    """The object ``"package.module:name"`` names (``key`` is the config key, for errors).

    The module is imported as Python would; failing that, from the current directory (where
    an experiment's own ``models.py`` usually sits)."""
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise ValueError(f"{key} must be \"package.module:function\", got {path!r}")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name.split(".")[0] or os.getcwd() in sys.path:
                raise
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as error:
        raise ValueError(f"{key}: cannot import {module_name!r} ({type(error).__name__}: "
                         f"{error}); install it, put it on PYTHONPATH or run from its folder"
                         ) from None
    target = getattr(module, name, None)
    if not callable(target):
        raise ValueError(f"{key}: {module_name!r} has no function {name!r}")
    return target


def check_accelerator(config: Any) -> None:
    """The accelerator's switches need the accelerator."""
    if not config.accelerate:
        for name, off in (("precision", "fp32"), ("cuda_graphs", False)):
            if getattr(config, name, off) != off:
                raise ValueError(f"{name}={getattr(config, name)} is a switch of the "
                                 "accelerator; it needs accelerate=true")


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def default_data_root() -> str:
    """``$WARPGRAD_DATA``, else ``~/warpgrad-data``."""
    return os.environ.get("WARPGRAD_DATA") or str(Path.home() / "warpgrad-data")


@dataclass
class SineConfig:
    """Every setting of a sine run (recorded in ``config.json``)."""

    methods: list[str] = field(default_factory=lambda: ["no-meta", "warp-leap", "warp-maml",
                                                        "leap"])
    """methods to meta-train and compare, each from the same seed (warp-leap, warp-maml,
    leap, maml, meta-sgd, no-meta, ...; or --method)"""
    iterations: int = 150
    """meta-iterations (one meta-batch and one meta-update each)"""
    meta_batch: int = 10
    """tasks (sine curves) adapted per meta-iteration"""
    steps: int = 5
    """full-batch SGD steps of each task's adaptation, in meta-training and evaluation"""
    inner_lr: float = 0.01
    """SGD step size of the adaptation (task) parameters θ"""
    meta_lr: float = 3e-3
    """meta learning rate of the warp parameters φ and of the initialisation θ_0"""
    rate_lr: float = 3e-4  # learned per-parameter rates (Meta-SGD) diverge at 1e-3 on some seeds
    """meta learning rate of learned inner step sizes (meta-sgd)"""
    meta_optimizer: str = "adam"
    """optimiser of the meta-updates: adam or sgd"""
    warp_variant: str = "exact"
    """WarpGrad's meta-loss: exact (through the inner gradient), first-order or no-step"""
    warp_regime: str = "offline"
    """online: φ's gradient gathered while tasks adapt; offline: φ updated afterwards over a
    replay buffer of trajectory points"""
    points_per_update: int = 6
    """offline: trajectory points per φ update (batched in one vmap call when above 1)"""
    shots: int = 10
    """points (x, y) per task the adaptation fits"""
    test_shots: int = 100
    """held-out points per task: the meta-objective's and the test MSE's"""
    hidden: list[int] = field(default_factory=lambda: [40, 40])
    """hidden layer widths of the MLP (warped methods: a linear warp after each)"""
    eval_tasks: int = 200
    """held-out tasks of the final evaluation"""
    checkpoint_every: int = 25
    """meta-iterations between checkpoints (a killed run resumes from the last)"""
    seed: int = 0
    """seeds the initialisation (the same θ_0 for every method) and the tasks"""
    device: str = "cpu"
    """cpu or cuda (cuda:N)"""
    accelerate: bool = True
    """use the accelerator's faster layers (the same numbers)"""

    def __post_init__(self) -> None:
        check_methods(self.methods)
        for name in ("iterations", "meta_batch", "steps", "eval_tasks", "checkpoint_every",
                     "points_per_update", "shots", "test_shots"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        check_config(self)


@dataclass
class ContinualConfig:
    """Every setting of a continual-sine run (recorded in ``config.json``).

    Task: ``subtasks`` sub-intervals of ``x_range``, each with ``points_per_subtask``
    adaptation points, ``meta_points_per_subtask`` points for WarpGrad's meta-loss and
    ``test_points_per_subtask`` held-out points; ``steps_per_subtask`` SGD steps at
    ``inner_lr`` on each. Meta-training: ``iterations`` meta-steps of ``meta_batch`` tasks,
    ``meta_optimizer`` (``"adam"`` or ``"sgd"``) at ``meta_lr`` for φ and θ_0; WarpGrad
    ``warp_variant`` (``"exact"``, ``"first-order"``, ``"no-step"``) in ``warp_regime``
    (``"online"``, ``"offline"``) on every ``warp_stride``-th trajectory point.
    Evaluation: ``eval_tasks`` held-out curves, ``plot_tasks`` of them plotted.
    """

    method: str = "warp-leap"
    """the method (warp-leap, warpgrad, warp-reptile, leap, reptile, no-meta); no-meta is
    always evaluated alongside"""
    iterations: int = 300
    """meta-iterations (one meta-batch and one meta-update each)"""
    meta_batch: int = 5
    """tasks (sine curves) adapted per meta-iteration"""
    subtasks: int = 5
    """consecutive sub-intervals of x_range each curve is cut into, learned left to right"""
    steps_per_subtask: int = 5
    """full-batch SGD steps on each sub-task, no revisiting"""
    points_per_subtask: int = 10
    """points per sub-task the adaptation fits"""
    meta_points_per_subtask: int = 10
    """points per sub-task for WarpGrad's meta-loss"""
    test_points_per_subtask: int = 50
    """held-out points per sub-task, for the forgetting matrix and the final MSE"""
    amplitude: tuple[float, float] = (0.1, 5.0)
    """range [low, high] of the curves' amplitude A"""
    phase: tuple[float, float] = (0.0, math.pi)
    """range [low, high] of the curves' phase b (radians)"""
    x_range: tuple[float, float] = (-5.0, 5.0)
    """input interval [low, high] cut into the sub-tasks"""
    inner_lr: float = 0.01
    """SGD step size of the adaptation (task) parameters θ"""
    meta_lr: float = 0.005
    """meta learning rate of the warp parameters φ and of the initialisation θ_0"""
    meta_optimizer: str = "adam"
    """optimiser of the meta-updates: adam or sgd"""
    warp_variant: str = "exact"
    """WarpGrad's meta-loss: exact (through the inner gradient), first-order or no-step"""
    warp_regime: str = "online"
    """online: φ's gradient gathered while tasks adapt; offline: φ updated afterwards over a
    replay buffer of trajectory points"""
    warp_stride: int = 5
    """keep every k-th adaptation step (and the last) as a WarpGrad trajectory point"""
    hidden: tuple[int, ...] = (40, 40)
    """hidden layer widths of the MLP (warped methods: a linear warp after each)"""
    eval_tasks: int = 100
    """held-out curves of the final evaluation"""
    plot_tasks: int = 4
    """held-out curves drawn in fits.png (at most eval_tasks)"""
    checkpoint_every: int = 25
    """meta-iterations between checkpoints (a killed run resumes from the last)"""
    seed: int = 0
    """seeds the initialisation (the same θ_0 for every method) and the tasks"""
    accelerate: bool = True
    """use the accelerator's faster layers (the same numbers)"""

    def __post_init__(self) -> None:
        self.amplitude = tuple(float(v) for v in self.amplitude)
        self.phase = tuple(float(v) for v in self.phase)
        self.x_range = tuple(float(v) for v in self.x_range)
        self.hidden = tuple(int(v) for v in self.hidden)
        if self.method not in CONTINUAL_METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of "
                             f"{list(CONTINUAL_METHODS)}")
        for name in ("iterations", "meta_batch", "subtasks", "steps_per_subtask",
                     "points_per_subtask", "meta_points_per_subtask",
                     "test_points_per_subtask", "warp_stride", "eval_tasks",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.plot_tasks <= self.eval_tasks:
            raise ValueError(f"plot_tasks must be between 0 and eval_tasks ({self.eval_tasks}), "
                             f"got {self.plot_tasks}")
        for name in ("inner_lr", "meta_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("amplitude", "phase", "x_range"):
            pair = getattr(self, name)
            if len(pair) != 2 or pair[0] > pair[1]:
                raise ValueError(f"{name} must be two numbers (low, high) with low <= high, "
                                 f"got {pair}")
        if self.x_range[0] == self.x_range[1]:
            raise ValueError(f"x_range must have positive width, got {self.x_range}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be one or more positive widths, got {self.hidden}")
        choices = {"meta_optimizer": ("adam", "sgd"),
                   "warp_variant": ("exact", "first-order", "no-step"),
                   "warp_regime": ("online", "offline")}
        for name, accepted in choices.items():
            if getattr(self, name) not in accepted:
                raise ValueError(f"{name} must be one of {list(accepted)}, got "
                                 f"{getattr(self, name)!r}")
        check_config(self)

    @property
    def steps(self) -> int:
        """Adaptation steps per task: every sub-task in turn."""
        return self.subtasks * self.steps_per_subtask

    def task_options(self) -> dict[str, Any]:
        return {"subtasks": self.subtasks, "points_per_subtask": self.points_per_subtask,
                "meta_points_per_subtask": self.meta_points_per_subtask,
                "test_points_per_subtask": self.test_points_per_subtask,
                "steps_per_subtask": self.steps_per_subtask, "amplitude": self.amplitude,
                "phase": self.phase, "x_range": self.x_range}


@dataclass
class MazeConfig:
    """Every setting of a maze run (recorded in ``config.json``).

    Environment: ``num_envs`` mazes of side ``maze_size`` (odd, at least 5), episodes of
    ``episode_length`` steps, ``reward_value`` for the reward cell, ``wall_penalty`` per
    bump. Agent: ``method`` (``"warp"``, ``"warp-recurrence"`` or ``"l2rl"``), LSTM
    ``hidden_size``, the warp agent's projection width ``warp_hidden``. Training:
    ``episodes`` A2C updates, Adam ``lr`` (θ) and ``warp_lr`` (φ, every ``warp_every``
    episodes), ``discount``, ``entropy_coef``, ``value_coef``, gradient ``clip``. The random
    policy is scored over ``random_episodes`` episodes; ``final_window`` episodes at the end
    give the final reward.
    """

    method: str = "warp"
    """agent: warp (paper's adaptive LSTM), warp-recurrence (warped recurrence), l2rl (LSTM)"""
    episodes: int = 1000
    """training episodes, one A2C update after each"""
    maze_size: int = 9
    """side of the square maze in cells (odd, at least 5)"""
    episode_length: int = 100
    """steps per episode"""
    num_envs: int = 30
    """mazes played together, each with its own hidden reward cell"""
    hidden_size: int = 100
    """LSTM hidden units"""
    warp_hidden: int = 32
    """warp: width of the adaptive LSTM's projection, which drives the gates' modulations"""
    lr: float = 1e-3
    """Adam learning rate of the task parameters θ (every episode)"""
    warp_lr: float = 1e-3
    """warp: Adam learning rate of the warp parameters φ"""
    warp_every: int = 30
    """warp: episodes over which φ's gradient accumulates before one step"""
    discount: float = 0.9
    """discount factor γ of the returns, in [0, 1]"""
    entropy_coef: float = 0.03
    """weight of the penalty on the policy's probability mass Σπ² (keeps it exploring)"""
    value_coef: float = 0.1
    """weight of the value (critic) loss"""
    clip: float = 4.0
    """gradient-norm clip of each update"""
    reward_value: float = 10.0
    """reward for reaching the reward cell"""
    wall_penalty: float = 0.0
    """cost of a move into a wall"""
    random_episodes: int = 20
    """episodes the uniformly random policy is scored over (the baseline)"""
    final_window: int = 100
    """episodes at the start and the end whose mean reward the summary reports"""
    checkpoint_every: int = 50
    """episodes between checkpoints (a killed run resumes from the last)"""
    seed: int = 0
    """seeds the agent's initialisation, the mazes and the actions"""

    def __post_init__(self) -> None:
        if self.method not in AGENTS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {list(AGENTS)}")
        if self.maze_size < 5 or self.maze_size % 2 == 0:
            raise ValueError(f"maze_size must be an odd number, at least 5; got "
                             f"{self.maze_size}")
        for name in ("episodes", "episode_length", "num_envs", "hidden_size", "warp_hidden",
                     "warp_every", "random_episodes", "final_window", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "warp_lr", "clip", "reward_value"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("entropy_coef", "value_coef", "wall_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not 0 <= self.discount <= 1:
            raise ValueError(f"discount must be in [0, 1], got {self.discount}")
        check_config(self)

    def make_env(self) -> MazeEnv:
        from warpgrad.rl import MazeEnv

        return MazeEnv(self.num_envs, self.maze_size, episode_length=self.episode_length,
                       reward_value=self.reward_value, wall_penalty=self.wall_penalty)


@dataclass
class GeometryConfig:
    """Every setting of a geometry run, the paper's appendix D (recorded in ``config.json``).

    Tasks: random variants of MATLAB's ``peaks`` (``surface``; weights and offsets spread by
    ``coefficient_spread`` and ``offset_spread`` around MATLAB's), starts uniform on
    ``start_range``². Adaptation: ``steps`` gradient-descent steps at ``inner_lr`` on the point
    itself. Warp: a residual tanh network with ``warp_hidden`` units, starting as the
    identity, meta-trained by WarpGrad (``warp_variant``, online: Algorithm 1) for
    ``iterations`` meta-steps, each one random surface from ``starts_per_step`` starts,
    ``meta_optimizer`` at ``warp_lr``. Evaluation: ``eval_tasks`` held-out surfaces from
    ``eval_starts`` starts each, final losses within ``tie_tolerance`` tied; ``plot_starts``
    of the first one's drawn in surfaces.png.
    """

    surface: str = "peaks"
    """third term: peaks (MATLAB's, as the paper's figures show: -b3 exp(-(x1+a3)^2 - x2^2))
    or appendix (as printed there, x1 in both slots: a function of x1 alone, a ridge)"""
    coefficient_spread: float = 0.5
    """each weight b_i is MATLAB's times U[1-s, 1+s] (the paper's range is unstated)"""
    offset_spread: float = 0.5
    """each offset a_i is MATLAB's plus U[-s, s] (the paper's range is unstated)"""
    start_range: tuple[float, float] = (-3.0, 3.0)
    """starting points are uniform on the square [low, high]^2"""
    steps: int = 100
    """gradient-descent steps per task, during meta-training and evaluation"""
    inner_lr: float = 0.1
    """SGD step size of the adaptation (task) parameters θ: the point (x1, x2)"""
    warp_hidden: int = 30
    """tanh hidden units of the warp's two-layer network"""
    iterations: int = 40
    """meta-steps, each one surface and starts_per_step starts (the paper: 100; 40 keeps the
    default run short on a CPU)"""
    starts_per_step: int = 10
    """starting points (initialisations) of a meta-step: its meta-batch of tasks"""
    warp_variant: str = "exact"
    """WarpGrad's meta-loss: exact (through the inner gradient) or first-order"""
    warp_lr: float = 0.01
    """meta learning rate of the warp parameters φ"""
    meta_optimizer: str = "adam"
    """optimiser of the warp's meta-updates: adam or sgd"""
    eval_tasks: int = 20
    """held-out surfaces of the evaluation"""
    eval_starts: int = 10
    """starting points per held-out surface (eval_tasks x eval_starts pairs in all)"""
    tie_tolerance: float = 1e-3
    """final losses closer than this count as a tie (both descents in the same minimum),
    neither lower"""
    plot_starts: int = 5
    """starts of the first held-out surface drawn in surfaces.png (at most eval_starts)"""
    checkpoint_every: int = 25
    """meta-steps between checkpoints (a killed run resumes from the last)"""
    seed: int = 0
    """seeds the warp's initialisation, the training surfaces and the held-out ones"""

    def __post_init__(self) -> None:
        self.start_range = tuple(float(v) for v in self.start_range)
        _choice("surface", self.surface, SURFACES)
        if self.warp_variant == "no-step":
            raise ValueError("warp_variant must be 'exact' or 'first-order' (the paper's "
                             "objectives), got 'no-step'")
        for name in ("steps", "warp_hidden", "iterations", "starts_per_step", "eval_tasks",
                     "eval_starts", "plot_starts", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.plot_starts > self.eval_starts:
            raise ValueError(f"plot_starts must be at most eval_starts ({self.eval_starts}), "
                             f"got {self.plot_starts}")
        for name in ("coefficient_spread", "offset_spread", "tie_tolerance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        low, high = self.start_range
        if not low < high:
            raise ValueError(f"start_range must be [low, high] with low < high, got "
                             f"{list(self.start_range)}")
        check_config(self)
