"""The geometry toy problem: the peaks family, the identity-initialised warp, its WarpGrad
meta-training and the experiment through the command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from warpgrad.cli import main
from warpgrad.experiments import registry
from warpgrad.experiments.geometry import (
    GeometryConfig,
    build_learner,
    descend,
    held_out_pairs,
    training_tasks,
)
from warpgrad.tasks.peaks import (
    PEAKS_COEFFICIENTS,
    peaks,
    peaks_task,
    peaks_terms,
    sample_coefficients,
)


def matlab_peaks(x: float, y: float) -> float:
    return (3 * (1 - x) ** 2 * math.exp(-x ** 2 - (y + 1) ** 2)
            - 10 * (x / 5 - x ** 3 - y ** 5) * math.exp(-x ** 2 - y ** 2)
            - math.exp(-(x + 1) ** 2 - y ** 2) / 3)


def test_peaks_is_matlabs_surface_at_known_points():
    assert peaks(torch.zeros(2)).item() == pytest.approx((3 - 1 / 3) * math.exp(-1), abs=1e-6)
    assert peaks(torch.zeros(2)).item() == pytest.approx(0.98101, abs=1e-5)
    points = torch.tensor([[0.5, -1.2], [-1.3, 0.2], [0.0, 1.6], [2.5, -2.5]],
                          dtype=torch.float64)
    expected = torch.tensor([matlab_peaks(*p) for p in points.tolist()], dtype=torch.float64)
    torch.testing.assert_close(peaks(points), expected)
    # MATLAB's global maximum and minimum, about 8.106 at (-0.009, 1.581), -6.551 at
    # (0.228, -1.626)
    assert peaks(torch.tensor([-0.0093, 1.5814])).item() == pytest.approx(8.106, abs=1e-3)
    assert peaks(torch.tensor([0.2283, -1.6255])).item() == pytest.approx(-6.551, abs=1e-3)


def test_the_appendix_surface_differs_from_peaks_in_the_third_term_only():
    generator = torch.Generator().manual_seed(3)
    points = 6 * torch.rand(50, 2, generator=generator, dtype=torch.float64) - 3
    coefficients = sample_coefficients(50, generator).double()
    same = peaks_terms(points, coefficients, "peaks")
    printed = peaks_terms(points, coefficients, "appendix")
    torch.testing.assert_close(printed[0], same[0], rtol=0, atol=0)
    torch.testing.assert_close(printed[1], same[1], rtol=0, atol=0)
    x1, b3, a3 = points[:, 0], coefficients[:, 2], coefficients[:, 5]
    torch.testing.assert_close(printed[2], -b3 * torch.exp(-(x1 + a3) ** 2 - x1 ** 2))
    assert (printed[2] - same[2]).abs().max() > 0.01
    torch.testing.assert_close(peaks(points, coefficients, "appendix"), sum(printed))


def test_sampled_surfaces_spread_around_matlabs_within_their_ranges():
    c = sample_coefficients(2000, torch.Generator().manual_seed(0), coefficient_spread=0.5,
                            offset_spread=0.25)
    centre = torch.tensor(PEAKS_COEFFICIENTS)
    ratio = c[:, :3] / centre[:3]
    assert ratio.min() >= 0.5 and ratio.max() <= 1.5 and ratio.max() > 1.45
    shift = c[:, 3:] - centre[3:]
    assert shift.abs().max() <= 0.25 and shift.abs().max() > 0.24


def small(**changes) -> GeometryConfig:
    options = {"steps": 10, "starts_per_step": 3, "iterations": 2, "eval_tasks": 2,
               "eval_starts": 3, "plot_starts": 2, "checkpoint_every": 1}
    return GeometryConfig(**{**options, **changes})


def test_the_identity_warp_descends_exactly_like_plain_gradient_descent():
    config = small(steps=30)
    model = build_learner(config).model.module
    coefficients, starts = held_out_pairs(config)
    options = {"surface": "peaks", "steps": 30, "lr": 0.1}
    plain, _ = descend(coefficients, starts, **options)
    warped, walked = descend(coefficients, starts, model=model, **options)
    torch.testing.assert_close(warped, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(walked, plain, rtol=0, atol=1e-6)
    assert (plain[-1] - plain[0]).abs().max() > 0.1  # descent moved


def test_the_batched_descent_is_the_librarys_adaptation():
    # float64: the two add up u = s + δ in different orders, which float32 rounding
    # amplifies on the steep parts of the surface
    config = small(steps=15, warp_lr=0.05)
    torch.set_default_dtype(torch.float64)
    try:
        learner = build_learner(config)
    finally:
        torch.set_default_dtype(torch.float32)
    tasks = training_tasks(config, torch.Generator().manual_seed(1))
    learner.meta_step([peaks_task(t.x_train[0].double(), t.y_train[0].double()) for t in tasks])
    model = learner.model.module
    assert model.warp.out.weight.abs().max() > 0  # no longer the identity
    coefficients, starts = (t.double() for t in held_out_pairs(config))
    native, walked = descend(coefficients, starts, surface="peaks", steps=15, lr=0.1,
                             model=model)
    for i in range(len(starts)):
        result = learner.adapt(peaks_task(starts[i], coefficients[i]))
        assert result.theta.dtype == torch.float64
        torch.testing.assert_close(starts[i] + result.theta.detach(), walked[-1, i],
                                   rtol=0, atol=1e-9)
    assert (native[-1] - walked[-1]).abs().max() > 1e-4  # the warp changes the read point


@pytest.mark.parametrize("variant", ["exact", "first-order"])
def test_warpgrads_meta_step_moves_the_warp_and_lowers_its_meta_loss(variant):
    config = small(warp_variant=variant, meta_optimizer="sgd", warp_lr=1e-3, steps=10)
    learner = build_learner(config)
    tasks = training_tasks(config, torch.Generator().manual_seed(4))
    before = learner.meta_step(tasks)
    grad = learner.model.module.warp.out.weight.grad
    assert grad is not None and grad.abs().max() > 1e-4
    after = learner.meta_step(tasks)  # the same meta-batch, after one update of φ
    assert after["warp_loss"] < before["warp_loss"] - 1e-6
    assert after["adapt_loss_first"] == pytest.approx(before["adapt_loss_first"])  # same starts


def test_geometry_runs_through_the_command_and_resumes_to_the_same_summary(tmp_path):
    out = tmp_path / "geometry"
    args = ["iterations=2", "steps=5", "starts_per_step=2", "eval_tasks=2", "eval_starts=3",
            "plot_starts=2"]
    result = CliRunner().invoke(main, ["train", "geometry", "--out", str(out),
                                       "--no-progress", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warped" in result.output and "ties" in result.output
    summary = json.loads((out / "summary.json").read_text())
    r = summary["results"]
    assert 0.0 <= r["warped_lower_fraction"]["mean"] <= 1.0
    assert r["warped_lower_fraction"]["n"] == 6
    assert len(r["pairs"]["plain_final_loss"]) == len(r["pairs"]["warped_final_loss"]) == 6
    assert r["plain_final_loss"]["mean"] == pytest.approx(
        sum(r["pairs"]["plain_final_loss"]) / 6)
    assert (r["warped_lower_fraction"]["mean"] + r["warped_higher_fraction"]["mean"]
            + r["tie_fraction"]) == pytest.approx(1.0)
    assert (out / "surfaces.png").stat().st_size > 10_000
    assert len((out / "metrics.csv").read_text().splitlines()) == 3  # header + 2 meta-steps
    again = CliRunner().invoke(main, ["train", "--resume", str(out), "--no-progress"],
                               catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.parametrize(("override", "message"), [
    ("surface=peak", "surface must be one of ['peaks', 'appendix'], got 'peak'"),
    ("warp_variant=no-step", "warp_variant must be 'exact' or 'first-order'"),
    ("plot_starts=20", "plot_starts must be at most eval_starts (10), got 20"),
    ("start_range=[3,-3]", "start_range must be [low, high] with low < high"),
])
def test_bad_geometry_settings_say_what_is_accepted(override, message):
    with pytest.raises(registry.ConfigError, match=message.replace("[", r"\[")
                       .replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        registry.load_experiment("geometry", [override])
