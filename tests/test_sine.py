"""Sine regression end to end: every method must beat no meta-learning."""

from warpgrad.algorithms import METHODS
from warpgrad.experiments import run
from warpgrad.experiments.sine import SineConfig, SineExperiment


def test_every_method_beats_no_meta_learning_on_sine(tmp_path):
    """The main sine protocol and budget, every method, one seed. No meta-learning sits near
    E[A²]/2 ≈ 4; warped methods should be far below it, the rest clearly below."""
    methods = list(METHODS)
    config = SineConfig(methods=methods, eval_tasks=100, seed=0)
    summary = run.run(SineExperiment(config), {}, tmp_path, progress=False)
    mse = {m: r["test_loss"]["mean"] for m, r in summary["results"].items()}
    for method in methods:
        if method == "no-meta":
            continue
        bound = 0.25 if METHODS[method].needs_warps else 0.9
        assert mse[method] < bound * mse["no-meta"], (method, mse[method], mse["no-meta"])
    assert mse["warp-leap"] < 0.5 * mse["leap"]  # warping is what helps here
    assert summary["results"]["no-meta"]["meta_train_seconds"] == 0.0
