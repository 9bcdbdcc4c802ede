"""`warpgrad reproduce`: the statistics against closed forms, the verdicts on synthetic
numbers with known answers, and every claim end to end at the tiny budget."""

from __future__ import annotations

import json
import math
import random

import pytest
from click.testing import CliRunner

from warpgrad.cli import main
from warpgrad.reproduce import CLAIMS
from warpgrad.reproduce.claims import Results
from warpgrad.reproduce.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    VERDICTS,
    combine,
    compare,
    t_quantile,
    t_two_sided_p,
)


@pytest.mark.parametrize("t", [0.1, 0.7, 1.5, 3.0, 12.0])
def test_t_p_values_match_the_closed_forms_of_one_and_two_degrees_of_freedom(t):
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-10)
    assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-10)


def test_t_quantiles_match_the_tables():
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-5)
    assert t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-5)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959966, abs=1e-5)
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)


def _noisy(mean: float, sd: float, n: int, seed: int) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    baseline = [rng.gauss(50.0, 10.0) for _ in range(n)]
    return [b + rng.gauss(mean, sd) for b in baseline], baseline


@pytest.mark.parametrize("case, mean, sd, n, expected", [
    ("clear win", 5.0, 2.0, 40, HOLDS),
    ("clear loss", -5.0, 2.0, 40, FAILS),
    ("tight tie", 0.0, 0.5, 400, FAILS),  # the CI excludes the claimed gain of 1 point
    ("noisy tie", 0.0, 10.0, 10, INCONCLUSIVE),
])
def test_verdicts_on_synthetic_numbers(case, mean, sd, n, expected):
    better, baseline = _noisy(mean, sd, n, seed=len(case))
    result = compare(better, baseline, higher_is_better=True, margin=1.0)
    assert result.verdict == expected, (case, result)
    low, high = result.ci95
    assert low < result.mean_difference < high
    # a lower-is-better metric with the signs flipped gives the same verdict
    flipped = compare([-v for v in better], [-v for v in baseline], higher_is_better=False,
                      margin=1.0)
    assert flipped.verdict == expected
    assert flipped.mean_difference == pytest.approx(result.mean_difference)


def test_compare_rejects_unpaired_scores_and_one_pair_is_inconclusive():
    with pytest.raises(ValueError, match="one to one"):
        compare([1.0, 2.0], [1.0], higher_is_better=True, margin=1.0)
    single = compare([90.0], [10.0], higher_is_better=True, margin=1.0)
    assert single.verdict == INCONCLUSIVE and single.to_json()["ci95"] is None


def test_a_claim_of_several_comparisons_needs_all_of_them():
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([HOLDS, FAILS, INCONCLUSIVE]) == FAILS
    assert combine([]) == INCONCLUSIVE


def _fake_summary(path, accuracies: dict[str, list[float]]) -> None:
    path.mkdir(parents=True)
    results = {m: {"test_accuracy": {"mean": sum(v) / len(v), "ci95": 0.0, "n": len(v),
                                     "values": v}, "meta_train_seconds": 10.0, "iterations": 5}
               for m, v in accuracies.items()}
    (path / "summary.json").write_text(json.dumps({"metric": "test_accuracy",
                                                   "results": results}))


def test_the_multishot_judgement_on_synthetic_runs(tmp_path):
    rng = random.Random(0)
    results = Results(tmp_path, range(3))
    for seed in range(3):
        base = [rng.uniform(0.2, 0.6) for _ in range(10)]
        _fake_summary(results.run_dir("multishot", seed), {
            "warp-leap": [b + 0.2 + rng.gauss(0, 0.02) for b in base],  # clearly ahead
            "leap": base,
            "reptile": [b + rng.gauss(0, 0.2) for b in base],  # no better nor worse
            "finetune": [b - 0.3 + rng.gauss(0, 0.02) for b in base],  # clearly behind
            "no-meta": [b - 0.1 for b in base]})
    (tmp_path / "figures").mkdir()
    judgement = CLAIMS["multishot"].judge(results, tmp_path / "figures")
    verdicts = {(c.better, c.baseline): c.verdict for c in judgement.comparisons}
    assert verdicts == {("Warp-Leap", "Leap"): HOLDS, ("Leap", "Reptile"): INCONCLUSIVE,
                        ("fine-tuning (multi-headed)", "no meta-learning"): FAILS}
    assert judgement.verdict == FAILS
    assert all(c.n == 30 for c in judgement.comparisons)  # 10 tasks x 3 seeds, paired
    warp = next(r for r in judgement.rows if r[0] == "Warp-Leap")
    assert warp[1] == "83.6 ± 1.9" and warp[4] == 30
    assert (tmp_path / "figures" / "multishot.png").stat().st_size > 1000


def test_list_shows_the_nine_claims_with_estimates():
    result = CliRunner().invoke(main, ["reproduce", "--list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == list(CLAIMS)
    assert len(CLAIMS) == 9 and all("min" in line for line in lines)


def test_an_unknown_claim_is_one_line():
    result = CliRunner().invoke(main, ["reproduce", "multishoot"])
    assert result.exit_code == 2
    assert "unknown claim 'multishoot'" in result.output and "Traceback" not in result.output


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("reproduce")


@pytest.mark.parametrize("claim", list(CLAIMS))
def test_each_claim_end_to_end_at_the_tiny_budget(claim, suite_dir):
    result = CliRunner().invoke(main, ["reproduce", claim, "--scale", "tiny", "--seeds", "1",
                                       "--out", str(suite_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((suite_dir / "results.json").read_text())
    entry = report["claims"][claim]
    assert entry["verdict"] in VERDICTS
    assert entry["rows"], entry
    if claim != "cost":  # the cost claim is a measurement, without a test
        assert entry["comparisons"] and all(c["n"] >= 1 for c in entry["comparisons"])
        assert all(c["verdict"] in VERDICTS for c in entry["comparisons"])
        assert entry["seeds"] == 1
    for figure in entry["figures"]:
        assert (suite_dir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (suite_dir / "report.md").read_text()
    assert f"Paper: {entry['paper']}" in text and f"Verdict: **{entry['verdict']}**" in text


def test_complete_runs_are_skipped_and_partial_ones_resumed(tmp_path):
    args = ["reproduce", "objective", "--scale", "tiny", "--seeds", "1", "--out",
            str(tmp_path), "--no-progress"]
    assert CliRunner().invoke(main, args).exit_code == 0
    runs = tmp_path / "runs"
    kept = runs / "ablation-online" / "seed0" / "summary.json"
    redone = runs / "ablation-first-order" / "seed0" / "summary.json"
    before = kept.stat().st_mtime_ns
    expected = json.loads(redone.read_text())
    redone.unlink()  # as if the suite had been killed before this run's end
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert kept.stat().st_mtime_ns == before
    assert json.loads(redone.read_text())["results"] == expected["results"]


def test_a_run_directory_with_another_config_is_refused(tmp_path):
    args = ["reproduce", "continual", "--scale", "tiny", "--seeds", "1", "--out",
            str(tmp_path), "--no-progress"]
    assert CliRunner().invoke(main, args).exit_code == 0
    config = tmp_path / "runs" / "continual-leap" / "seed0" / "config.json"
    record = json.loads(config.read_text())
    record["config"]["inner_lr"] = 0.5
    config.write_text(json.dumps(record))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "holds a run with another config (differs in inner_lr)" in result.output
