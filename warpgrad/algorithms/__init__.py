"""Meta-objectives and algorithms: WarpGrad for the warp parameters, Leap / Reptile / MAML for
the initialisation, and the :class:`MetaLearner` that combines them."""

from warpgrad.algorithms.base import InitObjective, TaskRun
from warpgrad.algorithms.finetune import FineTune
from warpgrad.algorithms.leap import Leap
from warpgrad.algorithms.learner import MetaLearner
from warpgrad.algorithms.maml import MAML
from warpgrad.algorithms.methods import METHODS, Method, check_methods, make_learner
from warpgrad.algorithms.reptile import Reptile
from warpgrad.algorithms.warpgrad import WarpGrad

__all__ = ["MAML", "METHODS", "FineTune", "InitObjective", "Leap", "MetaLearner", "Method",
           "Reptile", "TaskRun", "WarpGrad", "check_methods", "make_learner"]
